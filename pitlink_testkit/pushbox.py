"""A box as the tests play it, over a real WebSocket to a real relay: it says hello (naming
`push` or not), answers fetches from a dict of files, and sends push frames when told to.

For the relay's tests of what a box pushes (and what an older box does not), without the
agent: each test decides exactly which frame goes up when.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import tornado.websocket

from cloud.keys import KeySet
from pitlink_testkit.control import OPENED, open_control
from wire import ErrorCode
from wire import messages as m
from wire.canonical import prepare_body
from wire.push import FEATURE_PUSH, Change, FpvtEvent, Still, Watch, Watching


@dataclass
class Box:
    """One box: its WebSocket, the files it serves, and what the relay sent it."""

    ws: tornado.websocket.WebSocketClientConnection
    pits_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)  # paths the relay asked for
    watches: list[Watch] = field(default_factory=list)
    errors: list[m.Error] = field(default_factory=list)  # what the relay refused
    answering: bool = True  # False: fetches go unanswered (FPVTrackside gone quiet)
    closed: bool = False
    _task: asyncio.Task[None] | None = None

    async def send(self, message: m.Message) -> None:
        await self.ws.write_message(m.encode(message, now_ms=0))

    async def change(self, path: str, body: bytes) -> str:
        """Push a file's new body, as the box prepares it; its ETag."""
        data, etag = prepare_body(path, body)
        await self.send(Change(path=path, etag=etag, body=data))
        return etag

    async def still(self) -> None:
        await self.send(Still())

    async def watching(
        self, paths: list[str], interval_ms: int = 1000, race: str | None = None
    ) -> None:
        await self.send(Watching(paths=tuple(paths), interval_ms=interval_ms, race=race))

    async def event(self, event: dict[str, Any]) -> None:
        await self.send(FpvtEvent(event=event))

    async def _serve(self) -> None:
        while True:
            text = await self.ws.read_message()
            if text is None:
                self.closed = True
                return
            frame = m.decode(text, sender="cloud")
            msg = frame.message
            if isinstance(msg, m.Ping):
                await self.ws.write_message(m.encode(m.Pong(), frame_id=frame.id, now_ms=0))
            elif isinstance(msg, Watch):
                self.watches.append(msg)
            elif isinstance(msg, m.Error):
                self.errors.append(msg)
            elif isinstance(msg, m.Fetch):
                self.fetched.append(msg.path)
                if self.answering:
                    await self.ws.write_message(
                        m.encode(self._answer(msg), frame_id=frame.id, now_ms=0)
                    )

    def _answer(self, fetch: m.Fetch) -> m.Message:
        body = self.files.get(fetch.path)
        if body is None:
            return m.Error(code=ErrorCode.DENIED, message="no such file here")
        data, etag = prepare_body(fetch.path, body)
        if fetch.if_none_match == etag:
            return m.Response(status=304, etag=etag)
        return m.Response(status=200, etag=etag, body=data)

    async def close(self) -> None:
        """Close the WebSocket and wait until it is closed here too."""
        self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        if self in BOXES:
            BOXES.remove(self)


# Every box connect_box made and that is not closed yet; close_boxes closes them (a fixture
# calls it, so that none outlives its test).
BOXES: list[Box] = []


async def close_boxes() -> None:
    for box in list(BOXES):
        await box.close()


async def connect_box(
    relay_url: str,
    keys: KeySet,
    pits_id: str,
    *,
    push: bool = True,
    files: dict[str, bytes] | None = None,
) -> Box:
    """A box connected to the relay at `relay_url`, its handshake done (`push`: its hello names
    the feature; without it, it is a box from before push)."""
    ws = await open_control(relay_url, keys.issue(sub=pits_id, role="pits", ttl=600))
    first = await ws.read_message()
    assert first is not None, "the relay closed the connection before its hello"
    hello = m.decode(first, sender="cloud").message
    assert isinstance(hello, m.CloudHello)
    features = (FEATURE_PUSH,) if push else ()
    await ws.write_message(
        m.encode(
            m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version="test", features=features),
            now_ms=0,
        )
    )
    OPENED.remove(ws)  # read here, and closed by Box.close
    box = Box(ws, pits_id, dict(files or {}))
    box._task = asyncio.ensure_future(box._serve())
    BOXES.append(box)
    return box
