"""The Pitlink wire protocol as pure code: no sockets, no tornado, no asyncio.

Both the cloud relay and the pits agent import this package. Everything here takes bytes or
dicts in and gives bytes or dicts out, so it is tested without a network.
"""

from wire.errors import CloseCode, ErrorCode, ProtocolError, WireError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "CloseCode",
    "ErrorCode",
    "ProtocolError",
    "WireError",
]
