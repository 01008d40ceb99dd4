"""The agent's one outbound WebSocket to the relay: connect, hello, serve fetches, stay alive.

Nothing ever connects in to the pits: the agent dials out, and when the link drops (or goes
silent, the half-open case) it dials again after a full-jitter backoff. Refusals that retrying
soon cannot fix (a refused token, a protocol version the relay does not speak) wait long.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import tornado.httpclient
import tornado.iostream
import tornado.websocket

from pits_appliance import ConfigError, __version__
from pits_appliance.config import AgentConfig, control_url
from pits_appliance.dialing import DialFailure, FailureLog, classify
from pits_appliance.executor import Executor
from pits_appliance.metrics import AgentMetrics
from pits_appliance.state import AgentState
from pits_appliance.tokens import TokenStore, validity
from wire import PROTOCOL_VERSION, SUPPORTED_VERSIONS, CloseCode, ErrorCode, ProtocolError
from wire import messages as m
from wire.backoff import Backoff

log = logging.getLogger("pitlink.pits.link")
fetch_log = logging.getLogger("pitlink.pits.fetch")

FEATURES = ("canonical-json-v1", "etag-sha256", "token-renewal")
_SLOW_CODES = {CloseCode.TOKEN_EXPIRED, CloseCode.VERSION_REFUSED, CloseCode.POLICY}


def _close_if_connected(
    future: asyncio.Future[tornado.websocket.WebSocketClientConnection],
) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class CloudLink:
    """Keeps the WebSocket to the relay up and answers what comes down it."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        executor: Executor,
        state: AgentState,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        tokens: TokenStore | None = None,
    ):
        self.config = config
        self.tokens = (
            tokens if tokens is not None else TokenStore(config.token_file, configured=config.token)
        )
        self.executor = executor
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.backoff = Backoff(base=config.reconnect_base, cap=config.reconnect_cap, rand=rand)
        self._ws: tornado.websocket.WebSocketClientConnection | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[str, float] = {}
        self.sessions = 0
        # Several relays: move on to the next after a failure, as cloudflared does over edges.
        self.relays = [config.cloud_url, *config.cloud_urls]
        self._relay_index = 0
        self._healthy_session = False
        self._session_up = False
        self.failures = FailureLog()

    # -- control ------------------------------------------------------------------------------

    def reconnect_now(self) -> None:
        """Drop the current link (if any) and dial again without waiting."""
        self.backoff.reset()
        self._wake.set()
        if self._ws is not None:
            self._ws.close(CloseCode.NORMAL, "reconnect requested")

    def stop(self) -> None:
        self._stopping = True
        self.reconnect_now()

    async def run(self) -> None:
        """Dial, serve, and dial again until stopped."""
        while not self._stopping:
            delay = await self._session()
            if self._stopping:
                break
            self.state.next_attempt_in = delay
            log.debug("reconnecting", extra={"delay_s": round(delay, 2)})
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()
            self.state.next_attempt_in = None
            self.state.reconnects += 1
            self.metrics.reconnects.inc()

    # -- one connection -----------------------------------------------------------------------

    def _read_token(self) -> str:
        try:
            return self.tokens.current()
        except ConfigError as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, str(exc)) from None

    async def _session(self) -> float:
        """One connection's life; returns how long to wait before the next attempt."""
        delay = await self._one_session()
        if not self._healthy_session:
            self._relay_index += 1  # no good: the next relay on the list gets the next try
        return delay

    async def _one_session(self) -> float:
        self._healthy_session = False
        self._session_up = False
        self._wake.clear()
        try:
            token = self._read_token()
        except ProtocolError as exc:
            self.state.set("cloud_error", exc.message)
            return self.backoff.slow_delay()
        relay_url = self.relays[self._relay_index % len(self.relays)]
        self.state.relay_url = relay_url
        url = control_url(relay_url)
        request = tornado.httpclient.HTTPRequest(
            url,
            headers={"Authorization": f"Bearer {token}"},
            connect_timeout=10.0,
            request_timeout=15.0,
        )
        try:
            connecting = asyncio.ensure_future(
                tornado.websocket.websocket_connect(
                    request,
                    compression_options={},
                    ping_interval=None,
                    max_message_size=self.config.max_body_bytes * 4 // 3 + 64 * 1024,
                )
            )
            try:
                ws = await asyncio.shield(connecting)
            except asyncio.CancelledError:
                # Stopped while dialing: a connection that still comes up must not be left open.
                connecting.add_done_callback(_close_if_connected)
                raise
        except tornado.httpclient.HTTPClientError as exc:
            body = exc.response.body if exc.response is not None else None
            failure = classify(exc, relay_url, status=exc.code, body=body)
            if failure.kind == "token":
                self._report(failure, relay_url)
                # `sessions` grows whenever a dial gets past the relay's token check.
                fallback = self.tokens.refused(token, epoch=self.sessions)
                if fallback is not None:
                    self.state.token_issued, self.state.token_expires = validity(fallback)
                    self.state.set("cloud_error", failure.text + "; trying the token before")
                    return self.backoff.base  # soon: another token may well work
                return self.backoff.slow_delay()
            self._report(failure, relay_url)
            return self.backoff.next_delay()
        except (
            OSError,
            tornado.iostream.StreamClosedError,
            tornado.websocket.WebSocketError,
        ) as exc:
            self._report(classify(exc, relay_url), relay_url)
            return self.backoff.next_delay()
        self._ws = ws
        self.sessions += 1
        try:
            await self._handshake(ws)
            await self._serve(ws)
        except ProtocolError as exc:
            self.state.set("cloud_error", exc.message)
            log.warning("link failed", extra={"code": str(exc.code), "error": exc.message})
        finally:
            self._ws = None
            for task in list(self._tasks):
                task.cancel()
            ws.close(CloseCode.NORMAL, "bye")
            was_connected = self.state.ws_connected
            self.state.set("ws_connected", False)
            self.metrics.ws_connected.set(0)
            if was_connected:
                self.backoff.disconnected(self.clock())
        return self._after_close(ws.close_code, ws.close_reason)

    def _report(self, failure: DialFailure, url: str) -> None:
        """Show why the dial failed, and log it when the reason changes (or every 5 minutes)."""
        self.state.set("cloud_error", failure.text)
        self.state.cloud_failure = failure.kind
        held = self.failures.should_log(failure, self.clock())
        if held is not None:
            log.warning(
                "cannot connect to the relay",
                extra={
                    "url": url,
                    "kind": failure.kind,
                    "status": failure.status,
                    "reason": failure.reason,
                    "error": failure.text,
                    "failed_since_last_line": held,
                },
            )

    def _after_close(self, code: int | None, reason: str | None) -> float:
        # A session that got through its handshake keeps its relay, unless it was replaced
        # or asked to reconnect (a draining replica): then the next relay is as good.
        self._healthy_session = self._session_up and code not in (
            CloseCode.RECONNECT,
            CloseCode.REPLACED,
        )
        self.state.close_code = code
        self.state.close_reason = reason
        log.info("link closed", extra={"close_code": code, "reason": reason})
        if code == CloseCode.RECONNECT:
            self.backoff.reset()
            return 0.0
        if code in _SLOW_CODES:
            plain = {
                CloseCode.TOKEN_EXPIRED: "the relay says this box's token expired or was revoked: ask for a new one",
                CloseCode.VERSION_REFUSED: f"the relay does not speak this box's protocol version ({reason}): update the box",
                CloseCode.POLICY: f"the relay refused this box ({reason})",
            }[CloseCode(code)]
            self.state.set("cloud_error", plain)
            return self.backoff.slow_delay()
        if code == CloseCode.REPLACED:
            self.state.set("cloud_error", "another connection with this pits id replaced this one")
        return self.backoff.next_delay()

    async def _handshake(self, ws: tornado.websocket.WebSocketClientConnection) -> None:
        try:
            first = await asyncio.wait_for(ws.read_message(), self.config.ping_timeout)
        except TimeoutError:
            raise ProtocolError(ErrorCode.TIMEOUT, "the relay sent no hello") from None
        if first is None:
            return  # closed before hello: the close code says why
        frame = m.decode(first, sender="cloud")
        if not isinstance(frame.message, m.CloudHello):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected hello, got {frame.type}")
        if frame.message.protocol_version not in SUPPORTED_VERSIONS:
            ws.close(CloseCode.VERSION_REFUSED, f"agent speaks {PROTOCOL_VERSION}")
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"the relay speaks protocol {frame.message.protocol_version}: update the box",
            )
        self._send(
            ws,
            m.PitsHello(
                protocol_version=PROTOCOL_VERSION,
                pits_id=self.state.pits_id,
                sw_version=__version__,
                features=FEATURES,
            ),
        )
        now = time.time()
        self.state.set("ws_connected", True, now)
        self.state.connected_since = now
        self._session_up = True
        self.state.set("cloud_error", None)
        self.state.cloud_failure = None
        self.failures.reset()
        self.metrics.ws_connected.set(1)
        self.backoff.connected(self.clock())
        log.info("link up", extra={"relay": self.state.relay_url})

    async def _serve(self, ws: tornado.websocket.WebSocketClientConnection) -> None:
        """Read frames until the link closes or falls silent past the ping timeout."""
        if not self.state.ws_connected:
            return
        last_rx = [self.clock()]

        async def reader() -> None:
            while True:
                data = await ws.read_message()
                if data is None:
                    return
                last_rx[0] = self.clock()
                self._on_frame(ws, data)

        reading = asyncio.ensure_future(reader())
        last_ping = self.clock()
        try:
            while not reading.done():
                now = self.clock()
                wait = min(
                    self.config.ping_interval - (now - last_ping),
                    self.config.ping_timeout - (now - last_rx[0]),
                )
                await asyncio.wait([reading], timeout=max(0.01, wait))
                now = self.clock()
                if now - last_rx[0] > self.config.ping_timeout:
                    log.warning(
                        "relay silent, dropping the link",
                        extra={"silent_s": round(now - last_rx[0], 1)},
                    )
                    self.state.set("cloud_error", "the link to the relay went silent")
                    return
                if now - last_ping >= self.config.ping_interval:
                    last_ping = now
                    self._pings = {
                        k: t for k, t in self._pings.items() if now - t < self.config.ping_timeout
                    }
                    self._pings[self._send(ws, m.Ping())] = now
        finally:
            reading.cancel()

    # -- frames -------------------------------------------------------------------------------

    def _send(
        self,
        ws: tornado.websocket.WebSocketClientConnection,
        message: m.Message,
        frame_id: str | None = None,
    ) -> str:
        frame_id = frame_id or m.new_id()
        try:
            ws.write_message(m.encode(message, frame_id=frame_id, now_ms=int(time.time() * 1000)))
        except tornado.websocket.WebSocketClosedError:
            pass
        return frame_id

    def _on_frame(self, ws: tornado.websocket.WebSocketClientConnection, data: str | bytes) -> None:
        try:
            frame = m.decode(data, sender="cloud")
        except ProtocolError as exc:
            self.metrics.frames_dropped.labels("malformed").inc()
            log.warning("dropped malformed frame", extra={"error": exc.message})
            self._send(
                ws, m.Error(code=ErrorCode.BAD_REQUEST, message=exc.message), m.peek_id(data)
            )
            return
        msg = frame.message
        if isinstance(msg, m.Fetch):
            if self.state.paused:
                self.metrics.fetches.labels(str(ErrorCode.UNAVAILABLE)).inc()
                paused = m.Error(
                    code=ErrorCode.UNAVAILABLE, message="answering is paused at the pits"
                )
                self._send(ws, paused, frame.id)
                return
            if len(self._tasks) >= self.config.max_concurrent_commands:
                self.metrics.fetches.labels(str(ErrorCode.BUSY)).inc()
                busy = m.Error(
                    code=ErrorCode.BUSY,
                    message=f"the pits is already handling {len(self._tasks)} fetches",
                )
                self._send(ws, busy, frame.id)
                return
            task = asyncio.ensure_future(self._fetch(ws, frame.id, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(msg, m.Ping):
            self._send(ws, m.Pong(), frame.id)
        elif isinstance(msg, m.Pong):
            sent = self._pings.pop(frame.id, None)
            if sent is None:
                self.metrics.frames_dropped.labels("unknown_id").inc()
            else:
                self.state.round_trip = self.clock() - sent
        elif isinstance(msg, m.Token):
            self._store_token(msg.token)
        elif isinstance(msg, m.Error):
            log.warning(
                "relay reported an error", extra={"code": str(msg.code), "error": msg.message}
            )
        else:
            self.metrics.frames_dropped.labels("unexpected").inc()

    def _store_token(self, token: str) -> None:
        """A renewal from the relay: the store keeps it only if it may replace the current one."""
        if self.tokens.offer(token):
            self.state.token_issued, self.state.token_expires = validity(token)
        else:
            self.metrics.frames_dropped.labels("bad_token").inc()

    async def _fetch(
        self, ws: tornado.websocket.WebSocketClientConnection, frame_id: str, fetch: m.Fetch
    ) -> None:
        started = self.clock()
        outcome = "ok"
        reply: m.Message
        try:
            reply = await self.executor.execute(fetch)
            now = time.time()
            self.state.last_success = now
            self.state.last_fetch = now
            self.state.set("origin_reachable", True)
            self.metrics.last_success.set(now)
        except ProtocolError as exc:
            outcome = str(exc.code)
            reply = m.Error(code=exc.code, message=exc.message, details=exc.details)
            self.state.last_fetch = time.time()
            if exc.code in (ErrorCode.ORIGIN_UNREACHABLE, ErrorCode.TIMEOUT):
                self.state.set("origin_reachable", False)
                self.state.origin_error = exc.message
        except Exception:
            log.exception("fetch failed", extra={"request_id": frame_id})
            outcome = "INTERNAL"
            reply = m.Error(code=ErrorCode.INTERNAL, message="the agent failed on this request")
        elapsed = self.clock() - started
        self.metrics.origin_fetch.observe(elapsed)
        self.metrics.fetches.labels(outcome).inc()
        fetch_log.info(
            "fetch",
            extra={
                "request_id": frame_id,
                "path": fetch.path[:200],
                "outcome": outcome,
                "latency_ms": round(elapsed * 1000, 1),
            },
        )
        self._send(ws, reply, frame_id)
