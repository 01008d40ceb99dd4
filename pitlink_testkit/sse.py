"""A live feed subscriber for tests: a raw connection that reads Server-Sent Events as a browser's
EventSource does (fields `id`, `event`, `data`, comments, chunked or not), and remembers every
event and comment it read.

Raw on purpose: the tests check the bytes the relay writes (its headers, its framing), and
some play subscribers no browser would be (one that reads nothing, one that cuts and resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from pitlink_testkit.waiting import wait_for


@dataclass(frozen=True)
class Event:
    kind: str
    data: Any  # the JSON of its `data:` line
    id: str | None


@dataclass
class Subscriber:
    """One connection to `<pits base>/pitlink/live`."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    body: bytes = b""  # the body as written (chunk framing removed)
    ended: bool = False
    _task: asyncio.Task[None] | None = None
    _last_id: str | None = None

    @property
    def last_id(self) -> str | None:
        return self._last_id

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    async def wait(self, what: str, predicate: Any, timeout: float = 10.0) -> Any:
        return await wait_for(lambda: predicate(self), timeout=timeout, what=what)

    async def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> Event:
        await wait_for(
            lambda: len(self.of(kind)) >= count or self.ended,
            timeout=timeout,
            what=f"{count} {kind} event(s)",
        )
        assert len(self.of(kind)) >= count, f"the feed ended before {count} {kind} event(s)"
        return self.of(kind)[count - 1]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _read(self) -> None:
        try:
            if self.headers.get("transfer-encoding") == "chunked":
                await self._chunks()
            else:
                while chunk := await self.reader.read(65536):
                    self._feed(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended = True

    async def _chunks(self) -> None:
        while True:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            data = await self.reader.readexactly(size)
            await self.reader.readexactly(2)
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        self.body += data
        while b"\n\n" in self.body[self._parsed :]:
            end = self.body.index(b"\n\n", self._parsed)
            self._block(self.body[self._parsed : end].decode())
            self._parsed = end + 2

    _parsed: int = 0

    def _block(self, block: str) -> None:
        kind, data, event_id = "message", [], None
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                self.comments.append(value)
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "retry":
                self.retry = int(value)
        if event_id is not None:
            self._last_id = event_id
        if data:
            self.events.append(Event(kind, json.loads("\n".join(data)), event_id))


async def subscribe(
    port: int,
    path: str,
    *,
    host: str = "127.0.0.1",
    last_id: str | None = None,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> Subscriber:
    """Open a feed and read its status line and headers; its events are read in the background."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    lines = [f"GET {path} {version}", f"Host: {host}", "Accept: text/event-stream"]
    if last_id is not None:
        lines.append(f"Last-Event-ID: {last_id}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    sub = Subscriber(reader, writer)
    status = await asyncio.wait_for(reader.readline(), 10)
    sub.status = int(status.split()[1])
    while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        sub.headers[name.strip().lower()] = value.strip()
    if sub.status != 200:
        length = int(sub.headers.get("content-length", "0"))
        sub.body = await reader.readexactly(length)
        sub.ended = True
        await sub.close()  # a refusal: nothing more to read
        return sub
    sub._task = asyncio.ensure_future(sub._read())
    return sub
