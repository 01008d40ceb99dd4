"""Pits connections: the handshake, pending fetches, liveness, and who is connected.

`PitsConnection` holds the logic of one pits WebSocket and talks to it through a two-method
transport, so it is tested without a server. `Registry` knows the live connection of each
pits; a newer connection of the same pits replaces the older one (closed with 4003).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud.keys import LEEWAY_S, Revocations
from cloud.metrics import Metrics
from wire import PROTOCOL_VERSION, SUPPORTED_VERSIONS, CloseCode, ErrorCode, ProtocolError
from wire import messages as m
from wire.budget import Throttle, TokenBucket

log = logging.getLogger("pitlink.cloud.control")

GOING_AWAY = 1001
EXPIRED_IDS = 256  # timed-out fetch ids remembered per connection


class Transport(Protocol):
    """What a connection needs from its WebSocket."""

    def send(self, text: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


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


# Issues a fresh token for the claims of a connection whose token is close to expiry, or None
# when that token was renewed before (a token is renewed at most once).
Renewer = Callable[[dict[str, Any]], Awaitable[str | None]]


class PitsConnection:
    """One pits WebSocket: handshake state, fetches awaiting replies, liveness."""

    def __init__(
        self,
        *,
        pits_id: str,
        claims: dict[str, Any],
        kid: str | None = None,
        transport: Transport,
        registry: Registry,
        settings: ControlSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        renew: Renewer | None = None,
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
        self.state = "handshake"
        self.hello: m.PitsHello | None = None
        self.opened_at = clock()
        self.connected_since_wall = wall()
        self.last_rx = self.opened_at
        self.last_ping_sent = self.opened_at
        self.round_trip: float | None = None
        self.errors = 0
        self.fetches = 0
        self.rx_bytes = 0
        self.queued = 0
        self.shed = 0
        self.renewed = False
        self._renewing: asyncio.Future[None] | None = None
        self.paused = False
        self._renew = renew
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._pending: dict[str, asyncio.Future[m.Response]] = {}
        self._pings: dict[str, float] = {}
        # Ids of fetches that timed out here: a late reply to one is no fault of the pits.
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._drops = TokenBucket(settings.drop_rate, settings.drop_burst, self.opened_at)

    # -- outgoing ------------------------------------------------------------------------------

    def _send(self, message: m.Message, frame_id: str | None = None) -> str:
        frame_id = frame_id or m.new_id()
        self.transport.send(m.encode(message, frame_id=frame_id, now_ms=int(self.wall() * 1000)))
        return frame_id

    def start(self) -> None:
        """Send the cloud's hello; the pits must answer within the handshake timeout."""
        self._send(
            m.CloudHello(
                protocol_version=PROTOCOL_VERSION,
                server_time_ms=int(self.wall() * 1000),
                limits=self.settings.limits,
            )
        )

    def close(self, code: int, reason: str) -> None:
        if self.state != "closed":
            log.info("closing pits connection", extra={"pits_id": self.pits_id, "code": code})
            self.transport.close(code, reason)
            self.closed()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

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
                self._send(fetch, frame_id)
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

    # -- incoming ------------------------------------------------------------------------------

    def on_text(self, data: str | bytes) -> None:
        """Handle one frame from the pits. Nothing a pits sends can raise out of here."""
        if self.state == "closed":
            return  # what is still in flight after we closed is not read
        self.last_rx = self.clock()
        self.rx_bytes += len(data)
        try:
            frame = m.decode(data, sender="pits")
        except ProtocolError as exc:
            if self.state == "handshake":
                # A pits that cannot say hello properly (a field past its bound, say) is done.
                self.close(CloseCode.POLICY, f"bad hello: {exc.message}")
                return
            frame_id = m.peek_id(data)
            future = self._pending.get(frame_id) if frame_id is not None else None
            if future is not None and not future.done():
                # A reply we wait for, but broken: fail its fetch now, not at its deadline.
                future.set_exception(
                    ProtocolError(ErrorCode.BAD_CONTENT, f"malformed reply: {exc.message}")
                )
            if self._drop("malformed", exc.message):
                self._send(m.Error(code=ErrorCode.BAD_REQUEST, message=exc.message), frame_id)
            return
        msg = frame.message
        if isinstance(msg, m.PitsHello):
            self._on_hello(msg)
        elif self.state != "open":
            self._drop("before_hello", f"{frame.type} before hello")
        elif isinstance(msg, m.Response | m.Error):
            self._on_reply(frame.id, msg)
        elif isinstance(msg, m.Ping):
            self._send(m.Pong(), frame.id)
        elif isinstance(msg, m.Pong):
            sent = self._pings.pop(frame.id, None)
            if sent is None:
                self._drop("unknown_id", "pong for an unknown ping")
            else:
                self.round_trip = self.clock() - sent
                self.metrics.ws_roundtrip.observe(self.round_trip)

    def _drop(self, reason: str, detail: str, *, charge: bool = True) -> bool:
        """Count a dropped frame; False when it spent the budget and the connection is closed.

        The log line is rate-limited per pits and reason, with the count of those held back.
        """
        self.errors += 1
        self.metrics.frames_dropped.labels(reason).inc()
        now = self.clock()
        held = self.registry.drop_log.allow(f"{self.pits_id}:{reason}", now)
        if held is not None:
            log.warning(
                "dropped frame",
                extra={
                    "pits_id": self.pits_id,
                    "reason": reason,
                    "detail": detail[:200],
                    "suppressed": held,
                },
            )
        if charge and self._drops.take(now):
            log.warning(
                "closing a pits that sends too many bad frames", extra={"pits_id": self.pits_id}
            )
            self.close(CloseCode.POLICY, "too many bad frames")
            return False
        return True

    def _on_hello(self, hello: m.PitsHello) -> None:
        if self.state != "handshake":
            self._drop("unexpected", "second hello")
            return
        if hello.protocol_version not in SUPPORTED_VERSIONS:
            self.close(
                CloseCode.VERSION_REFUSED,
                f"protocol version {hello.protocol_version} not supported; "
                f"this relay speaks {sorted(SUPPORTED_VERSIONS)}",
            )
            return
        if hello.pits_id != self.pits_id:
            self.close(CloseCode.POLICY, "pitsId does not match the token")
            return
        self.hello = hello
        self.state = "open"
        self.registry.register(self)
        log.info(
            "pits connected",
            extra={"pits_id": self.pits_id, "sw_version": hello.sw_version},
        )

    def _on_reply(self, frame_id: str, msg: m.Response | m.Error) -> None:
        future = self._pending.get(frame_id)
        if future is None or future.done():
            if frame_id in self._expired:
                del self._expired[frame_id]
                self._drop("expired", "late reply to a fetch that timed out", charge=False)
            else:
                self._drop("unknown_id", "reply for an unknown id")
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

    def closed(self) -> None:
        """The WebSocket is gone: fail every pending fetch now, not at its deadline."""
        if self.state == "closed":
            return
        self.state = "closed"
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProtocolError(ErrorCode.UNAVAILABLE, "pits connection lost"))
        self._pending.clear()
        self.registry.unregister(self)
        log.info("pits disconnected", extra={"pits_id": self.pits_id})

    # -- liveness ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Ping when due; close a connection silent past the timeout (a half-open link)."""
        if self.state == "closed":
            return
        now = self.clock()
        if self.state == "handshake" and now - self.opened_at > self.settings.handshake_timeout:
            self.close(CloseCode.POLICY, "no hello received")
            return
        if now - self.last_rx > self.settings.ping_timeout:
            self.close(GOING_AWAY, f"silent for {self.settings.ping_timeout:g} s")
            return
        if self.state == "open" and self._token_expired():
            self.close(CloseCode.TOKEN_EXPIRED, "token expired")
            return
        if self.state == "open":
            self._maybe_renew()
        if now - self.last_ping_sent >= self.settings.ping_interval:
            self.last_ping_sent = now
            self._pings = {
                k: t for k, t in self._pings.items() if now - t < self.settings.ping_timeout
            }
            self._pings[self._send(m.Ping())] = now

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
            self._send(m.Token(token=token))

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
        }


