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
    """Simulator, relay (freshness 0: every request revalidates) and a connected agent."""
    s = System(tmp_path, sim)
    await s.start_relay(freshness=0.0)
    await s.start_agent()
    yield s
    await s.close()
