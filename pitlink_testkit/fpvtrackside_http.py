"""The HTTP/1.1 client of FPVTrackside's ExtensionMode, as .NET's HttpClient behaves.

PUTs to one URL over connections kept between requests: a connection is kept when the answer
allows it (HTTP/1.1, no ``Connection: close``, a delimited body read whole), recycled once idle
``idle_timeout`` or open ``lifetime`` seconds, and a request whose kept connection turns out
closed before any answer is sent again on a new one (as .NET does). Tornado's own HTTP/1.1 code
(``TCPClient``, ``HTTP1Connection`` per request on a kept ``IOStream``); tornado's simple
client opens a connection per request. The caller bounds the time (FPVTrackside's 1.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import urllib.parse
from collections.abc import Awaitable

from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body, which the sender reads and ignores
CONTENT_TYPE = "application/json; charset=utf-8"


class Failed(Exception):
    """A PUT got no answer: the connection refused, closed or cut short, or a malformed answer."""


class _Unanswered(Exception):
    """The connection closed before any answer."""


class _Answer(HTTPMessageDelegate):
    """Reads an answer's status and headers; the body is read and thrown away, up to a bound."""

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.start_line: ResponseStartLine | None = None
        self.headers = HTTPHeaders()
        self.size = 0
        self.whole = False

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, ResponseStartLine)
        self.start_line, self.headers = start_line, headers
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.size += len(chunk)
        if self.size > MAX_ANSWER_BYTES:
            self.stream.close()
        return None

    def finish(self) -> None:
        self.whole = True

    def on_connection_close(self) -> None:
        pass

    def reusable(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        line = self.start_line
        if line is None or not self.whole or line.version != "HTTP/1.1":
            return False
        tokens = {
            t.strip().lower() for v in self.headers.get_list("Connection") for t in v.split(",")
        }
        if "close" in tokens:
            return False
        if 100 <= line.code < 200 or line.code in (204, 304):
            return True
        return "Content-Length" in self.headers or "chunked" in self.headers.get(
            "Transfer-Encoding", ""
        )


@dataclasses.dataclass
class _Kept:
    stream: IOStream
    opened: float
    idle_since: float


class Connections:
    """HTTP/1.1 connections to the Extension, kept between requests (.NET's connection pool)."""

    def __init__(self, url: str, *, idle_timeout: float, lifetime: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the notification URL must be http://host[:port]/path, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc.rpartition("@")[2]
        self.idle_timeout, self.lifetime = idle_timeout, lifetime
        self._tcp = TCPClient()
        self._idle: list[_Kept] = []
        self._busy: set[IOStream] = set()
        self.opened = 0  # connections made so far

    async def put(self, body: bytes) -> int:
        """PUT ``body``; the answer's status. Failed without one (the caller's timeout aside)."""
        kept = self._take()
        if kept is not None:
            with contextlib.suppress(_Unanswered):  # closed while idle: .NET sends it again
                return await self._exchange(kept, body)
        fresh = await self._connect()
        try:
            return await self._exchange(fresh, body)
        except _Unanswered:
            raise Failed("connection closed without an answer") from None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().stream.close()
        for stream in list(self._busy):
            stream.close()
        self._tcp.close()

    def _take(self) -> _Kept | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            kept = self._idle.pop()
            fresh = now - kept.idle_since < self.idle_timeout
            young = now - kept.opened < self.lifetime
            if fresh and young and _still_open(kept.stream):
                return kept
            kept.stream.close()
        return None

    async def _connect(self) -> _Kept:
        connecting = asyncio.ensure_future(self._tcp.connect(self.host, self.port))
        try:
            # Shielded, so that a connection made just as the caller gives up is closed, not lost.
            stream = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.cancel()  # tornado closes the sockets of attempts under way
            connecting.add_done_callback(_close_made)
            raise
        except (StreamClosedError, OSError) as exc:
            error = getattr(exc, "real_error", None) or exc
            raise Failed(f"cannot connect: {type(error).__name__}") from None
        self.opened += 1
        now = asyncio.get_running_loop().time()
        return _Kept(stream, now, now)

    async def _exchange(self, kept: _Kept, body: bytes) -> int:
        stream = kept.stream
        self._busy.add(stream)
        answer = _Answer(stream)
        keep = False
        try:
            connection = HTTP1Connection(stream, True, HTTP1ConnectionParameters())
            headers = HTTPHeaders(
                {
                    "Host": self.host_header,
                    "Content-Type": CONTENT_TYPE,
                    "Content-Length": str(len(body)),
                }
            )
            try:
                connection.write_headers(
                    RequestStartLine("PUT", self.target, "HTTP/1.1"), headers, body
                )
                connection.finish()
                still_open = await connection.read_response(answer)
            except StreamClosedError:
                if answer.start_line is None:
                    raise _Unanswered from None
                raise Failed("answer cut short") from None
            except (OSError, ValueError) as exc:  # a malformed answer
                raise Failed(f"bad answer: {type(exc).__name__}") from None
            if answer.start_line is None or not answer.whole:
                raise Failed("answer cut short")
            keep = still_open and not stream.closed() and answer.reusable()
            return answer.start_line.code
        finally:
            self._busy.discard(stream)
            if keep:
                kept.idle_since = asyncio.get_running_loop().time()
                self._idle.append(kept)
            else:
                stream.close()


def _close_made(connecting: asyncio.Future[IOStream]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


def _still_open(stream: IOStream) -> bool:
    """An idle connection the receiver has not closed (one non-blocking peek)."""
    if stream.closed() or stream.socket is None:
        return False
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
