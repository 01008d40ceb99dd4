"""Requests to FPVTrackside over connections kept open, bounded in time, size and concurrency.

FPVTrackside answers one request at a time, so the agent never sends it more than
`concurrency` at once, over at most that many connections, and it reads at most
`max_body_bytes` of any body. The requests go through libcurl (tornado's curl client over
pycurl): tornado's own client opens a new connection for every request, curl keeps them open
and opens a fresh one when FPVTrackside has closed an idle one or restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import pycurl
import tornado.httpclient
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError

from pits_appliance.httpclient import HTTPClient
from wire import ErrorCode, ProtocolError
from wire.budget import Throttle
from wire.paths import encode_path

log = logging.getLogger("pitlink.pits.origin")

# curl's failures of the connection itself, before FPVTrackside said anything: worth one retry.
# (curl already sends a request again, once, on a fresh connection when a kept one turns out
# to be dead; these are what a fresh connection fails with.)
_CONNECT_FAILED = {
    pycurl.E_COULDNT_CONNECT: "connection refused",
    pycurl.E_GOT_NOTHING: "connection closed without an answer",
    pycurl.E_SEND_ERROR: "connection reset while sending",
    pycurl.E_RECV_ERROR: "connection reset",
}
# curl stopped reading: Content-Length over MAXFILESIZE, or the body over the client's
# max_body_size (tornado's write callback refuses the chunk).
_TOO_LARGE = {pycurl.E_FILESIZE_EXCEEDED, pycurl.E_WRITE_ERROR}


@dataclass(frozen=True)
class OriginReply:
    """What FPVTrackside answered."""

    status: int
    content_type: str | None
    body: bytes


class _ConnectFailed(Exception):
    """The connection failed before any answer: the caller tries once more."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class _KeptAliveClient(CurlAsyncHTTPClient):
    """Tornado's curl client, keeping no more idle connections than it runs requests at once."""

    def initialize(  # type: ignore[override]
        self, max_clients: int = 2, **settings: Any
    ) -> None:
        super().initialize(max_clients=max_clients, **settings)
        # One easy handle per request at once already bounds the connections in use; these
        # bound the idle ones kept, and every connection at all, to the same number.
        self._multi.setopt(pycurl.M_MAXCONNECTS, max_clients)
        self._multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, max_clients)

    def close(self) -> None:
        super().close()
        # Closing, curl may have asked for a timer or changed its sockets: leave nothing of
        # this client in the loop (a timer would find no curl; a descriptor number reused
        # later must not reach a handler of this client).
        if self._timeout is not None:
            self.io_loop.remove_timeout(self._timeout)
            self._timeout = None
        for fd in list(self._fds):
            self.io_loop.remove_handler(fd)
        self._fds.clear()


class Origin:
    """FPVTrackside's web server, seen from the agent."""

    def __init__(
        self,
        base_url: str,
        *,
        max_body_bytes: int = 8 * 1024 * 1024,
        concurrency: int = 2,
        connect_timeout: float = 3.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_body_bytes = max_body_bytes
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._log = Throttle(1.0)
        self._client = HTTPClient(
            _KeptAliveClient,
            # The semaphore lets `concurrency` requests through: one curl handle (and one
            # connection) each.
            max_clients=max(concurrency, 1),
            # The body is counted as it is decompressed, and the read stopped past the cap.
            max_body_size=max_body_bytes,
        )

    async def get(self, path: str, timeout: float) -> OriginReply:
        """GET one normalized path; raises ProtocolError with the protocol's codes."""
        deadline = time.monotonic() + timeout
        async with self._slots:
            for attempt in (1, 2):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await self._get_once(path, remaining)
                except _ConnectFailed as exc:
                    error = f"{exc.reason}: {exc}"[:200]
                    if attempt == 2:
                        self._warn("FPVTrackside failed again after a retry", path, error)
                        raise ProtocolError(
                            ErrorCode.ORIGIN_UNREACHABLE,
                            f"FPVTrackside at {self.base_url} is not answering ({exc.reason})",
                        ) from None
                    self._warn("FPVTrackside connection failed, retrying once", path, error)
                except ProtocolError as exc:
                    self._warn("FPVTrackside request failed", path, exc.message)
                    raise
        raise ProtocolError(ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s")

    def _warn(self, event: str, path: str, error: str) -> None:
        """At most one line a second of each kind, with the count of those held back: with
        FPVTrackside down, every fetch from the relay fails the same way."""
        held = self._log.allow(event, time.monotonic())
        if held is not None:
            log.warning(
                event,
                extra={
                    "url": self.base_url,
                    "path": path[:200],
                    "error": error,
                    "suppressed": held,
                },
            )

    def _prepare(self, curl: pycurl.Curl) -> None:
        # A Content-Length over the cap ends the request before any of the body is read.
        curl.setopt(pycurl.MAXFILESIZE_LARGE, self.max_body_bytes)
        # No signals from libcurl inside the agent's process (tornado sets this only when
        # Python has threads running).
        curl.setopt(pycurl.NOSIGNAL, 1)

    async def _get_once(self, path: str, timeout: float) -> OriginReply:
        heard: list[str] = []  # header lines: once there is one, a cut is no connect failure
        request = tornado.httpclient.HTTPRequest(
            self.base_url + encode_path(path),
            method="GET",
            connect_timeout=min(self.connect_timeout, timeout),
            request_timeout=timeout,
            follow_redirects=False,
            decompress_response=True,
            user_agent="pitlink-agent",
            headers={"Accept": "*/*", "Cache-Control": "no-cache"},
            header_callback=heard.append,
            prepare_curl_callback=self._prepare,
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except CurlError as exc:
            if exc.errno in _TOO_LARGE:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"FPVTrackside sent more than the {self.max_body_bytes} byte cap for {path}",
                ) from None
            if exc.errno == pycurl.E_OPERATION_TIMEDOUT:
                raise ProtocolError(
                    ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s"
                ) from None
            reason = _CONNECT_FAILED.get(exc.errno)
            if reason is not None and not heard:
                raise _ConnectFailed(reason, exc.message or "") from None  # retried once
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE,
                f"FPVTrackside at {self.base_url} failed: {exc.message}",
            ) from None
        except (tornado.httpclient.HTTPClientError, OSError, ValueError) as exc:
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE,
                f"FPVTrackside at {self.base_url} failed: {type(exc).__name__}: {exc}",
            ) from None
        return OriginReply(
            status=response.code,
            content_type=response.headers.get("Content-Type"),
            body=response.body or b"",
        )

    async def close(self) -> None:
        """Close the client and its connections, once the requests still running (a
        cancelled one too) end."""
        await self._client.close()
