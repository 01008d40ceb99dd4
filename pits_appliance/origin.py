"""Requests to FPVTrackside: a fresh GET every time, bounded in time, size and concurrency.

FPVTrackside answers one request at a time, so the agent never sends it more than
`concurrency` at once, and it reads at most `max_body_bytes` of any body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import tornado.httpclient
import tornado.iostream
from tornado.httputil import HTTPInputError
from tornado.simple_httpclient import HTTPTimeoutError

from wire import ErrorCode, ProtocolError
from wire.paths import encode_path

log = logging.getLogger("pitlink.pits.origin")

# Failures of the connection itself, before FPVTrackside said anything: worth one retry.
_CONNECT_ERRORS = (ConnectionRefusedError, ConnectionResetError, tornado.iostream.StreamClosedError)


@dataclass(frozen=True)
class OriginReply:
    """What FPVTrackside answered."""

    status: int
    content_type: str | None
    body: bytes


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
        self._client = tornado.httpclient.AsyncHTTPClient(
            force_instance=True,
            max_clients=max(concurrency, 1) * 4,
            max_body_size=max_body_bytes,
            max_buffer_size=max_body_bytes,
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
                    if attempt == 2:
                        raise ProtocolError(
                            ErrorCode.ORIGIN_UNREACHABLE,
                            f"FPVTrackside at {self.base_url} is not answering ({type(exc).__name__})",
                        ) from None
                    log.info("origin connection failed, retrying once", extra={"path": path})
        raise ProtocolError(ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s")

    async def _get_once(self, path: str, timeout: float) -> OriginReply:
        request = tornado.httpclient.HTTPRequest(
            self.base_url + encode_path(path),
            method="GET",
            connect_timeout=min(self.connect_timeout, timeout),
            request_timeout=timeout,
            follow_redirects=False,
            decompress_response=True,
            headers={"Accept": "*/*", "Cache-Control": "no-cache"},
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except HTTPInputError as exc:
            raise self._too_large(exc) from None
        except tornado.httpclient.HTTPClientError as exc:  # timeouts arrive as code 599
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s: {exc}"
            ) from None
        except OSError as exc:
            if isinstance(exc, _CONNECT_ERRORS):
                raise
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE,
                f"FPVTrackside at {self.base_url} is unreachable: {exc}",
            ) from None
        if response.code == 599:
            error = response.error
            if isinstance(error, _CONNECT_ERRORS):
                raise error
            if isinstance(error, HTTPInputError):
                raise self._too_large(error)
            if isinstance(error, HTTPTimeoutError):
                raise ProtocolError(
                    ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s"
                )
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE, f"FPVTrackside at {self.base_url} failed: {error}"
            )
        return OriginReply(
            status=response.code,
            content_type=response.headers.get("Content-Type"),
            body=response.body or b"",
        )

    def _too_large(self, exc: Exception) -> ProtocolError:
        return ProtocolError(
            ErrorCode.TOO_LARGE, f"body over the {self.max_body_bytes} byte cap ({exc})"
        )

    def close(self) -> None:
        self._client.close()
