"""The agent's one outbound WebSocket to the relay: connect, hello, serve fetches, stay alive.

Nothing ever connects in to the pits: the agent dials out, and when the link drops (or goes
silent, the half-open case) it dials again after a full-jitter backoff. Refusals that retrying
soon cannot fix (a refused token, a protocol version the relay does not speak) wait long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import tornado.httpclient
import tornado.iostream
import tornado.websocket

from pits_appliance import ConfigError, __version__
from pits_appliance.config import AgentConfig, control_url
from pits_appliance.dialing import (
    DialFailure,
    FailureLog,
    classify,
    closed_by_box,
    closed_by_relay,
)
from pits_appliance.executor import Executor
from pits_appliance.fetching import Fetches
from pits_appliance.linkframes import LinkFrames
from pits_appliance.metrics import AgentMetrics
from pits_appliance.outbox import Outbox
from pits_appliance.state import AgentState
from pits_appliance.tokens import TokenStore, validity
from pits_appliance.update import Updater
from wire import PROTOCOL_VERSION, CloseCode, ErrorCode, ProtocolError
from wire import messages as m
from wire.backoff import Backoff
from wire.push import FEATURE_PUSH
from wire.session import (
    Closing,
    Event,
    Opened,
    Session,
    SessionSettings,
)

log = logging.getLogger("pitlink.pits.link")

FEATURES = ("canonical-json-v1", "etag-sha256", "token-renewal")


# How long the box reads what still arrives after it closed the link (tornado gives up on the
# closing handshake after 5 s).
CLOSING_READ_S = 10.0


async def _until_closed(ws: tornado.websocket.WebSocketClientConnection) -> None:
    """Read (and drop) what arrives until the closing handshake is over: its socket then closes
    while the loop runs, not when the garbage collector gets to it.

    Only for a link the box closed: once the connection has ended, reading waits forever (the
    end is said once), so the wait is bounded too."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSING_READ_S):
            while await ws.read_message() is not None:
                pass


