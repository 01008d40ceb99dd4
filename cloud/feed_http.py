"""`GET <pits base>/pitlink/live`: a pits' live feed (cloud.feed) as Server-Sent Events, written
below RequestHandler.

Thousands of subscribers each hold a connection for hours and are written the same bytes at
once: each is a small object around its connection's stream (no handler, no request object
kept), every event is encoded once for all, and a write the client does not take is counted,
never buffered without bound. The public listener (cloud.hitfirst) hands a request here when
`FeedGate.match` says it is a subscription; anything else about the path (another method, the
relay's own name sending pits paths on) is the application's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.client import responses
from typing import Any

import tornado.httputil
import tornado.iostream
import ujson

from cloud.clients import Clients
from cloud.drain import Drain
from cloud.feed import Feed
from cloud.hits import BODY_HEADERS
from cloud.hosts import HostRouting, host_name
from cloud.http_base import Stalls
from cloud.metrics import Metrics
from cloud.ratelimit import SharedLimiter
from wire import ErrorCode, ProtocolError
from wire.errors import HTTP_STATUS
from wire.paths import normalize_path

log = logging.getLogger("pitlink.cloud.feed")

FEED_PATH = "/pitlink/live"
MAX_LAST_ID = 64  # longer than any id the relay writes: ignored
RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class FeedRequest:
    pits_id: str
    client: str
    last_id: str | None
    chunked: bool  # HTTP/1.1: chunks; HTTP/1.0: the body ends when the connection does


class Subscriber:
    """One feed subscriber: its connection, and what it has not taken yet."""

    __slots__ = (
        "chunked",
        "client",
        "conn",
        "gate",
        "gone",
        "last",
        "pits_id",
        "unsent",
        "watched",
    )

    def __init__(self, gate: FeedGate, request: FeedRequest, conn: Any):
        self.gate = gate
        self.pits_id = request.pits_id
        self.client = request.client
        self.chunked = request.chunked
        self.conn = conn  # tornado.http1connection.HTTP1Connection
        self.unsent = 0
        self.last: Any = None  # the newest write not taken yet
        self.watched = False  # a write of ours has the write deadline on it
        self.gone = False

    def send(self, raw: bytes, framed: bytes) -> None:
        if self.gone:
            return
        data = framed if self.chunked else raw
        try:
            written = self.conn.stream.write(data)
        except tornado.iostream.StreamClosedError:
            self.ended()
            return
        if written.done():
            return
        size = len(data)
        self.unsent += size
        self.last = written
        if self.unsent > self.gate.feed.max_unsent:
            self.gate.metrics.feed_dropped.labels("slow").inc()
            self.close()
            return
        written.add_done_callback(lambda _: self._taken(size))
        if not self.watched:
            self._watch(written)

    def _taken(self, size: int) -> None:
        self.unsent -= size

    def _watch(self, written: Any) -> None:
        """One deadline at a time: the client must take something of what waits within it."""
        self.watched = True
        written.add_done_callback(self._rewatch)
        self.gate.stalls.watch(written, self.conn, "a live feed")

    def _rewatch(self, _: Any) -> None:
        self.watched = False
        if self.unsent > 0 and self.last is not None and not self.last.done() and not self.gone:
            self._watch(self.last)

    def close(self) -> None:
        """Cut it off (too slow, or the relay is leaving)."""
        self.ended()
        self.conn.close()

    def ended(self) -> None:
        if not self.gone:
            self.gone = True
            self.gate.feed.leave(self.pits_id, self)


class FeedGate:
    """Which requests are feed subscriptions; admits them within the limits and starts them."""

    def __init__(
        self,
        *,
        feed: Feed,
        relay_path: Callable[[str, str | None], tuple[str, str] | None],
        clients: Clients,
        client_limits: SharedLimiter,
        stalls: Stalls,
        metrics: Metrics,
        drain: Drain,
        server: str,
        admin_host: str | None = None,
        hosts: HostRouting | None = None,
        pits_moved: bool = False,
        load: Callable[[str], Awaitable[None]] | None = None,
    ):
        self.feed = feed
        self.relay_path = relay_path
        self.clients = clients
        self.client_limits = client_limits
        self.stalls = stalls
        self.metrics = metrics
        self.drain = drain
        self.admin_host = admin_host
        self.hosts = hosts
        self.pits_moved = pits_moved
        self.load = load
        self._starting: set[asyncio.Task[None]] = set()
        self._ok = (
            "HTTP/1.1 200 OK\r\n"
            f"Server: {server}\r\n"
            "Content-Type: text/event-stream; charset=utf-8\r\n"
            "Cache-Control: no-store\r\n"
            "X-Accel-Buffering: no\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Access-Control-Allow-Origin: *\r\n"
        )

    def match(
        self, method: str, uri: str, version: str, headers: Mapping[str, str], remote_ip: str
    ) -> FeedRequest | None:
        """A subscription to answer here, or None (the application answers the request)."""
        if method != "GET" or FEED_PATH not in uri:
            return None  # the cheap test first: this is on the way of every request
        raw_path, _, query = uri.partition("?")
        if not raw_path.endswith(FEED_PATH):
            return None
        if any(name in headers for name in BODY_HEADERS):
            return None
        host = headers.get("Host")
        if self.admin_host is not None and host_name(host) == self.admin_host:
            return None
        if self.pits_moved and self.hosts is not None and self.hosts.is_relay_host(host):
            return None  # sent on to the pits' own host, by the application
        try:
            found = self.relay_path(normalize_path(raw_path), host)
        except ProtocolError:
            return None
        if found is None or found[1] != FEED_PATH:
            return None
        last_id = headers.get("Last-Event-ID")
        if last_id is None and query:
            values = tornado.httputil.parse_qs_bytes(query).get("lastEventId")
            last_id = values[0].decode("utf-8", "replace") if values else None
        if last_id is not None and len(last_id) > MAX_LAST_ID:
            last_id = None
        client = self.clients.key(remote_ip, headers.get("X-Forwarded-For"))
        return FeedRequest(found[0], client, last_id, version == "HTTP/1.1")

    def begin(self, request: FeedRequest, conn: Any) -> None:
        """The request was read: admit it and start writing (in the background)."""
        task = asyncio.ensure_future(self._start(request, conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self, request: FeedRequest, conn: Any) -> None:
        if self.drain.draining:
            self._refuse(conn, "draining", ErrorCode.UNAVAILABLE, "relay restarting", 503)
            return
        wait = await self.client_limits.wait(request.client)
        if wait:
            self.metrics.rate_limited.labels("client").inc()
            self._refuse(
                conn, "rate", ErrorCode.BUSY, "too many requests from this address", 429, wait
            )
            return
        if self.load is not None:
            await self.load(request.pits_id)
        limit = self.feed.refusal(request.client)
        if limit == "process":
            self._refuse(conn, limit, ErrorCode.BUSY, "this relay holds all the feeds it can", 503)
            return
        if limit == "client":
            self._refuse(conn, limit, ErrorCode.BUSY, "too many feeds open from this address", 429)
            return
        if conn.stream is None or conn.stream.closed():
            return
        sub = Subscriber(self, request, conn)
        first = self.feed.join(request.pits_id, sub, request.last_id)
        conn.set_close_callback(sub.ended)
        framing = "Transfer-Encoding: chunked\r\n" if request.chunked else "Connection: close\r\n"
        head = (self._ok + framing + "\r\n").encode("latin-1")
        sub.send(head, head)
        sub.send(first, b"%x\r\n%s\r\n" % (len(first), first))
        if conn.stream.closed():
            sub.ended()
        log.debug(
            "feed subscriber", extra={"pits_id": request.pits_id, "subscribers": self.feed.count}
        )

    def _refuse(
        self,
        conn: Any,
        limit: str,
        code: ErrorCode,
        message: str,
        status: int | None = None,
        retry_after: float = RETRY_AFTER_S,
    ) -> None:
        """A JSON error as every other answer of the relay has it; the connection stays usable."""
        self.metrics.feed_refused.labels(limit).inc()
        self.metrics.errors.labels(str(code)).inc()
        status = status or HTTP_STATUS[code]
        body = ujson.dumps({"error": {"code": str(code), "message": message}}).encode()
        head = (
            f"HTTP/1.1 {status} {responses.get(status, 'Error')}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            "Cache-Control: no-store\r\n"
            "Access-Control-Allow-Origin: *\r\n"
            f"Retry-After: {max(1, min(3600, math.ceil(retry_after)))}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        if conn.stream is None or conn.stream.closed():
            return
        self.stalls.watch(conn.write(head + body), conn, "a feed refusal")
        conn.finish()
