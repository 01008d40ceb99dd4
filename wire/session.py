"""One end of one protocol connection, without the connection: frames in, frames and events out.

In the style of the `websockets` library's sans-I/O `Protocol`: the relay's control handler and
the agent's link each read their WebSocket, hand every text frame to `receive()`, call `tick()`
when `next_deadline()` says, write what `data_to_send()` returns and act on the events. What
both ends must decide alike lives here, once:

- the handshake: the relay sends its hello first, the box answers with its own; versions are
  checked on both sides (4002), the box's pits id against the token's (1008), and a peer that
  sends no hello in time, or a broken one, is closed (1008);
- liveness: a ping every `ping_interval`, the round trip from its pong, and a connection silent
  for `ping_timeout` closed (1001), so a black-holed link is found by the pings, not by TCP;
- frames: strict decoding and bounds (`wire.messages`), malformed frames answered with a
  `BAD_REQUEST` error and dropped, frames out of turn dropped, and a budget of dropped frames
  past which the peer is closed (1008), with a throttle on how often a drop is worth a log line.

What only one end knows (pending fetches, tokens, the origin) stays in its shell. Time is passed
in (`now`, monotonic seconds); the wall clock only stamps frames.

Close codes, and what the box does after each, are `close_policy()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from wire import SUPPORTED_VERSIONS
from wire import messages as m
from wire.budget import Throttle, TokenBucket
from wire.errors import CloseCode, ErrorCode, ProtocolError

GOING_AWAY = CloseCode.GOING_AWAY  # the peer fell silent, or the relay is shutting down
State = Literal["handshake", "open", "closed"]


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """Timings and budgets of one connection (the same defaults on both ends)."""

    ping_interval: float = 5.0
    ping_timeout: float = 15.0
    handshake_timeout: float = 15.0
    # Dropped frames a peer may send: `drop_burst` at once, then `drop_rate` a second.
    drop_burst: float = 100.0
    drop_rate: float = 1.0


# -- what a session tells its shell ---------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The handshake is done: the peer's hello, accepted."""

    hello: m.CloudHello | m.PitsHello


@dataclass(frozen=True)
class Received:
    """A message for the shell: a fetch, a token or an error for the box; a reply for the relay."""

    frame_id: str
    message: m.Message


@dataclass(frozen=True)
class Dropped:
    """A frame was dropped. `held` is None when the line should not be logged (throttled), else
    how many drops of this reason were held back since the last line. `frame_id` is the id the
    frame claimed, if one could be read (a malformed reply still names its fetch)."""

    reason: str
    detail: str
    held: int | None
    frame_id: str | None = None


@dataclass(frozen=True)
class Closing:
    """Close the WebSocket with this code and reason; the session is over."""

    code: int
    reason: str


@dataclass(frozen=True)
class RoundTrip:
    """A pong came back for our ping, after this long."""

    seconds: float


Event = Opened | Received | Dropped | Closing | RoundTrip


# -- close codes ------------------------------------------------------------------------------------

Policy = Literal["now", "slow", "backoff"]


def close_policy(code: int | None) -> Policy:
    """What the box does after the relay closed with `code`.

    `now`: dial again at once (4000: an admin asked, or a replica is leaving gracefully);
    `slow`: retrying soon cannot fix it (a refused token, version or pits id): wait long;
    `backoff`: anything else, the usual exponential backoff with jitter.
    """
    if code == CloseCode.RECONNECT:
        return "now"
    if code in (CloseCode.TOKEN_EXPIRED, CloseCode.VERSION_REFUSED, CloseCode.POLICY):
        return "slow"
    return "backoff"


# -- the session ------------------------------------------------------------------------------------


