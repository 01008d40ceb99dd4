"""Requests to FPVTrackside over connections kept open, bounded in time, size and concurrency.

FPVTrackside answers one request at a time, so the agent never sends it more than
`concurrency` at once, over at most that many connections (pits_appliance.keepalive: tornado's
own HTTP/1.1 code, no native library), and it reads at most `max_body_bytes` of any body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pits_appliance.keepalive import ConnectFailed, ConnectionPool, PoolError, Timeout, TooLarge
from wire import ErrorCode, ProtocolError
from wire.budget import Throttle
from wire.paths import encode_path

log = logging.getLogger("pitlink.pits.origin")


@dataclass(frozen=True)
class OriginReply:
    """What FPVTrackside answered."""

    status: int
    content_type: str | None
    body: bytes
    server: str | None = None  # its Server header, as sent (pits_appliance.upstream cleans it)


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
        # The semaphore lets `concurrency` requests through: one kept connection each.
        self._pool = ConnectionPool(
            self.base_url,
            size=concurrency,
            max_body_bytes=max_body_bytes,
            connect_timeout=connect_timeout,
        )

    @property
    def connections(self) -> int:
        """Connections to FPVTrackside open now."""
        return self._pool.connections

    async def get(self, path: str, timeout: float) -> OriginReply:
        """GET one normalized path; raises ProtocolError with the protocol's codes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._slots:
            for attempt in (1, 2):
                if deadline - loop.time() <= 0:
                    break
                try:
                    return await self._get_once(path, timeout, deadline)
                except ConnectFailed as exc:
                    error = str(exc)[:200]
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

    async def _get_once(self, path: str, timeout: float, deadline: float) -> OriginReply:
        try:
            reply = await self._pool.get(encode_path(path), deadline)
        except TooLarge:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"FPVTrackside sent more than the {self.max_body_bytes} byte cap for {path}",
            ) from None
        except Timeout:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s"
            ) from None
        except ConnectFailed:
            raise  # the caller retries this once
        except PoolError as exc:
            raise ProtocolError(
                ErrorCode.ORIGIN_UNREACHABLE, f"FPVTrackside at {self.base_url} failed: {exc}"
            ) from None
        return OriginReply(
            status=reply.status,
            content_type=reply.headers.get("Content-Type"),
            body=reply.body,
            server=reply.headers.get("Server"),
        )

    async def close(self) -> None:
        """Close every connection to FPVTrackside; a request still on one fails at once."""
        self._pool.close()
