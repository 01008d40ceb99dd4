"""A relay's control WebSocket the test plays: it says hello with the features it is given,
answers pings, keeps every frame the box sends, and sends what the test says.

For the box's push frames while the real relay learns them, and for what no real
relay would send.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from wire import PROTOCOL_VERSION
from wire import messages as m
from wire.push import FEATURE_PUSH

NEW_RELAY = (m.FEATURE_FPVTRACKSIDE, FEATURE_PUSH)


class RelayEnd(tornado.websocket.WebSocketHandler):
    """One box's connection to the double."""

    def initialize(self, double: RelayDouble) -> None:
        self.double = double

    def open(self, *args: str) -> None:
        self.double.links.append(self)
        hello = m.CloudHello(
            protocol_version=PROTOCOL_VERSION, server_time_ms=0, features=self.double.features
        )
        self.write_message(m.encode(hello, now_ms=0))

    def on_message(self, message: str | bytes) -> None:
        frame = m.decode(message, sender="pits")
        self.double.frames.append(frame)
        if isinstance(frame.message, m.Ping):
            self.write_message(m.encode(m.Pong(), frame_id=frame.id, now_ms=0))

    def send(self, message: m.Message, frame_id: str | None = None) -> None:
        self.write_message(m.encode(message, frame_id=frame_id, now_ms=0))


class RelayDouble:
    """The double's server and what it saw."""

    def __init__(self, features: tuple[str, ...] = NEW_RELAY):
        self.features = features
        self.frames: list[m.Frame] = []
        self.links: list[RelayEnd] = []
        self.port = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    def start(self) -> int:
        app = tornado.web.Application([(r"/control", RelayEnd, {"double": self})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None

    def of(self, kind: type) -> list[Any]:
        """Every message of this type the box sent, in order."""
        return [f.message for f in self.frames if isinstance(f.message, kind)]

    def last(self, kind: type) -> Any:
        got = self.of(kind)
        return got[-1] if got else None

    def send(self, message: m.Message) -> None:
        """To the box on its newest link."""
        self.links[-1].send(message)


@contextlib.asynccontextmanager
async def box_and_double(
    tmp_path: Path,
    sim: Simulator,
    features: tuple[str, ...] = NEW_RELAY,
    **settings: Any,
) -> AsyncIterator[tuple[Agent, RelayDouble, System]]:
    """An agent connected to a relay double with `features`, against `sim`."""
    double = RelayDouble(features)
    s = System(tmp_path, sim)
    s.relay_port = double.start()
    agent = await s.start_agent(wait=False, **settings)
    try:
        await wait_for(lambda: agent.state.ws_connected, what="the box to connect")
        yield agent, double, s
    finally:
        await s.close()
        await double.stop()


def newest(double: RelayDouble, kind: type, test: Callable[[Any], bool]) -> Any:
    """The newest message of `kind` that passes `test`, or None."""
    for message in reversed(double.of(kind)):
        if test(message):
            return message
    return None
