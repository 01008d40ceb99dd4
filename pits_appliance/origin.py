"""Requests to FPVTrackside: a fresh GET every time, bounded in time, size and concurrency.

FPVTrackside answers one request at a time, so the agent never sends it more than
`concurrency` at once, and it reads at most `max_body_bytes` of any body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import tornado.httpclient
import tornado.iostream
import tornado.netutil
from tornado.httputil import HTTPInputError
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from pits_appliance.httpclient import HTTPClient
from wire import ErrorCode, ProtocolError
from wire.budget import Throttle
from wire.paths import encode_path

log = logging.getLogger("pitlink.pits.origin")

# Failures of the connection itself, before FPVTrackside said anything: worth one retry.
_CONNECT_ERRORS = (
    ConnectionRefusedError,
    ConnectionResetError,
    tornado.iostream.StreamClosedError,
    HTTPStreamClosedError,
)


@dataclass(frozen=True)
class OriginReply:
    """What FPVTrackside answered."""

    status: int
    content_type: str | None
    body: bytes


class _TooLarge(HTTPInputError):
    """Raised inside tornado's callbacks to stop reading; tornado closes the connection."""


class _SizeGuard:
    """Collects a body and stops the read as soon as it passes the cap: never more in memory."""

    def __init__(self, cap: int):
        self.cap = cap
        self.size = 0
        self.chunks: list[bytes] = []
        self.over = False
        self.started = False

    def on_header(self, line: str) -> None:
        self.started = True
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            if int(value) > self.cap:
                self.over = True
                raise _TooLarge("Content-Length over the cap")

    def on_chunk(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            self.over = True
            self.chunks.clear()
            raise _TooLarge("body over the cap")
        self.chunks.append(chunk)


class LiteralResolver(tornado.netutil.DefaultLoopResolver):
    """Answers an IP address given as the host at once; looks up names as tornado does.

    The origin is almost always given as an address (`http://192.168.1.20:8080`). Tornado's
    resolver sends even an address to getaddrinfo on a worker thread, which costs every fetch a
    thread hop and keeps worker threads (each with its own malloc arena) alive in a small box.
    """

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        try:
            address = ipaddress.ip_address(host)  # tornado has taken off any [ ]
        except ValueError:
            return await super().resolve(host, port, family)
        if address.version == 6 and family in (socket.AF_UNSPEC, socket.AF_INET6):
            return [(socket.AF_INET6, (str(address), port, 0, 0))]
        if address.version == 4 and family in (socket.AF_UNSPEC, socket.AF_INET):
            return [(socket.AF_INET, (str(address), port))]
        raise OSError(f"{host} is not an address of family {family.name}")


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
            resolver=LiteralResolver(),
            max_clients=max(concurrency, 1) * 4,
            # The cap is enforced by _SizeGuard as the body streams in, not by tornado,
            # so that going over it is told apart from a dropped connection.
            max_body_size=1 << 40,
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
                except _CONNECT_ERRORS as exc:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                    if attempt == 2:
                        self._warn("FPVTrackside failed again after a retry", path, error)
                        raise ProtocolError(
                            ErrorCode.ORIGIN_UNREACHABLE,
                            f"FPVTrackside at {self.base_url} is not answering ({type(exc).__name__})",
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

    async def _get_once(self, path: str, timeout: float) -> OriginReply:
        guard = _SizeGuard(self.max_body_bytes)
        request = tornado.httpclient.HTTPRequest(
            self.base_url + encode_path(path),
            method="GET",
            connect_timeout=min(self.connect_timeout, timeout),
            request_timeout=timeout,
            follow_redirects=False,
            decompress_response=True,
            headers={"Accept": "*/*", "Cache-Control": "no-cache"},
            header_callback=guard.on_header,
            streaming_callback=guard.on_chunk,
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except HTTPTimeoutError:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s"
            ) from None
        except (tornado.httpclient.HTTPClientError, OSError) as exc:
            if guard.over:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"FPVTrackside sent more than the {self.max_body_bytes} byte cap for {path}",
                ) from None
            if isinstance(exc, _CONNECT_ERRORS) and not guard.started:
                raise  # the caller retries this once
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE,
                f"FPVTrackside at {self.base_url} failed: {type(exc).__name__}: {exc}",
            ) from None
        return OriginReply(
            status=response.code,
            content_type=response.headers.get("Content-Type"),
            body=b"".join(guard.chunks),
        )

    async def close(self) -> None:
        """Close the client, once the requests still running (a cancelled one too) end."""
        await self._client.close()
