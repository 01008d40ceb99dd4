"""The agent's link against a relay the test plays itself: what it says and does after each end."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.connectivity import Verdict
from pits_appliance.dialing import closed_by_box, closed_by_relay
from wire import PROTOCOL_VERSION, CloseCode, ErrorCode
from wire import messages as m
from wire.session import GOING_AWAY, Closing

Script = Callable[["ScriptedRelay"], None]


class ScriptedRelay(tornado.websocket.WebSocketHandler):
    """A relay that does what the test's script says when a box connects, and keeps its frames."""

    script: Script
    opened: list[ScriptedRelay]

    def initialize(self, script: Script, opened: list[ScriptedRelay]) -> None:
        self.script = script
        self.opened = opened
        self.received: list[m.Frame] = []

    def open(self, *args: str) -> None:
        self.opened.append(self)
        self.script(self)

    def on_message(self, message: str | bytes) -> None:
        self.received.append(m.decode(message, sender="pits"))

    def hello(self, version: int = PROTOCOL_VERSION) -> None:
        self.write_message(
            json.dumps(
                {
                    "id": "h",
                    "type": "hello",
                    "ts": 0,
                    "payload": {"protocolVersion": version, "serverTimeMs": 0, "limits": {}},
                }
            )
        )

    def send(self, message: m.Message, frame_id: str | None = None) -> None:
        self.write_message(m.encode(message, frame_id=frame_id, now_ms=0))


async def start_agent(
    tmp_path: Path, sim, script: Script, **overrides: object
) -> AsyncIterator[tuple[Agent, list[ScriptedRelay]]]:
    opened: list[ScriptedRelay] = []
    app = tornado.web.Application(
        [(r"/control", ScriptedRelay, {"script": script, "opened": opened})]
    )
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    s = System(tmp_path, sim)
    s.relay_port = sockets[0].getsockname()[1]
    settings = {"ping_interval": 0.2, "ping_timeout": 0.6, **overrides}
    agent = await s.start_agent(wait=False, **settings)
    try:
        yield agent, opened
    finally:
        await s.close()
        server.stop()
        await server.close_all_connections()


@pytest.fixture
def run(tmp_path: Path, sim):
    """`async with run(script, **agent settings) as (agent, opened)`."""
    import contextlib

    return lambda script, **kw: contextlib.asynccontextmanager(start_agent)(
        tmp_path, sim, script, **kw
    )


