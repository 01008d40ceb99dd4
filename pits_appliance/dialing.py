"""Why a dial to the relay failed, in plain words, and when to say it in the log.

Network-free: an exception (and the body of a refusal) in, a `DialFailure` out. The link shows
its `text` on the status page and logs it, with the URL it tried, whenever the reason changes
and at least every five minutes while it persists, never once per attempt.

A captive portal is the connectivity probe's to find (`connectivity.py`): a dial that meets an
ordinary web page instead of a relay says that the address does not look like a Pitlink relay,
and the status page puts the two together when the probe has found a portal.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pits_appliance import ConfigError
from pits_appliance.connectivity import REDIRECTS, same_host_https
from wire.errors import CloseCode, DamagedError, TokenRefusal
from wire.session import Closing, Policy, close_policy
from wire.untrusted import load_json

Kind = Literal[
    "token",
    "not_a_relay",
    "wants_https",
    "relay_error",
    "tls",
    "certificate",
    "dns",
    "refused",
    "timeout",
    "network",
]

LOG_EVERY_S = 300.0
MAX_REFUSAL_BYTES = 64 * 1024  # the relay's 401 body is under 200 bytes

# What the box says when the relay refuses its token, by the reason in the relay's 401 body.
TOKEN_WORDS: dict[str, str] = {
    TokenRefusal.EXPIRED: "the relay says this box's token has expired: ask the relay's "
    "operator for a new one and put it in pitlink.conf (TOKEN=)",
    TokenRefusal.REVOKED: "the relay says this box's token was revoked: ask the relay's "
    "operator for a new one",
    TokenRefusal.WRONG_ROLE: "this is an admin token, not a box token: put the box's own token "
    "in pitlink.conf (TOKEN=)",
    TokenRefusal.UNKNOWN_KEY: "this token was made by another relay (or this relay's keys were "
    "replaced): ask this relay's operator for a token and put it in pitlink.conf (TOKEN=)",
    TokenRefusal.NOT_YET_VALID: "the relay says this box's token is not valid yet: is the box's "
    "clock right?",
    TokenRefusal.MALFORMED: "the relay could not read this box's token: copy it again, whole, "
    "into pitlink.conf (TOKEN=)",
}
TOKEN_REFUSED = "the relay refused this box's token: ask for a new one"

# The dial failures that may be the relay down or a wrong name in CLOUD_URL (or no Internet:
# the connectivity check tells which, see connectivity.judge).
UNREACHABLE = (None, "dns", "refused", "timeout", "network")


def wants_https(url: str, location: str | None = None) -> str:
    """What to say when the relay's plain `url` redirects to https on the same host (to
    `location`, whose port, a number, is kept; nothing else of it is repeated)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = urlsplit(location).port if location else None
    except ValueError:
        port = None
    if port is not None and port != 443:
        host += f":{port}"
    return (
        f"the relay wants https: write https://{host} (not {parts.scheme}://) in CLOUD_URL in "
        "pitlink.conf"
    )


@dataclass(frozen=True)
class DialFailure:
    """One failed dial: what kind, the sentence for people, and the HTTP status if there was one."""

    kind: Kind
    text: str
    status: int | None = None
    reason: str | None = None  # the relay's TokenRefusal, for a refused token


def token_reason(body: bytes | None) -> str | None:
    """The `reason` of a relay's 401 body, if it names one this box knows."""
    try:
        reason = load_json(body or b"", limit=MAX_REFUSAL_BYTES)["error"]["reason"]
    except (DamagedError, KeyError, TypeError, IndexError):
        return None
    return reason if isinstance(reason, str) and reason in TOKEN_WORDS else None


