"""The agent's HTTP client: a fetch cancelled halfway runs to its end quietly, and close waits."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.httpclient import HTTPClient


class HoldingServer:
    """Reads a request, then holds it unanswered until told to hang up."""

    def __init__(self) -> None:
        self.requests = 0
        self.hang_up = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        await self.hang_up.wait()
        writer.close()
        await writer.wait_closed()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def cancel_a_fetch(client: HTTPClient, server: HoldingServer, url: str) -> None:
    """A fetch the server holds, cancelled once the server has the request."""
    fetching = asyncio.ensure_future(client.fetch(url, request_timeout=30.0))
    await wait_for(lambda: server.requests == 1, what="the request at the server")
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching


async def test_a_cancelled_fetch_ends_without_an_error_and_close_waits_for_it(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server = HoldingServer()
    url = await server.start()
    client = HTTPClient()
    try:
        await cancel_a_fetch(client, server, url)
        assert client.running == 1  # tornado cannot stop it: it goes on

        # The server then goes away without an answer: a plain AsyncHTTPClient logs
        # "Exception after Future was cancelled" at ERROR here.
        closing = asyncio.ensure_future(client.close(timeout=30.0))
        server.hang_up.set()
        await asyncio.wait_for(closing, 10.0)
        assert client.running == 0
    finally:
        server.hang_up.set()
        await server.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_close_waits_no_longer_than_its_bound() -> None:
    server = HoldingServer()
    url = await server.start()
    client = HTTPClient()
    try:
        await cancel_a_fetch(client, server, url)
        await asyncio.wait_for(client.close(timeout=0.1), 5.0)
        assert client.running == 1  # left to end on its own
        server.hang_up.set()
        await wait_for(lambda: client.running == 0, what="the fetch to end")
    finally:
        server.hang_up.set()
        await server.stop()


async def test_the_agent_stops_after_the_origin_check_it_interrupted(
    tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    sim = Simulator(seed=7, lap_interval=None)
    await sim.start()
    sim.hold = asyncio.Event()  # FPVTrackside takes the agent's first check, and answers nothing
    s = System(tmp_path, sim)
    await s.start_relay()
    try:
        agent = await s.start_agent(wait=False)
        await wait_for(lambda: sim.in_flight == 1, what="the origin check at FPVTrackside")
        checking = agent._tasks[1]
        stopping = asyncio.ensure_future(s.stop_agent())
        await wait_for(checking.done, what="the origin check cancelled")
        # The cancelled check closed its connection to FPVTrackside at once (with a bare
        # tornado client the request ran on, and failed with an ERROR from tornado.application
        # once FPVTrackside went away); the stop closes the rest.
        await asyncio.wait_for(stopping, 10.0)
        assert agent.origin.connections == 0
        await wait_for(lambda: sim.connections_open == 0, what="the agent's connections closed")
        await sim.stop()
    finally:
        await s.close()
        await sim.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any(r.getMessage() == "agent stopped" for r in caplog.records)
