"""The pits goes away, the relay restarts: stale copies, fast failures, reconnection."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import weakref

import pytest

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET (/pits/pits-1)?/events/.*/Pilots\.json ",
    why="with the agent stopped, a path never cached is 503, by pits id and at the root",
)
async def test_agent_stopped_serves_stale_and_503(system: System) -> None:
    cached = f"/pits/{system.pits_id}/httpfiles/Channels.json"
    good = await system.get(cached)
    assert good.code == 200
    await system.stop_agent()
    await wait_for(lambda: system.relay.registry.get(system.pits_id) is None, what="disconnect")

    stale = await system.get(cached)
    assert stale.code == 200
    assert stale.body == good.body
    assert stale.headers["X-Pitlink-Cache"] == "STALE"
    assert stale.headers["Warning"] == '110 - "Response is Stale"'
    assert "X-Pitlink-Stale" in stale.headers

    uncached = await system.get(f"/pits/{system.pits_id}{system.sim.event_path}/Pilots.json")
    assert uncached.code == 503
    assert json.loads(uncached.body)["error"]["code"] == "UNAVAILABLE"
    assert uncached.headers["Retry-After"]
    alias = await system.get(f"{system.sim.event_path}/Pilots.json")
    assert alias.code == 503


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/pits-1/httpfiles/Channels\.json ",
    why="the pits drops with a fetch pending: 503 at once",
)
async def test_pending_fetches_fail_at_once_when_the_pits_drops(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    # A deadline far beyond the test's own timeout: only an immediate failure passes.
    await s.start_relay(fetch_timeout=300.0)
    await s.start_agent()
    try:
        sim.hold = asyncio.Event()
        pending = asyncio.ensure_future(s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json"))
        await wait_for(
            lambda: sim.queued + sim.in_flight >= 1, what="the fetch to reach the origin"
        )
        started = time.monotonic()
        await s.stop_agent()
        got = await pending
        assert got.code == 503
        assert json.loads(got.body)["error"]["code"] == "UNAVAILABLE"
        assert time.monotonic() - started < 30
    finally:
        sim.hold.set()
        await s.close()


async def test_agent_reconnects_by_itself_after_a_relay_restart(system: System) -> None:
    port = system.relay_port
    sessions = system.agent.link.sessions
    await system.stop_relay()
    await wait_for(lambda: not system.agent.state.ws_connected, what="the agent to notice")
    await system.start_relay()
    assert system.relay_port == port
    await system.connected(timeout=20)
    assert system.agent.link.sessions == sessions + 1
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 200


async def test_agent_health_says_connected_and_origin(system: System) -> None:
    agent = system.agent
    await wait_for(lambda: agent.state.origin_reachable is not None, what="an origin check")
    got = await system.http.fetch(
        f"http://127.0.0.1:{agent.status_port}/healthz", raise_error=False
    )
    assert got.code == 200
    health = json.loads(got.body)
    assert health["wsConnected"] is True
    assert health["originReachable"] is True
    assert health["originEvent"] == system.sim.event_id
    assert health["pitsId"] == system.pits_id
    await system.stop_relay()
    await wait_for(lambda: not agent.state.ws_connected, what="the agent to notice")
    down = await system.http.fetch(
        f"http://127.0.0.1:{agent.status_port}/healthz", raise_error=False
    )
    assert down.code == 503
    assert json.loads(down.body)["wsConnected"] is False


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/httpfiles/Channels\.json ",
    why="FPVTrackside is stopped: ORIGIN_UNREACHABLE, 502",
)
async def test_origin_down_is_502_origin_unreachable(system: System) -> None:
    await system.sim.stop()
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 502
    assert json.loads(got.body)["error"]["code"] == "ORIGIN_UNREACHABLE"
    assert system.agent.state.origin_reachable is False


async def test_the_agent_collects_the_cycles_failures_leave_behind(tmp_path, sim) -> None:
    """Garbage from dropped links is collected on the agent's timer, not some day (the soak)."""

    class Frame:
        pass

    s = System(tmp_path, sim)
    await s.start_relay()
    agent = Agent(s.agent_config())
    agent.collect_interval = 0.05
    gc.disable()  # only the agent's own collection can free the cycle below
    try:
        cycle = Frame()
        cycle.me = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None
        await agent.start()
        await wait_for(lambda: gone() is None, timeout=10, what="the agent to collect the cycle")
    finally:
        gc.enable()
        await agent.stop()
        await s.close()


async def test_fpvtrackside_down_is_a_warning_naming_it_once_not_every_check(
    system: System, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits")
    agent = system.agent
    await system.sim.stop()
    for _ in range(5):  # five checks, as the watch loop makes them every 10 s
        await agent.check_origin()
    down = [r for r in caplog.records if r.getMessage() == "FPVTrackside is not answering"]
    assert len(down) == 1
    assert (down[0].levelname, down[0].url) == ("WARNING", system.sim.url)
    assert "not answering" in down[0].error
    retries = [r for r in caplog.records if r.name == "pitlink.pits.origin"]
    assert {r.getMessage() for r in retries} >= {
        "FPVTrackside connection failed, retrying once",
        "FPVTrackside failed again after a retry",
    }
    assert all(r.levelname == "WARNING" and r.url == system.sim.url for r in retries)
