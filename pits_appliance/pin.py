"""The status page's PIN: who may press its buttons. Pure: the time is passed in.

Anyone on the pits network can reach the status page, so its buttons (Pause, Reconnect,
Install now) need the box's PIN. A browser gives it once (`PinGate.check`) and gets a session,
a random id kept in a cookie, that its presses then carry (`PinGate.valid`). The gate keeps
at most `max_sessions` of them, dropping the least recently used, and forgets one unused for
`session_idle` seconds.

Guessing is slow: each wrong PIN takes a token from its client's bucket (an IPv4 address, an
IPv6 /64: `server.peer_of`) and from one bucket for everybody, and while either is empty no
PIN is even looked at, right or wrong. With the defaults one client tries 5 PINs, then one a
minute; everybody together 20, then one every 30 s: 5,760 guesses in 48 hours, under 0.6%
of the million 6-digit PINs. A browser that already has its session keeps it meanwhile.
A wrong PIN is logged at most once a second (the box's journal is in RAM).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from wire.budget import Throttle, TokenBucket

log = logging.getLogger("pitlink.pits.status")

SESSION_BYTES = 32


def make_pin() -> str:
    """A PIN from the system's cryptographic random source: 6 digits, leading zeros kept."""
    return f"{secrets.randbelow(10**6):06d}"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Verdict:
    """What a PIN got: a session (`session`), or no (`wait` set when it was not even looked
    at because of too many wrong ones before it)."""

    session: str | None = None
    wait: float | None = None

    @property
    def message(self) -> str:
        if self.session is not None:
            return "PIN accepted."
        if self.wait is not None:
            return f"too many wrong PINs: try again in {self.seconds} s"
        return "wrong PIN"

    @property
    def seconds(self) -> int:
        """The wait in whole seconds, rounded up (to the millisecond first: 55.0000001 is 55)."""
        return max(1, math.ceil(round(self.wait or 0.0, 3)))


class PinGate:
    """Checks PINs, slowly when they are wrong, and keeps the sessions they open."""

    def __init__(
        self,
        pin: str,
        *,
        max_sessions: int = 32,
        session_idle: float = 24 * 3600.0,
        client_burst: float = 5.0,
        client_rate: float = 1 / 60,
        total_burst: float = 20.0,
        total_rate: float = 1 / 30,
        max_clients: int = 256,
    ):
        self._pin = _digest(pin)
        self.max_sessions = max_sessions
        self.session_idle = session_idle
        self.client_burst = client_burst
        self.client_rate = client_rate
        self.max_clients = max_clients
        self._total_burst, self._total_rate = total_burst, total_rate
        self._total: TokenBucket | None = None
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()
        self._sessions: OrderedDict[bytes, float] = OrderedDict()  # digest -> last used
        self._throttle = Throttle(1.0)

    def check(self, peer: str, attempt: str, now: float) -> Verdict:
        """A PIN from `peer`: a new session when it is the box's."""
        client = self._client(peer, now)
        if self._total is None:
            self._total = TokenBucket(self._total_rate, self._total_burst, now)
        wait = max(_wait(client, now), _wait(self._total, now))
        if wait > 0:
            return Verdict(wait=wait)
        # Compared as digests: the time taken says nothing of how much of the PIN was right,
        # nor of its length.
        if hmac.compare_digest(_digest(attempt), self._pin):
            session = secrets.token_urlsafe(SESSION_BYTES)
            self._sessions[_digest(session)] = now
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return Verdict(session=session)
        client.take(now)
        self._total.take(now)
        held = self._throttle.allow("wrong PIN", now)
        if held is not None:
            log.warning("wrong status page PIN", extra={"peer": peer, "held_back": held})
        return Verdict()

    def valid(self, session: str | None, now: float) -> bool:
        """Whether a cookie's session is one this gate opened, and is still in use."""
        if not session or len(session) > 4 * SESSION_BYTES:
            return False
        key = _digest(session)
        used = self._sessions.get(key)
        if used is None:
            return False
        if now - used > self.session_idle:
            del self._sessions[key]
            return False
        self._sessions[key] = now
        self._sessions.move_to_end(key)
        return True

    def __len__(self) -> int:
        return len(self._sessions)

    def _client(self, peer: str, now: float) -> TokenBucket:
        bucket = self._clients.get(peer)
        if bucket is None:
            bucket = self._clients[peer] = TokenBucket(self.client_rate, self.client_burst, now)
            while len(self._clients) > self.max_clients:
                # The least recently seen; whoever makes many addresses to get fresh buckets
                # still draws on the one for everybody.
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(peer)
        return bucket


def _wait(bucket: TokenBucket, now: float) -> float:
    """Seconds until the bucket has a token, without taking it."""
    wait = bucket.take(now)
    if wait == 0.0:
        bucket.tokens += 1.0
    return wait
