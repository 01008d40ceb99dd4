"""The Pitlink pits agent: dials out to the cloud relay and answers its fetches from FPVTrackside.

Exception tree::

    AgentError            root of the agent's own failures
    └── ConfigError       a setting that cannot be used; its message is one plain line
"""

__version__ = "0.1.0"


class AgentError(Exception):
    """Root of the pits agent's own exceptions."""


class ConfigError(AgentError):
    """A missing or invalid setting; the message is shown as is to the person at the pits."""