def classify(
    exc: BaseException,
    url: str,
    *,
    status: int | None = None,
    body: bytes | None = None,
    location: str | None = None,
    cloud_ca: Path | None = None,
) -> DialFailure:
    """The failure behind one dial's exception; `status`, `body` and `location` of an HTTP
    answer, if any; `cloud_ca`, the CA the box was told to trust besides the public ones."""
    if status is not None and status != 599:
        if status in REDIRECTS and same_host_https(location, url):
            return DialFailure("wants_https", wants_https(url, location), status)
        if status in (401, 403):
            reason = token_reason(body)
            return DialFailure(
                "token", TOKEN_WORDS.get(reason or "", TOKEN_REFUSED), status, reason
            )
        if status >= 500:
            return DialFailure(
                "relay_error",
                f"the relay at {url} answered HTTP {status}: it, or the proxy in front of it, "
                "has a problem",
                status,
            )
        return DialFailure(
            "not_a_relay",
            f"the address {url} does not look like a Pitlink relay (it answered HTTP {status}): "
            "check CLOUD_URL in pitlink.conf",
            status,
        )
    message = str(exc)
    if "Non-websocket response" in message:
        return DialFailure(
            "not_a_relay",
            f"the address {url} does not look like a Pitlink relay (it answered with a web "
            "page): check CLOUD_URL in pitlink.conf",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        if cloud_ca is None:
            fix = (
                "if the relay's operator gave you a CA file, copy it beside pitlink.conf on the "
                "card's boot partition and name it there: CLOUD_CA=relay-ca.pem"
            )
        else:
            fix = f"it does not chain to CLOUD_CA ({cloud_ca.name}) nor to a public CA"
        return DialFailure(
            "certificate",
            f"the relay's certificate at {url} does not verify ({exc.verify_message}): {fix}",
        )
    if isinstance(exc, ssl.SSLError) or "TLS handshake" in message or "SSL" in message:
        return DialFailure("tls", f"TLS failed with {url}: is the relay https?")
    if isinstance(exc, socket.gaierror):
        return DialFailure("dns", f"cannot reach the relay at {url}: its name does not resolve")
    if isinstance(exc, ConnectionRefusedError):
        return DialFailure(
            "refused", f"cannot reach the relay at {url}: nothing answers there (refused)"
        )
    if isinstance(exc, TimeoutError) or "Timeout" in message or "timed out" in message:
        return DialFailure("timeout", f"cannot reach the relay at {url}: no answer in time")
    detail = message or type(exc).__name__
    return DialFailure("network", f"cannot reach the relay at {url}: {detail[:200]}")


@dataclass(frozen=True)
class Closed:
    """Why a link that was up ended, in plain words (None: nothing worth saying), and what next."""

    text: str | None
    policy: Policy
    log: str | None = None  # a WARNING to log, when the box itself ended the link


def closed_by_relay(code: int | None, reason: str | None) -> Closed:
    """The relay closed the link with `code`."""
    policy = close_policy(code)
    if code == CloseCode.TOKEN_EXPIRED:
        text = "the relay says this box's token expired or was revoked: ask for a new one"
    elif code == CloseCode.VERSION_REFUSED:
        text = f"the relay does not speak this box's protocol version ({reason}): update the box"
    elif code == CloseCode.POLICY:
        text = f"the relay refused this box ({reason})"
    elif code == CloseCode.REPLACED:
        text = "another connection with this pits id replaced this one"
    else:
        text = None
    return Closed(text, policy)


def closed_by_box(closing: Closing) -> Closed:
    """The box's own session ended the link (the relay fell silent, spoke another version...)."""
    if closing.code == CloseCode.VERSION_REFUSED:
        return Closed(
            f"the relay speaks another protocol ({closing.reason}): update the box",
            "slow",
            "relay refused: another protocol version",
        )
    if closing.reason.startswith("silent"):
        return Closed(
            "the link to the relay went silent", "backoff", "relay silent, dropping the link"
        )
    if closing.reason == "no hello received":
        return Closed("the relay sent no hello", "backoff", "the relay sent no hello")
    return Closed(f"the relay sent {closing.reason}", "backoff", "dropping the link")


# Debian's bundle of the public CAs (package ca-certificates). Named here because a frozen
# Python does not always look where Debian keeps it.
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


def relay_tls(extra_ca: Path | None = None, *, system: Path = SYSTEM_CAS) -> ssl.SSLContext:
    """What the box trusts in the relay's certificate: the public CAs the system ships, and
    the CA a self-hosted relay's operator gave (CLOUD_CA). ConfigError when that file is
    missing or not a certificate."""
    context = ssl.create_default_context(cafile=str(system) if system.exists() else None)
    if extra_ca is not None:
        try:
            context.load_verify_locations(cafile=str(extra_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"CLOUD_CA {extra_ca} is not a CA certificate the box can read: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
    return context


class FailureLog:
    """Says when a failure goes in the log: when it changes, and every `every` s while it lasts.

    `should_log` is None when the line is held back (it is counted), else the number of
    attempts that failed the same way since the last line, to log with it.
    """

    def __init__(self, every: float = LOG_EVERY_S):
        self.every = every
        self._last: tuple[str, str] | None = None
        self._at = 0.0
        self._held = 0

    def should_log(self, failure: DialFailure, now: float) -> int | None:
        key = (failure.kind, failure.text)
        if key != self._last or now - self._at >= self.every:
            held = self._held if key == self._last else 0
            self._last, self._at, self._held = key, now, 0
            return held
        self._held += 1
        return None

    def reset(self) -> None:
        """The link is up: the next failure, whatever it is, is news."""
        self._last = None
        self._held = 0