async def test_a_relay_that_sends_no_hello(run, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.pits.link")
    async with run(lambda relay: None) as (agent, opened):
        await wait_for(lambda: agent.state.cloud_error == "the relay sent no hello", what="why")
        assert agent.state.close_code == CloseCode.POLICY
        assert not agent.state.ws_connected
        await wait_for(lambda: len(opened) >= 2, what="a second dial, after the backoff")
    assert any(r.getMessage() == "the relay sent no hello" for r in caplog.records)


async def test_a_relay_from_another_protocol_version_is_left_slowly(run) -> None:
    async with run(lambda relay: relay.hello(version=2), reconnect_cap=60.0) as (agent, opened):
        await wait_for(lambda: agent.state.next_attempt_in, what="the next attempt planned")
        assert "speaks another protocol" in (agent.state.cloud_error or "")
        assert agent.state.close_code == CloseCode.VERSION_REFUSED
        assert agent.state.next_attempt_in >= 30.0  # slow: retrying soon cannot fix it
        assert len(opened) == 1
        # The box said its own version in the close, and never said hello.
        assert [f.type for f in opened[0].received] == []


async def test_a_relay_that_floods_bad_frames_is_left(run, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.pits.link")

    def flood(relay: ScriptedRelay) -> None:
        relay.hello()
        for i in range(500):
            relay.write_message(f"junk {i}")

    async with run(flood) as (agent, _):
        await wait_for(lambda: agent.state.close_code == CloseCode.POLICY, what="the box to leave")
        assert agent.state.cloud_error == "the relay sent too many bad frames"
        dropped = agent.metrics.frames_dropped.labels("malformed")._value.get()
        assert 100 < dropped < 500
    lines = [r for r in caplog.records if r.getMessage() == "dropped frame from the relay"]
    assert 1 <= len(lines) <= 3


async def test_paused_and_busy_fetches_are_answered_at_once(run) -> None:
    def ask(relay: ScriptedRelay) -> None:
        relay.hello()
        for i in range(3):
            relay.send(m.Fetch(method="GET", path="/", timeout_ms=5000), f"f{i}")

    async with run(ask, paused=True) as (_, opened):
        await wait_for(lambda: opened and len(opened[0].received) >= 4, what="three answers")
        errors = [f for f in opened[0].received if f.type == "error"]
        assert [f.id for f in errors] == ["f0", "f1", "f2"]
        assert {f.message.code for f in errors} == {ErrorCode.UNAVAILABLE}


async def test_an_admins_reconnect_is_followed_at_once(run) -> None:
    def close_4000(relay: ScriptedRelay) -> None:
        relay.hello()
        if len(relay.opened) == 1:
            asyncio.get_running_loop().call_later(
                0.05, relay.close, CloseCode.RECONNECT, "reconnect requested by an admin"
            )

    async with run(close_4000, reconnect_base=30.0, reconnect_cap=60.0) as (agent, opened):
        await wait_for(lambda: len(opened) == 2, what="the second dial, at once")
        assert agent.state.close_code == CloseCode.RECONNECT


def the_way_out_opens(agent: Agent) -> None:
    """The watchdog finds the way out open again (a portal let the box through)."""
    agent.watchdog.record(Verdict(state="none"))
    agent.watchdog.record(Verdict(state="full"))


async def test_the_way_out_opening_leaves_a_link_in_its_handshake_be(run) -> None:
    """The watchdog's first check often ends while the first link is in its handshake: the
    way out is open, so dial now, but not by dropping that link (it was dropped, and a box that
    had just started counted a reconnect)."""
    async with run(lambda relay: None) as (agent, opened):  # the relay's hello is sent below
        await wait_for(lambda: agent.link.sessions == 1, what="the box in its handshake")
        the_way_out_opens(agent)
        opened[0].hello()
        await wait_for(lambda: opened[0].received, timeout=5, what="the box's hello")
        assert [f.type for f in opened[0].received] == ["hello"]
        assert agent.state.ws_connected
        assert (len(opened), agent.state.reconnects) == (1, 0)


async def test_the_way_out_opening_ends_the_wait_for_the_next_dial(run) -> None:
    async with run(lambda relay: relay.hello(version=2), reconnect_cap=60.0) as (agent, opened):
        await wait_for(lambda: agent.state.next_attempt_in, what="the next attempt planned")
        assert agent.state.next_attempt_in >= 30.0
        the_way_out_opens(agent)
        await wait_for(lambda: len(opened) == 2, what="the second dial, at once")


async def test_a_dial_under_way_when_the_way_out_opens_is_tried_again_at_once(run) -> None:
    """The dial under way may still have gone into the portal: if it fails, the next one
    does not wait out the backoff."""
    async with run(lambda relay: None, reconnect_cap=60.0) as (agent, opened):
        await wait_for(lambda: agent.link.sessions == 1, what="the box in its handshake")
        the_way_out_opens(agent)
        opened[0].hello(version=2)  # refused: the box would wait 30 s or more
        await wait_for(lambda: len(opened) == 2, what="the second dial, at once")
        assert agent.state.close_code == CloseCode.VERSION_REFUSED


async def test_links_the_relay_ends_leave_no_task_behind(run) -> None:
    """Each link the relay ends, by a close or by dropping the connection, is followed by a new
    one, and the box keeps no task for the old one: the soak saw one more task on the box for
    every cut link (a read waiting for an end the connection had already said)."""
    ends = 6

    def end_early(relay: ScriptedRelay) -> None:
        relay.hello()
        n = len(relay.opened)
        if n > ends:
            return
        loop = asyncio.get_running_loop()
        if n % 2:
            loop.call_later(0.05, relay.close, CloseCode.RECONNECT, "reconnect")
        else:  # the connection dropped, no closing handshake
            loop.call_later(0.05, lambda: relay.ws_connection.stream.close())  # type: ignore[union-attr]

    async with run(end_early, reconnect_base=0.05, reconnect_cap=0.1) as (agent, opened):
        await wait_for(lambda: len(opened) == 1 and agent.state.ws_connected, what="the 1st link")
        # The tasks of a box with its link up, before any link ended.
        baseline = len(asyncio.all_tasks())
        await wait_for(
            lambda: len(opened) == ends + 1 and agent.state.ws_connected,
            timeout=30,
            what="a link after every end",
        )
        await wait_for(
            lambda: len(asyncio.all_tasks()) <= baseline,
            timeout=10,
            what=f"the box's tasks back to {baseline}",
        )


def test_what_the_box_says_after_each_close() -> None:
    assert closed_by_relay(CloseCode.RECONNECT, "x").policy == "now"
    assert closed_by_relay(CloseCode.TOKEN_EXPIRED, "x").text == (
        "the relay says this box's token expired or was revoked: ask for a new one"
    )
    replaced = closed_by_relay(CloseCode.REPLACED, "x")
    assert (replaced.policy, replaced.text) == (
        "backoff",
        "another connection with this pits id replaced this one",
    )
    assert closed_by_relay(1000, "bye").text is None
    silent = closed_by_box(Closing(GOING_AWAY, "silent for 15 s"))
    assert (silent.text, silent.policy, silent.log) == (
        "the link to the relay went silent",
        "backoff",
        "relay silent, dropping the link",
    )
    refused = closed_by_box(Closing(CloseCode.VERSION_REFUSED, "this end speaks 1"))
    assert refused.policy == "slow" and "update the box" in (refused.text or "")
