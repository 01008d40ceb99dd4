"""One pits connection: the shell around its protocol session, and the fetches in flight.

`PitsConnection` holds the logic of one pits WebSocket and talks to it through a two-method
transport, so it is tested without a server; who is connected is `cloud.registry`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.bundles import arch_of
from cloud.keys import LEEWAY_S, Revocations
from cloud.metrics import Metrics
from cloud.offline import Departure, clip
from cloud.registry import Registry
from wire import PROTOCOL_VERSION, CloseCode, ErrorCode, ProtocolError
from wire import messages as m
from wire.budget import Throttle
from wire.push import FEATURE_PUSH, FROM_PITS
from wire.session import (
    Closing,
    Dropped,
    Event,
    Opened,
    Received,
    RoundTrip,
    Session,
    SessionSettings,
)

log = logging.getLogger("pitlink.cloud.control")

EXPIRED_IDS = 256  # timed-out fetch ids remembered per connection


class Transport(Protocol):
    """What a connection needs from its WebSocket."""

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


# What this relay takes beyond protocol version 1 as first published (wire.messages).
FEATURES = (m.FEATURE_FPVTRACKSIDE, FEATURE_PUSH)


@dataclass(frozen=True, kw_only=True)
class ControlSettings:
    """Liveness and handshake timings of pits connections."""

    ping_interval: float = 5.0
    ping_timeout: float = 15.0
    handshake_timeout: float = 15.0
    max_in_flight: int = 8
    queue_size: int = 64
    max_body_bytes: int = 8 * 1024 * 1024
    renew_before: float | None = 7 * 86400.0
    # Dropped frames a connection may send: `drop_burst` at once, then `drop_rate` a second.
    # Past it the pits is closed with 1008: a flood of bad frames costs a bounded amount.
    drop_burst: float = 100.0
    drop_rate: float = 1.0
    limits: dict[str, Any] = field(default_factory=dict)
    # What the relay's hello offers (`--no-push` leaves out push: every box is pulled from).
    features: tuple[str, ...] = FEATURES
    # `--pits-domain`: each pits is served at a host name of its own, so its id must be one;
    # this says why an id cannot be (HostRouting.refusal), None when any id will do.
    refuse_id: Callable[[str], str | None] | None = None

    def session(self) -> SessionSettings:
        return SessionSettings(
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            handshake_timeout=self.handshake_timeout,
            drop_burst=self.drop_burst,
            drop_rate=self.drop_rate,
        )


# Issues a fresh token for the claims of a connection whose token is close to expiry, or None
# when that token was renewed before (a token is renewed at most once).
Renewer = Callable[[dict[str, Any]], Awaitable[str | None]]
# Told of each `update` frame a pits sends (cloud.updates counts and logs them).
UpdateListener = Callable[["PitsConnection", m.UpdateReport], None]
# Takes each push frame a pits sends (cloud.push); why it is refused, or None.
PushListener = Callable[["PitsConnection", Any], str | None]
PUSH_TYPES = tuple(FROM_PITS.values())  # wire.push

FPVTRACKSIDE_LOG_S = 60.0  # one "pits FPVTrackside changed" line a minute per connection


def _why_we_closed(event: Closing) -> str:
    """How a link the relay closed ended, in the words the admin page shows."""
    if event.code == CloseCode.GOING_AWAY and event.reason.startswith("silent"):
        return f"ping timeout: {event.reason}, closed by the relay ({event.code})"
    return f"closed by the relay ({event.code}): {event.reason}"


def why_peer_closed(code: int | None, reason: str | None) -> str:
    """How a link the box (or the network) ended: its close code and reason, or none."""
    if code is None:
        return "connection lost without a close frame (network, or the box stopped)"
    return f"closed by the box ({code})" + (f": {clip(reason, 120)}" if reason else "")


def _version_of(seen: m.FpvTrackside | None) -> str | None:
    return None if seen is None else seen.version


class PitsConnection:
    """One pits WebSocket: the shell around its protocol session, and the fetches awaiting replies.

    The handshake, pings, liveness and frame checks are the session's (`wire.session`); what
    only the relay knows is here: the fetches in flight and their slots, the token's expiry,
    renewal and revocation, and the registry.
    """

    def __init__(
        self,
        *,
        pits_id: str,
        claims: dict[str, Any],
        kid: str | None = None,
        transport: Transport,
        registry: Registry[PitsConnection],
        settings: ControlSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        renew: Renewer | None = None,
        on_update: UpdateListener | None = None,
        on_push: PushListener | None = None,
    ):
        self.pits_id = pits_id
        self.claims = claims
        self.kid = kid
        self.transport = transport
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.session = Session(
            "cloud",
            settings=settings.session(),
            now=clock(),
            hello=m.CloudHello(
                protocol_version=PROTOCOL_VERSION,
                server_time_ms=int(wall() * 1000),
                limits=settings.limits,
                features=settings.features,
            ),
            expect_pits_id=pits_id,
            wall=wall,
            log_throttle=registry.drop_log,
            log_key=pits_id,
        )
        self.connected_since_wall = wall()
        self.fetches = 0
        self.queued = 0
        self.shed = 0
        self.renewed = False
        self._renewing: asyncio.Future[None] | None = None
        self.paused = False
        self._renew = renew
        self._on_update = on_update
        self._on_push = on_push
        # Where this box's update stands: its last `update` frame, else its hello's.
        self._update: m.UpdateReport | None = None
        self.offered: str | None = None  # the bundle id last offered over this connection
        # Which FPVTrackside the box sees: its last `fpvtrackside` frame, else its hello's.
        self._fpvtrackside: m.FpvTrackside | None = None
        # A pits may send a new one with every frame: one line a minute, with the count.
        self._fpvtrackside_log = Throttle(FPVTRACKSIDE_LOG_S)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._pending: dict[str, asyncio.Future[m.Response]] = {}
        # Ids of fetches that timed out here: a late reply to one is no fault of the pits.
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._gone = False

    # -- what the session knows ------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def hello(self) -> m.PitsHello | None:
        hello = self.session.peer_hello
        return hello if isinstance(hello, m.PitsHello) else None

    @property
    def update(self) -> m.UpdateReport | None:
        if self._update is not None:
            return self._update
        return self.hello.update if self.hello else None

    @property
    def fpvtrackside(self) -> m.FpvTrackside | None:
        if self._fpvtrackside is not None:
            return self._fpvtrackside
        return self.hello.fpvtrackside if self.hello else None

    @property
    def slot(self) -> str | None:
        return self.hello.slot if self.hello else None

    @property
    def last_rx(self) -> float:
        return self.session.last_rx

    @property
    def round_trip(self) -> float | None:
        return self.session.round_trip

    @property
    def errors(self) -> int:
        return self.session.errors

    @property
    def rx_bytes(self) -> int:
        return self.session.rx_bytes

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- the socket ------------------------------------------------------------------------------

    def _flush(self) -> None:
        for text in self.session.data_to_send():
            self.transport.send(text)

    def _act(self, events: list[Event]) -> None:
        """Write what the session queued, then do what its events ask."""
        self._flush()
        for event in events:
            if isinstance(event, Opened):
                refused = self.settings.refuse_id and self.settings.refuse_id(self.pits_id)
                if refused:
                    log.warning(
                        "pits refused: its id cannot be its host name",
                        extra={"pits_id": self.pits_id[:64], "reason": refused},
                    )
                    self.close(CloseCode.POLICY, refused)
                    return
                self.registry.register(self)
                log.info(
                    "pits connected",
                    extra={
                        "pits_id": self.pits_id,
                        "sw_version": self.hello and self.hello.sw_version,
                        "fpvtrackside": _version_of(self.fpvtrackside),
                    },
                )
            elif isinstance(event, Received):
                self._on_reply(event.frame_id, event.message)
            elif isinstance(event, Dropped):
                self._on_drop(event)
            elif isinstance(event, RoundTrip):
                self.metrics.ws_roundtrip.observe(event.seconds)
            elif isinstance(event, Closing):
                log.info(
                    "closing pits connection", extra={"pits_id": self.pits_id, "code": event.code}
                )
                self.transport.close(event.code, event.reason)
                self.closed(_why_we_closed(event))

    def start(self) -> None:
        """Send the cloud's hello; the pits must answer within the handshake timeout."""
        self.session.start()
        self._flush()

    def close(self, code: int, reason: str) -> None:
        self._act(self.session.close(code, reason))

    def on_text(self, data: str | bytes) -> None:
        """Handle one frame from the pits. Nothing a pits sends can raise out of here."""
        self._act(self.session.receive(data, self.clock()))

    def closed(self, why: str = "connection lost") -> None:
        """The WebSocket is gone: fail every pending fetch now, not at its deadline.

        `why` is how it ended, shown with the box while it is listed as offline.
        """
        if self._gone:
            return
        self._gone = True
        self.session.closed()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProtocolError(ErrorCode.UNAVAILABLE, "pits connection lost"))
        self._pending.clear()
        wall = self.wall()
        gone = Departure(
            pits_id=self.pits_id,
            since=self.connected_since_wall,
            last_seen=wall - max(0.0, self.clock() - self.last_rx),
            error=clip(why),
        )
        self.registry.unregister(self, gone)
        log.info("pits disconnected", extra={"pits_id": self.pits_id, "why": gone.error})

    # -- fetches ---------------------------------------------------------------------------------

    async def fetch(
        self, fetch: m.Fetch, timeout: float, *, frame_id: str | None = None
    ) -> m.Response:
        """Send one fetch and wait for its reply; raises ProtocolError on failure.

        The frame id is the public request's id where there is one, so that one grep follows
        a request through the relay's and the agent's logs.
        """
        if self.state != "open":
            raise ProtocolError(ErrorCode.UNAVAILABLE, "pits is not connected")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._admit(timeout)
        try:
            if self.state != "open":
                raise ProtocolError(ErrorCode.UNAVAILABLE, "pits connection lost")
            if frame_id is None or frame_id in self._pending:
                frame_id = m.new_id()
            future: asyncio.Future[m.Response] = loop.create_future()
            self._pending[frame_id] = future
            self.fetches += 1
            self.metrics.fetches.inc()
            self.metrics.fetch_in_flight.inc()
            try:
                self.session.send(fetch, frame_id)
                self._flush()
                return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
            except TimeoutError:
                self._expired[frame_id] = None
                if len(self._expired) > EXPIRED_IDS:
                    self._expired.popitem(last=False)
                raise ProtocolError(
                    ErrorCode.TIMEOUT, f"pits did not answer in {timeout:g} s"
                ) from None
            finally:
                self._pending.pop(frame_id, None)
                self.metrics.fetch_in_flight.dec()
        finally:
            self._slots.release()

    async def _admit(self, timeout: float) -> None:
        """Take one of the connection's in-flight slots, waiting in a bounded queue.

        Past the queue the request is shed at once (BUSY): an unbounded wait would only turn
        into timeouts for everybody.
        """
        if not self._slots.locked():
            await self._slots.acquire()
            return
        if self.queued >= self.settings.queue_size:
            self.shed += 1
            self.metrics.shed.inc()
            raise ProtocolError(
                ErrorCode.BUSY, f"too many requests waiting for pits {self.pits_id}"
            )
        self.queued += 1
        self.metrics.fetch_queue_depth.inc()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"no free slot for pits {self.pits_id} in {timeout:g} s"
            ) from None
        finally:
            self.queued -= 1
            self.metrics.fetch_queue_depth.dec()

    def send(self, message: m.Message) -> bool:
        """Send a frame of the relay's own (an offer); False when the connection is not open."""
        if self.state != "open":
            return False
        self.session.send(message)
        self._flush()
        return True

    def _on_reply(self, frame_id: str, msg: m.Message) -> None:
        if isinstance(msg, m.UpdateReport):
            self._update = msg
            if self._on_update is not None:
                self._on_update(self, msg)
            return
        if isinstance(msg, m.FpvTrackside):
            before, self._fpvtrackside = self.fpvtrackside, msg
            what = "pits FPVTrackside seen" if before is None else "pits FPVTrackside changed"
            held = None if before == msg else self._fpvtrackside_log.allow(what, self.clock())
            if held is not None:
                # An upgrade at the venue shows here first; a schema mismatch after it is
                # likely its doing (cloud.drift).
                log.info(
                    what,
                    extra={
                        "pits_id": self.pits_id,
                        "fpvtrackside": _version_of(msg),
                        "before": _version_of(before),
                        "server": msg.server,
                        "suppressed": held,
                    },
                )
            return
        if isinstance(msg, PUSH_TYPES):
            refused = self._on_push(self, msg) if self._on_push else "no push taken here"
            if refused is not None:
                self._act(self.session.drop("push_refused", refused, self.clock()))
            return
        if not isinstance(msg, m.Response | m.Error):
            return  # past the session, a pits sends only replies and reports
        future = self._pending.get(frame_id)
        if future is None or future.done():
            now = self.clock()
            if frame_id in self._expired:
                del self._expired[frame_id]
                events = self.session.drop(
                    "expired", "late reply to a fetch that timed out", now, charge=False
                )
            else:
                events = self.session.drop("unknown_id", "reply for an unknown id", now)
            self._act(events)
            return
        if isinstance(msg, m.Error):
            # The code and message only: details from a pits never reach a public answer.
            future.set_exception(ProtocolError(msg.code, msg.message))
        elif msg.body is not None and len(msg.body) > self.settings.max_body_bytes:
            future.set_exception(
                ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"pits sent {len(msg.body)} bytes, over the {self.settings.max_body_bytes} byte cap",
                )
            )
        else:
            future.set_result(msg)

    def _on_drop(self, event: Dropped) -> None:
        self.metrics.frames_dropped.labels(event.reason).inc()
        future = self._pending.get(event.frame_id or "")
        if event.reason == "malformed" and future is not None and not future.done():
            # A reply we wait for, but broken: fail its fetch now, not at its deadline.
            future.set_exception(
                ProtocolError(ErrorCode.BAD_CONTENT, f"malformed reply: {event.detail}")
            )
        if event.held is not None:
            log.warning(
                "dropped frame",
                extra={
                    "pits_id": self.pits_id,
                    "reason": event.reason,
                    "detail": event.detail,
                    "suppressed": event.held,
                },
            )

    # -- liveness and the token -------------------------------------------------------------------

    def tick(self) -> None:
        """Ping when due, close a silent pits (the session); close or renew by the token."""
        if self.state == "closed":
            return
        self._act(self.session.tick(self.clock()))
        if self.state != "open":
            return
        if self._token_expired():
            self.close(CloseCode.TOKEN_EXPIRED, "token expired")
            return
        self._maybe_renew()

    def _token_expired(self) -> bool:
        exp = self.claims.get("exp")
        return isinstance(exp, int | float) and self.wall() > exp + LEEWAY_S

    def _maybe_renew(self) -> None:
        """Send a fresh token when this one is within `renew_before` of expiry (once)."""
        exp = self.claims.get("exp")
        before = self.settings.renew_before
        if (
            self.renewed
            or self._renew is None
            or before is None
            or not isinstance(exp, int | float)
        ):
            return
        if exp - self.wall() > before:
            return
        self.renewed = True
        self._renewing = asyncio.ensure_future(self._send_renewal(self._renew))

    async def _send_renewal(self, renew: Renewer) -> None:
        token = await renew(self.claims)
        if token is not None and self.state == "open":
            self.session.send(m.Token(token=token))
            self._flush()

    def act(self, action: str) -> None:
        """An admin's action: `reconnect` (4000: the box dials again at once), `pause`, `resume`."""
        if action == "reconnect":
            self.close(CloseCode.RECONNECT, "reconnect requested by an admin")
        elif action in ("pause", "resume"):
            self.paused = action == "pause"

    def revoke_if(self, revoked: Revocations, kids: frozenset[str] | None = None) -> None:
        """Close this connection if its token was revoked, or its key removed, since it connected."""
        refused = revoked.refuses(self.claims)
        if refused is not None:
            self.close(CloseCode.TOKEN_EXPIRED, refused)
        elif kids is not None and self.kid is not None and self.kid not in kids:
            self.close(CloseCode.TOKEN_EXPIRED, "token signed by a removed key")

    def describe(self) -> dict[str, Any]:
        """What the admin view shows of this connection."""
        return {
            "pitsId": self.pits_id,
            "state": self.state,
            "since": self.connected_since_wall,
            "swVersion": self.hello.sw_version if self.hello else None,
            "protocolVersion": self.hello.protocol_version if self.hello else None,
            "roundTripMs": None if self.round_trip is None else round(self.round_trip * 1000, 1),
            "inFlight": self.in_flight,
            "queue": self.queued,
            "paused": self.paused,
            "shed": self.shed,
            "errors": self.errors,
            "fetches": self.fetches,
            "arch": arch_of(self.hello),
            "slot": self.slot,
            "update": self.update.payload() if self.update else None,
            "fpvtrackside": self.fpvtrackside.payload() if self.fpvtrackside else None,
        }