class Registry:
    """Every pits connection, and the one live connection of each pits."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.all: set[PitsConnection] = set()
        self._live: dict[str, PitsConnection] = {}
        # One "dropped frame" line a second per pits and reason, across its reconnections.
        self.drop_log = Throttle(1.0, max_kinds=1024)
        # Told when a pits connection is live here, or no longer (the cluster claims keys).
        self.on_register: list[Callable[[str], None]] = []
        self.on_unregister: list[Callable[[str], None]] = []

    def add(self, conn: PitsConnection) -> None:
        self.all.add(conn)
        self._gauge()

    def register(self, conn: PitsConnection) -> None:
        """A connection finished its handshake; it replaces any older one of the same pits."""
        old = self._live.get(conn.pits_id)
        self._live[conn.pits_id] = conn
        if old is not None and old is not conn:
            old.close(CloseCode.REPLACED, "replaced by a newer connection of the same pits")
        self._gauge()
        for hook in self.on_register:
            hook(conn.pits_id)

    def unregister(self, conn: PitsConnection) -> None:
        self.all.discard(conn)
        if self._live.get(conn.pits_id) is conn:
            del self._live[conn.pits_id]
            for hook in self.on_unregister:
                hook(conn.pits_id)
        self._gauge()

    def get(self, pits_id: str) -> PitsConnection | None:
        return self._live.get(pits_id)

    def live(self) -> list[PitsConnection]:
        return list(self._live.values())

    def tick(self) -> None:
        for conn in list(self.all):
            conn.tick()

    def max_queue(self) -> int:
        """The deepest per-pits queue right now (readiness turns on it)."""
        return max((conn.queued for conn in self.all), default=0)

    def revoke(self, revoked: Revocations, kids: frozenset[str] | None = None) -> None:
        for conn in list(self.all):
            conn.revoke_if(revoked, kids)

    def _gauge(self) -> None:
        counts = {"handshake": 0, "open": 0}
        for conn in self.all:
            if conn.state in counts:
                counts[conn.state] += 1
        for state, n in counts.items():
            self.metrics.control_connections.labels(state).set(n)
