"""Fixtures every test may ask for, and the check of every log line of the run."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.logcheck import RECORDER, find_secrets, not_json
from pitlink_testkit.system import System

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fpvtrackside"


@pytest.fixture
def fixtures_root() -> Path:
    """The real FPVTrackside event kept in the repo (tests/fixtures/README.md says whence)."""
    assert (FIXTURES / "events").is_dir(), f"the real event is missing from {FIXTURES}"
    return FIXTURES


# -- the real parts on loopback --------------------------------------------------------------


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


# -- every log line of the run, checked for secrets at the end -------------------------------


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(RECORDER)
    root.setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = find_secrets(RECORDER.lines) + not_json(RECORDER.lines)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nlog check: {len(RECORDER.lines)} log lines captured, {len(leaks)} not JSON or with secrets"
        )
        for leak in leaks[:10]:
            reporter.write_line(f"  bad log line: {leak}")
    if leaks:
        session.exitstatus = 1
