"""A small keep-alive HTTP/1.1 client on asyncio streams, and spectators built on it.

Thousands of spectators in one process on a 2-core machine: Tornado's client opens a new
connection per request and costs more CPU than the relay it measures, so spectators here keep
one connection each, as browsers do, and parse only what they need (status, Content-Length).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class HTTPConnection:
    """One keep-alive connection; reopened once when the server closed it between requests."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, int]:
        """(status, headers in lower case, body, bytes received including the head)."""
        for attempt in (1, 2):
            if self._writer is None:
                await self.connect()
            try:
                return await asyncio.wait_for(self._get(path), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> tuple[int, dict[str, str], bytes, int]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ConnectionError("chunked bodies are not supported by this small client")
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), headers, body, len(head) + len(body)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class SpectatorStats:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    late: int = 0  # polls that could not start on time (the client fell behind)
    bytes_received: int = 0
    body_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


async def open_connections(host: str, port: int, count: int) -> list[HTTPConnection]:
    """`count` connections, at most 100 handshakes at once (the listen backlog is 128)."""
    gate = asyncio.Semaphore(100)

    async def one() -> HTTPConnection:
        conn = HTTPConnection(host, port)
        async with gate:
            await conn.connect()
        return conn

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def spectate(
    conns: list[HTTPConnection],
    paths: Callable[[], list[str]],
    seconds: float,
    interval: float = 1.0,
    sample_latency: int = 1,
) -> SpectatorStats:
    """Each connection polls `paths()` once every `interval`, starts spread over the first one.

    `paths` is asked at each poll (the current race moves on). One latency in `sample_latency`
    is kept, to keep memory and time flat with thousands of spectators.
    """
    stats = SpectatorStats()
    loop = asyncio.get_running_loop()
    start = loop.time()
    until = start + seconds

    async def one(index: int, conn: HTTPConnection) -> None:
        due = start + interval * index / len(conns)
        while due < until:
            await asyncio.sleep(max(0.0, due - loop.time()))
            for path in paths():
                began = time.perf_counter()
                stats.requests += 1
                try:
                    status, _, body, received = await conn.get(path)
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    stats.errors += 1
                    continue
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                stats.bytes_received += received
                stats.body_bytes += len(body)
                if status == 200:
                    stats.ok += 1
                if stats.requests % sample_latency == 0:
                    stats.latencies_ms.append((time.perf_counter() - began) * 1000)
            due += interval
            if loop.time() > due:
                stats.late += 1
                due = loop.time()

    try:
        await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
    return stats