class Session:
    """One end of one connection. `side` is who we are: "cloud" (the relay) or "pits" (a box).

    The relay knows from the token which pits must say hello (`expect_pits_id`); the box knows
    the hello it will answer with (`hello`). The relay sends its hello at `start()`; the box
    sends its hello when the relay's arrives.
    """

    def __init__(
        self,
        side: m.Sender,
        *,
        settings: SessionSettings,
        now: float,
        hello: m.CloudHello | m.PitsHello,
        expect_pits_id: str | None = None,
        wall: Callable[[], float] = time.time,
        log_throttle: Throttle | None = None,
        log_key: str = "",
    ):
        self.side = side
        self.peer: m.Sender = "pits" if side == "cloud" else "cloud"
        self.settings = settings
        self.hello = hello
        self.expect_pits_id = expect_pits_id
        self.wall = wall
        self.state: State = "handshake"
        self.peer_hello: m.CloudHello | m.PitsHello | None = None
        self.opened_at = now
        self.last_rx = now
        self.last_ping = now
        self.round_trip: float | None = None
        self.errors = 0
        self.rx_bytes = 0  # what the peer sent, frames as they came
        self._pings: dict[str, float] = {}
        self._out: list[str] = []
        self._drops = TokenBucket(settings.drop_rate, settings.drop_burst, now)
        # A throttle shared across connections (a relay keeps one for every pits, so that a
        # pits dialing again and again does not reset it); `log_key` says whose drops these are.
        self._log = log_throttle if log_throttle is not None else Throttle(1.0)
        self._log_key = log_key

    # -- out ------------------------------------------------------------------------------------

    def send(self, message: m.Message, frame_id: str | None = None) -> str:
        """Queue a frame; returns its id (a fresh one unless given)."""
        frame_id = frame_id or m.new_id()
        self._out.append(m.encode(message, frame_id=frame_id, now_ms=int(self.wall() * 1000)))
        return frame_id

    def data_to_send(self) -> list[str]:
        """The frames queued since the last call, in order."""
        out, self._out = self._out, []
        return out

    def start(self) -> None:
        """The relay opens the handshake with its hello."""
        if self.side == "cloud":
            self.send(self.hello)

    def close(self, code: int, reason: str) -> list[Event]:
        """Close from our side (once); the shell closes the socket."""
        if self.state == "closed":
            return []
        self.state = "closed"
        return [Closing(code, reason)]

    def closed(self) -> None:
        """The socket is gone, whoever closed it."""
        self.state = "closed"

    # -- in -------------------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> list[Event]:
        """Handle one frame from the peer. Nothing the peer sends can raise out of here."""
        if self.state == "closed":
            return []  # what is still in flight after we closed is not read
        self.last_rx = now
        self.rx_bytes += len(data)
        try:
            frame = m.decode(data, sender=self.peer)
        except ProtocolError as exc:
            if self.state == "handshake":
                # A peer that cannot say hello properly (a field past its bound, say) is done.
                return self.close(CloseCode.POLICY, f"bad hello: {exc.message}")
            frame_id = m.peek_id(data)
            events = self.drop("malformed", exc.message, now, frame_id=frame_id)
            if not any(isinstance(event, Closing) for event in events):
                self.send(m.Error(code=ErrorCode.BAD_REQUEST, message=exc.message), frame_id)
            return events
        message = frame.message
        if isinstance(message, m.CloudHello | m.PitsHello):
            return self._on_hello(message, now)
        if self.state != "open":
            return self.drop("before_hello", f"{frame.type} before hello", now)
        if isinstance(message, m.Ping):
            self.send(m.Pong(), frame.id)
            return []
        if isinstance(message, m.Pong):
            sent = self._pings.pop(frame.id, None)
            if sent is None:
                return self.drop("unknown_id", "pong for an unknown ping", now)
            self.round_trip = now - sent
            return [RoundTrip(self.round_trip)]
        return [Received(frame.id, message)]

    def drop(
        self,
        reason: str,
        detail: str,
        now: float,
        *,
        charge: bool = True,
        frame_id: str | None = None,
    ) -> list[Event]:
        """Count a dropped frame; past the budget the peer is closed (1008).

        The shell calls this too, for what only it can judge: a reply to an id it never sent.
        `charge=False` for drops that are no fault of the peer (a late reply to a fetch that
        timed out here).
        """
        self.errors += 1
        held = self._log.allow(f"{self._log_key}:{reason}", now)
        events: list[Event] = [Dropped(reason, detail[:200], held, frame_id)]
        if charge and self._drops.take(now):
            events += self.close(CloseCode.POLICY, "too many bad frames")
        return events

    def _on_hello(self, hello: m.CloudHello | m.PitsHello, now: float) -> list[Event]:
        if self.state != "handshake":
            return self.drop("unexpected", "second hello", now)
        if hello.protocol_version not in SUPPORTED_VERSIONS:
            speaks = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
            return self.close(
                CloseCode.VERSION_REFUSED,
                f"protocol version {hello.protocol_version} not supported; this end speaks {speaks}",
            )
        if isinstance(hello, m.PitsHello) and hello.pits_id != self.expect_pits_id:
            return self.close(CloseCode.POLICY, "pitsId does not match the token")
        if self.side == "pits":
            self.send(self.hello)  # the box answers the relay's hello with its own
        self.peer_hello = hello
        self.state = "open"
        self.last_ping = now
        return [Opened(hello)]

    # -- time -----------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """Ping when due; close a peer that sent no hello in time, or fell silent."""
        if self.state == "closed":
            return []
        if self.state == "handshake" and now - self.opened_at > self.settings.handshake_timeout:
            return self.close(CloseCode.POLICY, "no hello received")
        if now - self.last_rx > self.settings.ping_timeout:
            return self.close(GOING_AWAY, f"silent for {self.settings.ping_timeout:g} s")
        if self.state == "open" and now - self.last_ping >= self.settings.ping_interval:
            self.last_ping = now
            timeout = self.settings.ping_timeout
            self._pings = {k: t for k, t in self._pings.items() if now - t < timeout}
            self._pings[self.send(m.Ping())] = now
        return []

    def next_deadline(self, now: float) -> float:
        """Seconds until `tick()` has something to do (at least a hundredth of one)."""
        s = self.settings
        due = [s.ping_timeout - (now - self.last_rx)]
        if self.state == "handshake":
            due.append(s.handshake_timeout - (now - self.opened_at))
        else:
            due.append(s.ping_interval - (now - self.last_ping))
        return max(0.01, min(due))
