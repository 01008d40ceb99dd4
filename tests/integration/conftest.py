"""Fixtures that start the real parts: the simulator, the relay and the agent on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fpvtrackside_sim import Simulator
from support import System


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=7, lap_interval=None)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def system(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    """Simulator, relay and a connected agent; freshness 0 (every request revalidates) and no
    rate limits, so that tests see the chain itself. Limits have tests of their own."""
    s = System(tmp_path, sim)
    await s.start_relay(freshness=0.0, client_rate=None, pits_fetch_rate=None)
    await s.start_agent()
    yield s
    await s.close()
