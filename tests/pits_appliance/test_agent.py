"""The agent's own tasks: one that meets what nobody foresaw goes on, and says so sparingly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent


class Unforeseen(Agent):
    """An agent whose FPVTrackside check fails, while `failing`, as no parser foresaw."""

    failing = True
    checks = 0

    async def check_origin(self) -> None:
        self.checks += 1
        if self.failing:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
        await super().check_origin()


@pytest.mark.provokes_error(
    "pitlink.pits.agent",
    r"^the FPVTrackside check failed; it goes on$",
    why="the check fails on purpose, twice with a success between",
)
async def test_an_unforeseen_failure_of_the_check_is_logged_and_the_check_goes_on(
    tmp_path: Path, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    agent = s.agent = Unforeseen(s.agent_config(origin_check_interval=0.01))
    try:
        await agent.start()
        await wait_for(lambda: agent.checks >= 20, what="twenty checks")
        assert agent.healthy()  # the watchdog goes on: systemd restarts nothing
        agent.failing = False
        await wait_for(lambda: agent.state.origin_reachable, what="a check that works")
        agent.failing = True
        checks = agent.checks
        await wait_for(lambda: agent.checks >= checks + 20, what="twenty more checks")
        assert agent.healthy()
    finally:
        await s.close()
    lines = [r for r in caplog.records if r.getMessage().startswith("the FPVTrackside check")]
    # Once when it started, once when it came back after a success; never once a check.
    assert [r.failed_since_last_line for r in lines] == [0, 0]  # type: ignore[attr-defined]
    assert lines[0].exc_info is not None and lines[0].exc_info[0] is RecursionError
    assert "RecursionError: maximum recursion depth" in lines[0].error  # type: ignore[attr-defined]
