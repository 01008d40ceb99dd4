"""Error codes, close codes and the exception tree of the wire protocol.

Exception tree::

    WireError                 root of everything this package raises
    ├── ProtocolError         carries an ErrorCode; what goes back to the peer as an `error`
    │   ├── PathError         a path refused by normalization or the allowlist
    │   └── ContentError      a `.json` body that does not decode (BAD_CONTENT)
    └── DamagedError          JSON from a file or a local peer that cannot be used
                              (wire.untrusted.load_json says why)
"""

from __future__ import annotations

import enum
import math
from typing import Any


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` payload; also the `code` of the public JSON error body."""

    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    BAD_REQUEST = "BAD_REQUEST"
    BUSY = "BUSY"
    TOO_LARGE = "TOO_LARGE"
    TIMEOUT = "TIMEOUT"
    ORIGIN_UNREACHABLE = "ORIGIN_UNREACHABLE"
    BAD_CONTENT = "BAD_CONTENT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class CloseCode(enum.IntEnum):
    """WebSocket close codes with a meaning in this protocol."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    RECONNECT = 4000
    TOKEN_EXPIRED = 4001
    VERSION_REFUSED = 4002
    REPLACED = 4003


class TokenRefusal(enum.StrEnum):
    """Why the relay refused a token: the `reason` of its 401 body, so the box can say it."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    WRONG_ROLE = "wrong_role"
    INVALID = "invalid"


# The HTTP status the public API answers with when an error leaves nothing to serve.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.DENIED: 403,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.BUSY: 503,
    ErrorCode.TOO_LARGE: 502,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.ORIGIN_UNREACHABLE: 502,
    ErrorCode.BAD_CONTENT: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

# Errors after which a cached copy may stand in: the pits could not give a good answer now,
# but the data we hold was good when we got it.
STALE_OK = frozenset(
    {
        ErrorCode.BUSY,
        ErrorCode.TIMEOUT,
        ErrorCode.ORIGIN_UNREACHABLE,
        ErrorCode.BAD_CONTENT,
        ErrorCode.UNAVAILABLE,
        ErrorCode.TOO_LARGE,
        ErrorCode.INTERNAL,
    }
)


RETRY_AFTER_MIN = 1
RETRY_AFTER_MAX = 3600


def retry_after(seconds: object, default: int | None = None) -> int | None:
    """A `Retry-After` value in whole seconds, clamped to 1..3600; `default` for non-numbers.

    Whatever asks for it (a rate limit, a queue, a peer's hint), the header never says 0,
    never a negative, never days, and a NaN or an infinity never reaches the status line.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
        return default
    if seconds >= RETRY_AFTER_MAX:
        return RETRY_AFTER_MAX
    if seconds <= RETRY_AFTER_MIN:
        return RETRY_AFTER_MIN
    return math.ceil(seconds)


def is_retryable(code: ErrorCode) -> bool:
    """Whether a later attempt at the same request may succeed (the one place that decides)."""
    return code in {
        ErrorCode.BUSY,
        ErrorCode.TIMEOUT,
        ErrorCode.ORIGIN_UNREACHABLE,
        ErrorCode.UNAVAILABLE,
        ErrorCode.BAD_CONTENT,
    }


class WireError(Exception):
    """Root of every exception raised by the wire package."""


class ProtocolError(WireError):
    """A failure with a protocol error code, sent to the peer as an `error` payload."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def payload(self) -> dict[str, Any]:
        """The `error` payload for this failure."""
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class PathError(ProtocolError):
    """A request path refused before it could reach the origin."""


class ContentError(ProtocolError):
    """A body that is not what its path promises (a `.json` path that is not JSON)."""

    def __init__(self, message: str):
        super().__init__(ErrorCode.BAD_CONTENT, message)


class DamagedError(WireError):
    """Bytes from outside (a file, a portal, Redis) that are not usable JSON: the message says
    why in plain words, without quoting them."""
