"""The box's token: which one to dial with, which renewal may replace it, where to fall back.

The relay signs tokens and only the relay holds the key, so the box cannot verify one. It
judges a renewal by its claims alone: a JWT for the same pits (`sub`), role `pits`, expiring no
earlier than the token it replaces. Anything else is dropped, so a relay (or whoever speaks as
one) cannot make the box overwrite a working token with garbage. The replaced token is kept
beside the file (`token.prev`); when the relay refuses the token in use at the handshake, the
box goes back to the previous one, then to the one in the settings (pitlink.conf's `TOKEN=`),
and only when none is left does it wait long. Tokens are never logged: a short fingerprint
(the first hex digits of their SHA-256) says which one a log line is about.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import jwt

from pits_appliance import ConfigError
from wire.errors import DamagedError
from wire.files import write_private
from wire.messages import MAX_TOKEN  # the protocol's own bound on a `token` frame
from wire.untrusted import MAX_DEPTH, read_bounded, within_depth

log = logging.getLogger("pitlink.pits.tokens")

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_FILE = MAX_TOKEN + 1024  # a token, and room for blank lines around it


def fingerprint(token: str) -> str:
    """Which token a log line is about, without the token: 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def claims_of(token: str) -> dict[str, Any] | None:
    """A compact JWT's claims read without verifying, or None when it is not one."""
    if len(token) > MAX_TOKEN or not _JWT_SHAPE.fullmatch(token):
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, RecursionError):  # pyjwt's own JSON decoding, of a hostile payload
        return None
    if not isinstance(claims, dict) or not within_depth(claims, MAX_DEPTH):
        return None
    return dict(claims)


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a token from the settings; a plain ConfigError when it is not a token."""
    claims = claims_of(token)
    if claims is None:
        raise ConfigError("the token is not a valid token: ask for a new one")
    return claims


def pits_id_from_token(token: str) -> str:
    sub = token_claims(token).get("sub")
    if not isinstance(sub, str) or not sub:
        raise ConfigError("the token names no pits id")
    return sub


def validity(token: str) -> tuple[float | None, float | None]:
    """The token's `iat` and `exp` as numbers (None where missing)."""
    claims = claims_of(token) or {}

    def number(value: Any) -> float | None:
        return float(value) if _is_number(value) else None

    return number(claims.get("iat")), number(claims.get("exp"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def renewal_problem(current: str, offered: str) -> str | None:
    """Why `offered` may not replace `current`, or None when it may.

    It must be a JWT (at most MAX_TOKEN characters), for the same `sub`, role `pits`, with an
    `exp` no earlier than the current one's. An equal `exp` is allowed: the relay issues a
    renewal as long-lived as the token it replaces, counted from now, so one sent within the
    second the first was issued has the same `exp` (the test suite does that).
    """
    new = claims_of(offered)
    if new is None:
        return "not a token"
    old = claims_of(current) or {}
    if not isinstance(new.get("sub"), str) or new.get("sub") != old.get("sub"):
        return "for another pits id"
    if new.get("role") != "pits":
        return "not a pits token"
    if not _is_number(new.get("exp")):
        return "no expiry"
    if _is_number(old.get("exp")) and new["exp"] < old["exp"]:
        return "expires before the current one"
    if offered == current:
        return "the token in use"
    return None


def read_token_file(path: Path) -> str:
    """A token file's text, stripped; DamagedError when it is too big or not ASCII (a token
    is base64url and dots), OSError when it cannot be read."""
    data = read_bounded(path, MAX_TOKEN_FILE)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DamagedError("bytes that are not ASCII text") from None


class TokenStore:
    """The token file, the previous token beside it, and the token from the settings.

    `current()` is what to dial with; `offer()` takes a renewal from the relay; `refused()`
    is told when the relay refused the token at the handshake and says what to try next.
    """

    def __init__(self, path: Path, *, configured: str | None = None):
        self.path = path
        self.prev_path = path.with_name(path.name + ".prev")
        self.marker_path = path.with_name(path.name + ".source")
        self.configured = configured
        # Fingerprints of tokens refused since the relay last let a dial through (see refused).
        self._refused: set[str] = set()
        self._epoch: int | None = None

    # -- reading ------------------------------------------------------------------------------

    def current(self) -> str:
        """The token to dial with; ConfigError with a plain message when there is none."""
        try:
            token = read_token_file(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.path}: {exc.strerror}") from None
        except DamagedError as exc:
            raise ConfigError(f"the token file {self.path} holds no token: {exc}") from None
        if not token:
            raise ConfigError(f"the token file {self.path} is empty")
        return token

    def previous(self) -> str | None:
        try:
            return read_token_file(self.prev_path) or None
        except (OSError, DamagedError):
            return None

    # -- changes ------------------------------------------------------------------------------

    def import_configured(self) -> bool:
        """Take the settings' token into the file, once per distinct token; True when taken.

        Done on first start, and again whenever the settings hold a different token than the
        one last taken (the organiser pasted a new one); renewals land in the file and are kept
        until then. The token it replaces is kept as the previous one.
        """
        token = self.configured
        if not token:
            return False
        token_claims(token)  # refuse garbage before it replaces anything
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            taken = self.marker_path.read_text().strip()
        except OSError:
            taken = ""
        if taken == digest and self.path.exists():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            before = self.current()
        except ConfigError:
            before = None
        if before is not None and before != token:
            write_private(self.prev_path, before + "\n")
        write_private(self.path, token + "\n")
        write_private(self.marker_path, digest + "\n")
        log.info(
            "token taken from the settings",
            extra={"token_file": str(self.path), "token_fp": fingerprint(token)},
        )
        return True

    def offer(self, token: str) -> bool:
        """A renewal from the relay: stored (the current one kept as previous) if it may be."""
        try:
            current = self.current()
        except ConfigError:
            current = ""
        problem = renewal_problem(current, token) if current else "no current token to compare"
        if problem is not None:
            log.warning(
                "renewed token dropped",
                extra={
                    "reason": problem,
                    "token_fp": fingerprint(token),
                    "current_fp": fingerprint(current),
                },
            )
            return False
        try:
            write_private(self.prev_path, current + "\n")
            write_private(self.path, token + "\n")
        except OSError as exc:
            log.error("could not store the renewed token", extra={"error": exc.strerror})
            return False
        log.info(
            "token renewed",
            extra={
                "token_fp": fingerprint(token),
                "previous_fp": fingerprint(current),
                "exp": validity(token)[1],
            },
        )
        return True

    def refused(self, token: str, *, epoch: int) -> str | None:
        """The relay refused `token` at the handshake: install the next one to try, if any.

        Tries the previous token, then the settings' one: those not refused since the relay
        last let a dial through (`epoch` is a count that grows whenever one gets through) and
        for the same pits id. The refused token is kept as the previous one, so that a refusal
        by a relay that is only briefly wrong loses nothing. Returns the token now in the file,
        or None when nothing is left: then the run starts again at the next (slow) attempt.
        """
        if epoch != self._epoch:
            self._refused.clear()
            self._epoch = epoch
        self._refused.add(fingerprint(token))
        sub = (claims_of(token) or {}).get("sub")
        for source, candidate in (("previous", self.previous()), ("settings", self.configured)):
            if (
                not candidate
                or candidate == token
                or fingerprint(candidate) in self._refused
                or (claims_of(candidate) or {}).get("sub") != sub
            ):
                continue
            try:
                write_private(self.prev_path, token + "\n")
                write_private(self.path, candidate + "\n")
            except OSError as exc:
                log.error("could not go back to another token", extra={"error": exc.strerror})
                return None
            log.warning(
                "token refused by the relay; trying another",
                extra={
                    "refused_fp": fingerprint(token),
                    "next_from": source,
                    "next_fp": fingerprint(candidate),
                },
            )
            return candidate
        log.warning(
            "token refused by the relay; no other token to try",
            extra={"refused_fp": fingerprint(token), "tried": len(self._refused)},
        )
        self._refused.clear()
        return None
