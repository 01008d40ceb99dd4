"""The Pitlink cloud relay: accepts pits connections and serves their data to the public.

Exception tree::

    CloudError            root of the relay's own failures
    └── TokenError        a token refused (bad signature, expired, revoked, wrong role)
"""

__version__ = "0.1.0"


class CloudError(Exception):
    """Root of the cloud relay's own exceptions."""


class TokenError(CloudError):
    """A token was refused; the message says why, never the token itself."""
