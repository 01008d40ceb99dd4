"""The Pitlink cloud relay: accepts pits connections and serves their data to the public.

Exception tree::

    CloudError            root of the relay's own failures
    └── TokenError        a token refused (bad signature, expired, revoked, wrong role)
"""

from wire.errors import TokenRefusal

__version__ = "0.1.0"


class CloudError(Exception):
    """Root of the cloud relay's own exceptions."""


class TokenError(CloudError):
    """A token was refused; the message says why, never the token itself.

    `reason` is the word for it in the wire protocol (wire.errors.TokenRefusal), which the
    relay puts in its 401 body so that the box can say it in plain words.
    """

    def __init__(self, message: str, reason: TokenRefusal = TokenRefusal.INVALID):
        super().__init__(message)
        self.reason = reason
