"""The agent's connections to FPVTrackside: kept open between requests, replaced when
FPVTrackside closes them, never more than the origin's concurrency. Counted at the server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.waiting import wait_for
from pits_appliance.origin import Origin

CHANNELS = "/httpfiles/Channels.json"


@pytest.fixture
async def fixture_sim(fixtures_root: Path) -> AsyncIterator[Simulator]:
    simulator = Simulator(root=fixtures_root)
    await simulator.start()
    yield simulator
    await simulator.stop()


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pitlink.pits.origin"]


async def test_sequential_fetches_share_one_connection(
    fixture_sim: Simulator, fixtures_root: Path
) -> None:
    expected = (fixtures_root / CHANNELS.lstrip("/")).read_bytes()
    origin = Origin(fixture_sim.url)
    try:
        for _ in range(20):
            reply = await origin.get(CHANNELS, 5.0)
            assert (reply.status, reply.body) == (200, expected)
        assert fixture_sim.requests_total == 20
        assert fixture_sim.connections_total == 1
        assert fixture_sim.connections_open == 1
    finally:
        await origin.close()
    await wait_for(lambda: fixture_sim.connections_open == 0, what="the agent to hang up")


async def test_a_connection_fpvtrackside_closed_when_idle_is_replaced(
    fixtures_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    sim = Simulator(root=fixtures_root, idle_timeout=0.2)
    await sim.start()
    origin = Origin(sim.url)
    try:
        assert (await origin.get(CHANNELS, 5.0)).status == 200
        await wait_for(lambda: sim.connections_open == 0, what="the idle connection closed")
        for _ in range(3):
            assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert sim.connections_total == 2
    finally:
        await origin.close()
        await sim.stop()
    assert retries(caplog) == []  # a clean reconnect, not a failure retried


async def test_a_restarted_fpvtrackside_is_reached_on_a_fresh_connection(
    fixtures_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    first = Simulator(root=fixtures_root)
    port = await first.start()
    origin = Origin(first.url)
    second = Simulator(root=fixtures_root)
    try:
        assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert first.connections_total == 1
        await first.stop()  # closes the connection the agent keeps
        await second.start(port=port)
        for _ in range(3):
            assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert second.connections_total == 1
    finally:
        await origin.close()
        await second.stop()
    assert retries(caplog) == []


class _HangsUpOnSecondRequest:
    """An HTTP/1.1 server that answers the first request on each connection and closes the
    connection, unanswered, on the second: FPVTrackside closing an idle connection at the very
    moment the agent sends on it, which the agent cannot see coming."""

    def __init__(self) -> None:
        self.accepted = 0
        self.answered = 0
        self.server: asyncio.Server | None = None
        self.serving: set[asyncio.Task[object]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            await writer.drain()
            self.answered += 1
            await reader.readuntil(b"\r\n\r\n")  # the second request: no answer
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.serving.discard(task)

    async def stop(self) -> None:
        """Stop listening; wait for the connections to end (the client has hung up)."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await wait_for(lambda: not self.serving, what="the connections to end", timeout=5.0)


async def test_a_request_on_a_connection_closed_under_it_is_sent_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    server = _HangsUpOnSecondRequest()
    origin = Origin(await server.start())
    try:
        for _ in range(3):
            reply = await origin.get("/httpfiles/x.json", 5.0)
            assert (reply.status, reply.body) == (200, b"[]")
        assert server.answered == 3
        assert server.accepted == 3
    finally:
        await origin.close()
        await server.stop()
    assert retries(caplog) == []  # curl sent it again itself, at once


async def test_no_more_connections_than_the_concurrency(fixture_sim: Simulator) -> None:
    fixture_sim.hold = asyncio.Event()
    origin = Origin(fixture_sim.url, concurrency=2)
    paths = ["/", CHANNELS, f"{fixture_sim.event_path}/Event.json"] * 2
    try:
        fetches = [asyncio.ensure_future(origin.get(p, 5.0)) for p in paths]
        await wait_for(
            lambda: fixture_sim.queued + fixture_sim.in_flight == 2, what="two at FPVTrackside"
        )
        assert fixture_sim.connections_open == 2
        fixture_sim.hold.set()
        replies = await asyncio.wait_for(asyncio.gather(*fetches), 5.0)
        assert [r.status for r in replies] == [200] * len(paths)
        assert fixture_sim.requests_total == len(paths)
        assert fixture_sim.connections_total == 2
    finally:
        fixture_sim.hold.set()
        await origin.close()
