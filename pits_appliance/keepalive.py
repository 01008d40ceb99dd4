"""GETs to one HTTP/1.1 server over a few connections kept open between requests.

The agent's requests to FPVTrackside go through this: tornado's own HTTP/1.1 code
(`TCPClient` to connect, `HTTP1Connection` per request on a kept `IOStream`), with the
bookkeeping tornado's simple client lacks (it opens a new connection for every request). No
native library and no HTTP parsing of our own. A connection is kept only when its answer says
it may be (HTTP/1.1, no `Connection: close`, a body delimited by its length or chunks, read
whole), at most `size` of them idle, and dropped when found closed.

What `ConnectionPool.get` raises (`PoolError` and below):

    PoolError       anything else: a malformed answer, one cut short, the pool closed
    ├── ConnectFailed   a fresh connection refused, or closed or reset before any answer
    ├── TooLarge        the body (or its Content-Length) over the cap
    └── Timeout         the deadline (or the connect timeout) passed
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tornado.netutil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httputil import (
    HTTPHeaders,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

USER_AGENT = "pitlink-agent"
HEADER_LIMIT = 64 * 1024  # bytes of a response's status line and headers
# A connection idle this long is closed rather than reused: http.sys closes idle ones after
# 2 minutes, and a request sent just as it does would have to be sent again.
IDLE_LIMIT_S = 100.0


class PoolError(Exception):
    """A GET through the pool failed (see the module's docstring for the tree)."""


class ConnectFailed(PoolError):
    """A fresh connection failed before any answer: worth one more try."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class TooLarge(PoolError):
    """The body, or the Content-Length announcing it, passed the cap."""


class Timeout(PoolError):
    """The deadline passed before the answer was read whole."""


class _NoAnswer(Exception):
    """The connection was closed or reset before any answer (the caller decides what that is)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    """A response read whole."""

    status: int
    headers: HTTPHeaders
    body: bytes


class LiteralResolver(tornado.netutil.DefaultLoopResolver):
    """Answers an IP address given as the host at once; looks up names as tornado does.

    The origin is almost always given as an address (`http://192.168.1.20:8080`). Tornado's
    resolver sends even an address to getaddrinfo on a worker thread, which costs every connect
    a thread hop and keeps worker threads (each with its own malloc arena) alive in a small box.
    """

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            address = ipaddress.ip_address(host)  # urlsplit has taken off any [ ]
        except ValueError:
            return await super().resolve(host, port, family)
        if address.version == 6 and family in (socket.AF_UNSPEC, socket.AF_INET6):
            return [(socket.AF_INET6, (str(address), port, 0, 0))]
        if address.version == 4 and family in (socket.AF_UNSPEC, socket.AF_INET):
            return [(socket.AF_INET, (str(address), port))]
        raise OSError(f"{host} is not an address of family {family.name}")


def _has_body(code: int) -> bool:
    return not (100 <= code < 200 or code in (204, 304))


def reusable(start_line: ResponseStartLine, headers: HTTPHeaders) -> bool:
    """Whether the connection may carry another request after this answer (read whole)."""
    if start_line.version != "HTTP/1.1":
        return False
    tokens = {t.strip().lower() for v in headers.get_list("Connection") for t in v.split(",")}
    if "close" in tokens:
        return False
    if not _has_body(start_line.code):
        return True
    # Otherwise the body ran to the connection's close, and the connection is done.
    chunked = headers.get("Transfer-Encoding", "").lower() == "chunked"
    return chunked or "Content-Length" in headers


class _Reader(HTTPMessageDelegate):
    """Takes one response: its status and headers, and its body up to the cap.

    Past the cap it closes the stream, which ends the read at once (tornado's next read of the
    body fails): never more than the cap plus one read in memory, and nothing logged.
    """

    def __init__(self, stream: IOStream, cap: int):
        self.stream = stream
        self.cap = cap
        self.start_line: ResponseStartLine | None = None
        self.headers = HTTPHeaders()
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False
        self.finished = False

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, ResponseStartLine)
        self.start_line, self.headers = start_line, headers
        length = headers.get("Content-Length", "").strip()
        if _has_body(start_line.code) and length.isdigit() and int(length) > self.cap:
            self._stop()  # refused before any of the body is read
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.over:
            return None
        self.size += len(chunk)  # as decompressed: tornado's gzip delegate wraps this one
        if self.size > self.cap:
            self._stop()
        else:
            self.chunks.append(chunk)
        return None

    def _stop(self) -> None:
        self.over = True
        self.chunks.clear()
        self.stream.close()

    def finish(self) -> None:
        self.finished = not self.over

    def on_connection_close(self) -> None:
        pass


