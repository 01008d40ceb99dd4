"""The frames going up the live link, and how many of their bytes are not sent yet.

Everything the box says to the relay (replies to fetches, update reports, which FPVTrackside,
and the pushes of the live feed) goes through here, written at once. Tornado's WebSocket buffers
whatever the uplink cannot take yet without a bound, so the bytes written and not yet handed
to the kernel are counted (`unsent`): a pushed `change` is held back while they pass
`max_backlog` (a slow venue uplink), and the watcher pushes that file's newest body at a
later read instead. Replies to fetches are never held: the relay waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import tornado.websocket

from wire import messages as m
from wire.push import FEATURE_PUSH, Change, PushMessage
from wire.session import Session

MAX_BACKLOG = 512 * 1024  # bytes written to the link and not yet sent, past which changes wait


class Outbox:
    """The current link's WebSocket and session, while there is one."""

    def __init__(self, *, max_backlog: int = MAX_BACKLOG, push: bool = True):
        self.max_backlog = max_backlog
        self.may_push = push  # the box's own setting (--no-push turns it off)
        self.ws: tornado.websocket.WebSocketClientConnection | None = None
        self.session: Session | None = None
        self.unsent = 0
        self.held = 0  # changes held back for the backlog, over the agent's life

    def open(self, ws: tornado.websocket.WebSocketClientConnection, session: Session) -> None:
        self.ws, self.session, self.unsent = ws, session, 0

    def close(self) -> None:
        self.ws, self.session, self.unsent = None, None, 0

    @property
    def up(self) -> bool:
        """The handshake is done and the link is there."""
        return self.ws is not None and self.session is not None and self.session.state == "open"

    def relay_takes(self, feature: str) -> bool:
        """Whether the relay's hello names `feature`."""
        hello = self.session.peer_hello if self.session is not None else None
        return isinstance(hello, m.CloudHello) and feature in hello.features

    @property
    def pushing(self) -> bool:
        """Push frames may go: both hellos name `push`, and the link is up."""
        return self.may_push and self.up and self.relay_takes(FEATURE_PUSH)

    def send(self, message: m.Message, frame_id: str | None = None) -> bool:
        """Send a frame now if the link is up; False if it is not."""
        session = self.session
        if self.ws is None or session is None:
            return False
        session.send(message, frame_id)
        self.flush()
        return True

    def push(self, message: PushMessage) -> bool:
        """Send a push frame if the relay takes them; a `change` waits while the backlog is
        over its bound. False when it did not go."""
        if not self.pushing:
            return False
        if isinstance(message, Change) and self.unsent > self.max_backlog:
            self.held += 1
            return False
        return self.send(message)

    def flush(self) -> None:
        """Write what the session has queued."""
        ws, session = self.ws, self.session
        if ws is None or session is None:
            return
        for text in session.data_to_send():
            try:
                written = ws.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                continue
            self.unsent += len(text)
            written.add_done_callback(functools.partial(self._written, len(text), ws))

    def _written(self, size: int, ws: object, done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            with contextlib.suppress(Exception):
                done.result()  # a link closed under a frame: nothing to do but not to leak it
        if ws is self.ws:
            self.unsent = max(0, self.unsent - size)