async def _close_when_connected(
    connecting: asyncio.Future[tornado.websocket.WebSocketClientConnection],
) -> None:
    """A dial the agent's stop interrupted: a connection that still comes up is closed, and
    read to its end like any other (closing it alone would leave its socket open until the
    closing handshake's end, which nothing would then wait for)."""
    try:
        ws = await connecting
    except Exception:
        return  # no connection: nothing to close
    ws.close(CloseCode.NORMAL, "bye")
    await _until_closed(ws)


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
        tls: ssl.SSLContext | None = None,
        updater: Updater | None = None,
    ):
        self.config = config
        self.updater = updater
        self.tls = tls
        self.tokens = (
            tokens if tokens is not None else TokenStore(config.token_file, configured=config.token)
        )
        self.executor = executor
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.backoff = Backoff(base=config.reconnect_base, cap=config.reconnect_cap, rand=rand)
        self._ws: tornado.websocket.WebSocketClientConnection | None = None
        self.outbox = Outbox(push=not config.no_push)
        self.frames = LinkFrames(
            outbox=self.outbox,
            fetches=Fetches(
                executor=executor,
                outbox=self.outbox,
                state=state,
                metrics=metrics,
                max_concurrent=config.max_concurrent_commands,
                clock=clock,
            ),
            state=state,
            metrics=metrics,
            tokens=self.tokens,
            updater=updater,
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._waiting = False  # between attempts
        self._dial_soon = False  # no wait before the next attempt (dial_now)
        self._closing: set[asyncio.Task[None]] = set()  # links the box closed, to their end
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

    def dial_now(self) -> None:
        """Dial without waiting out the backoff: at once if the link is waiting, or as soon as
        the attempt under way fails. Unlike reconnect_now, an attempt under way (dialing, or in
        its handshake) is left to finish: dropping it would only cost a connection."""
        if self.state.ws_connected:
            return
        self.backoff.reset()
        self._dial_soon = True
        if self._waiting:
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.reconnect_now()

    async def settle(self, timeout: float = 2.0) -> None:
        """After stop: wait (a little) for a dial the stop interrupted and for the last link's
        closing handshake, so that their sockets are closed while the loop still runs rather
        than left to the garbage collector."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)

    async def run(self) -> None:
        """Dial, serve, and dial again until stopped."""
        while not self._stopping:
            delay = await self._session()
            if self._stopping:
                break
            if self._dial_soon:
                delay = 0.0
            self.state.next_attempt_in = delay
            log.debug("reconnecting", extra={"delay_s": round(delay, 2)})
            self._waiting = True
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            finally:
                self._waiting = False
            self._wake.clear()
            self._dial_soon = False
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
            ssl_options=self.tls,
            follow_redirects=False,  # never carry the token elsewhere; a redirect is reported
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
                self._until_ended(_close_when_connected(connecting))
                raise
        except tornado.httpclient.HTTPClientError as exc:
            body = exc.response.body if exc.response is not None else None
            location = exc.response.headers.get("Location") if exc.response is not None else None
            failure = classify(exc, relay_url, status=exc.code, body=body, location=location)
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
            self._report(classify(exc, relay_url, cloud_ca=self.config.cloud_ca), relay_url)
            return self.backoff.next_delay()
        self._ws = ws
        # As the relay does on its end: a reply frame goes out at once, not held by Nagle's
        # algorithm until the relay acknowledges the one before (up to its delayed-ACK 40 ms
        # when several fetches are answered in a row).
        if ws.protocol is not None:
            ws.protocol.set_nodelay(True)
        self.sessions += 1
        session = Session(
            "pits",
            settings=SessionSettings(
                ping_interval=self.config.ping_interval,
                ping_timeout=self.config.ping_timeout,
                handshake_timeout=self.config.ping_timeout,
            ),
            now=self.clock(),
            hello=m.PitsHello(
                protocol_version=PROTOCOL_VERSION,
                pits_id=self.state.pits_id,
                sw_version=self.state.sw_version or __version__,
                # A box that takes updates names its architecture, for the relay to offer it
                # bundles made for it ("arch:amd64", from its compatible "pitlink-amd64").
                features=FEATURES
                + (() if self.config.no_push else (FEATURE_PUSH,))
                + (
                    (f"arch:{self.updater.compatible.removeprefix('pitlink-')}",)
                    if self.updater and self.updater.slot
                    else ()
                ),
                slot=self.updater.slot if self.updater else None,
                update=self.updater.report if self.updater else None,
                fpvtrackside=self.state.fpvtrackside,
            ),
        )
        self.outbox.open(ws, session)
        ours: Closing | None = None
        ended = False  # the relay's side ended the connection: its last read said so
        try:
            ours = await self._serve(ws, session)
            ended = ours is None
        finally:
            self._ws = None
            self.outbox.close()
            self.frames.ended()
            ws.close(CloseCode.NORMAL, "bye")
            if not ended:
                self._until_ended(_until_closed(ws))
            was_connected = self.state.ws_connected
            self.state.set("ws_connected", False)
            self.metrics.ws_connected.set(0)
            if was_connected:
                self.backoff.disconnected(self.clock())
        return self._after_close(ws.close_code, ws.close_reason, ours)

    def _until_ended(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run `closing` (a link the box closed, read to its end) for settle to wait for."""
        task = asyncio.create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

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

    def _after_close(self, code: int | None, reason: str | None, ours: Closing | None) -> float:
        """The link ended (the relay closed it, or the box's session did): say why, and how
        long to wait before dialing again."""
        if ours is not None:
            code, reason = ours.code, ours.reason
            closed = closed_by_box(ours)
            log.warning(closed.log or "link closed", extra={"code": code, "reason": reason})
        else:
            closed = closed_by_relay(code, reason)
            log.info("link closed", extra={"close_code": code, "reason": reason})
        # A session that got through its handshake keeps its relay, unless it was replaced
        # or asked to reconnect (a draining replica): then the next relay is as good.
        self._healthy_session = self._session_up and code not in (
            CloseCode.RECONNECT,
            CloseCode.REPLACED,
        )
        self.state.close_code = code
        if closed.text is not None:
            self.state.set("cloud_error", closed.text)
        if closed.policy == "now":
            self.backoff.reset()
            return 0.0
        return self.backoff.slow_delay() if closed.policy == "slow" else self.backoff.next_delay()

    async def _serve(
        self, ws: tornado.websocket.WebSocketClientConnection, session: Session
    ) -> Closing | None:
        """Feed the session what the relay sends and the time; act on what it says, until the
        link closes (None: the relay closed it; its close code says why) or the session ends it.
        """
        reading = asyncio.ensure_future(ws.read_message())
        try:
            while True:
                await asyncio.wait([reading], timeout=session.next_deadline(self.clock()))
                now = self.clock()
                events: list[Event] = []
                if reading.done():
                    data = reading.result()
                    if data is None:
                        return None  # the connection is over: nothing more to read
                    events += session.receive(data, now)
                    reading = asyncio.ensure_future(ws.read_message())
                events += session.tick(now)
                closing = self._act(ws, session, events)
                if closing is not None:
                    ws.close(closing.code, closing.reason)
                    return closing
        finally:
            reading.cancel()

    def _up(self) -> None:
        """The handshake is done: the link is up."""
        now = time.time()
        self.state.set("ws_connected", True, now)
        self.state.connected_since = now
        self._session_up = True
        self._dial_soon = False
        self.state.set("cloud_error", None)
        self.state.cloud_failure = None
        self.failures.reset()
        self.metrics.ws_connected.set(1)
        self.backoff.connected(self.clock())
        log.info("link up", extra={"relay": self.state.relay_url})

    # -- frames -------------------------------------------------------------------------------

    def _act(
        self,
        ws: tornado.websocket.WebSocketClientConnection,
        session: Session,
        events: list[Event],
    ) -> Closing | None:
        """Write what the session queued, do what its events ask; the Closing, if it ends."""
        self.outbox.flush()
        closing: Closing | None = None
        for event in events:
            if isinstance(event, Opened):
                self._up()
                self.frames.opened(session)
            elif isinstance(event, Closing):
                closing = event
            else:
                self.frames.handle(event)
        self.outbox.flush()
        return closing