def _close_connected(connecting: asyncio.Future[IOStream]) -> None:
    """A connect given up on that still succeeded: close what it made."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


def _why(exc: StreamClosedError) -> str | None:
    """Why a stream closed, when that means no answer came (else None)."""
    error = exc.real_error
    if error is None:
        return "connection closed without an answer"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionError):
        return "connection reset"
    return None  # e.g. the status line and headers over their bound


class ConnectionPool:
    """Up to `size` kept connections to the server at `base_url`; GETs one target at a time each.

    The caller bounds the requests at once (the origin's semaphore) to `size`: then no more than
    `size` connections are ever open. Deadlines are `loop.time()` values.
    """

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        max_body_bytes: int,
        connect_timeout: float,
        resolver: tornado.netutil.Resolver | None = None,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// address: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._headers = {
            "Host": parts.netloc.rpartition("@")[2],
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "gzip",
            "Cache-Control": "no-cache",
        }
        self.size = max(size, 1)
        self.max_body_bytes = max_body_bytes
        self.connect_timeout = connect_timeout
        self._tcp = TCPClient(resolver=resolver or LiteralResolver())
        self._params = HTTP1ConnectionParameters(
            max_header_size=HEADER_LIMIT,
            # The cap is _Reader's to enforce, after decompression, so that going over it is
            # told apart from a malformed answer; this only keeps tornado's own checks out.
            max_body_size=1 << 62,
            decompress=True,
        )
        self._idle: deque[tuple[IOStream, float]] = deque()  # (stream, idle since), newest last
        self._busy: set[IOStream] = set()
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open now, idle or carrying a request."""
        return sum(1 for s, _ in self._idle if not s.closed()) + len(self._busy)

    async def get(self, target: str, deadline: float) -> Reply:
        """GET `target` (an encoded path) by `deadline`. A kept connection the server closed
        under the request, before any answer, is replaced and the request sent again at once."""
        if self._closed:
            raise PoolError("closed")
        kept = self._take()
        if kept is not None:
            try:
                return await self._exchange(kept, target, deadline)
            except _NoAnswer:
                pass  # closed while idle, or as the request went out: a GET may go again
        stream = await self._connect(deadline)
        try:
            return await self._exchange(stream, target, deadline)
        except _NoAnswer as exc:
            raise ConnectFailed(exc.reason) from None

    def close(self) -> None:
        """Close every connection, idle or busy (a request on one then fails at once)."""
        self._closed = True
        while self._idle:
            self._idle.pop()[0].close()
        for stream in list(self._busy):
            stream.close()
        self._tcp.close()

    def _take(self) -> IOStream | None:
        """The newest idle connection still open; the others found closed or too old go."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_LIMIT_S and _still_open(stream):
                return stream
            stream.close()
        return None

    def _keep(self, stream: IOStream) -> None:
        if self._closed or len(self._idle) >= self.size:
            stream.close()
        else:
            self._idle.append((stream, asyncio.get_running_loop().time()))

    async def _connect(self, deadline: float) -> IOStream:
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(
            self._tcp.connect(self._host, self._port, ssl_options=self._ssl)
        )
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout)):
                # Shielded, so that a connect finished just as the wait ends is still seen
                # (and closed) rather than dropped for the garbage collector.
                stream = await asyncio.shield(connecting)
        except BaseException as exc:
            connecting.cancel()  # tornado closes the sockets of attempts under way
            connecting.add_done_callback(_close_connected)
            if isinstance(exc, TimeoutError):
                raise Timeout("no connection in time") from None
            if isinstance(exc, StreamClosedError):
                why = _why(exc) or "connection failed"
                raise ConnectFailed(why, str(exc.real_error or "")) from None
            if isinstance(exc, ConnectionError):
                raise ConnectFailed("connection refused", str(exc)) from None
            if isinstance(exc, OSError):  # no such name, no route
                raise PoolError(f"cannot connect: {type(exc).__name__}: {exc}") from None
            raise
        if self._closed:
            stream.close()
            raise PoolError("closed")
        return stream

    async def _exchange(self, stream: IOStream, target: str, deadline: float) -> Reply:
        """One request and its response on `stream`; the stream is kept or closed after."""
        self._busy.add(stream)
        reader = _Reader(stream, self.max_body_bytes)
        keep = False
        try:
            connection = HTTP1Connection(stream, True, self._params)
            try:
                async with asyncio.timeout_at(deadline):
                    connection.write_headers(
                        RequestStartLine("GET", self._prefix + target, "HTTP/1.1"),
                        HTTPHeaders(self._headers),
                    )
                    connection.finish()
                    still_open = await connection.read_response(reader)
            except TimeoutError:
                raise Timeout("no answer in time") from None
            except StreamClosedError as exc:
                if reader.over:
                    raise TooLarge("body over the cap") from None
                why = _why(exc)
                if self._closed:
                    raise PoolError("closed") from None
                if reader.start_line is None and why is not None:
                    raise _NoAnswer(why) from None
                raise PoolError(f"answer cut short ({why or exc.real_error})") from None
            except (OSError, ValueError) as exc:  # what tornado did not turn into the above
                raise PoolError(f"{type(exc).__name__}: {exc}") from None
            if reader.over:
                raise TooLarge("body over the cap")
            if reader.start_line is None or not reader.finished:
                raise PoolError("malformed answer")
            keep = (
                still_open and not stream.closed() and reusable(reader.start_line, reader.headers)
            )
            return Reply(reader.start_line.code, reader.headers, b"".join(reader.chunks))
        finally:
            self._busy.discard(stream)
            if keep:
                self._keep(stream)
            else:
                stream.close()


def _still_open(stream: IOStream) -> bool:
    """Whether an idle connection is still open: the server has not closed it (nor sent bytes
    nobody asked for). One non-blocking peek; tornado notices a close only while reading."""
    if stream.closed() or stream.socket is None:
        return False
    if isinstance(stream.socket, ssl.SSLSocket):
        return True  # no peek through TLS: a closed one is found by sending on it
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
