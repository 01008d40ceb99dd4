"""The chaos drill (about 3 minutes) and the soak (30 minutes), both selectable by marker."""

from __future__ import annotations

import os

import pytest
from drill import Drill

CONNECTION_FAULTS = {"cut", "reset", "blackhole"}


def check(drill: Drill, *, since_settled: bool = False) -> None:
    """The drill's promises; the soak looks for growth once the working set has settled."""
    print(drill.report())
    total = sum(drill.outcomes.values())
    ok = drill.outcomes.get("200", 0)
    assert total > 1000
    assert drill.bad_bodies == [], drill.bad_bodies[:5]  # only bodies the origin produced
    assert ok / total >= 0.99, drill.report()
    link_faults = sum(1 for f in drill.faults if f.kind in CONNECTION_FAULTS)
    assert drill.reconnects >= link_faults  # a new session after every broken link
    for part in ("relay", "agent"):
        start = (drill.settled() if since_settled else drill.memory[0])[part]
        end = drill.final[part]
        assert end["rss_kb"] <= start["rss_kb"] * 1.10, f"{part} memory grew: {start} -> {end}"
        assert end["threads"] <= start["threads"] + 1, f"{part} threads: {start} -> {end}"
        assert end["fds"] <= drill.baseline[part]["fds"] + 5, (
            f"{part} fds: {drill.baseline[part]} -> {end}"
        )
        assert drill.tasks_end[part] <= drill.tasks_start[part] + 5, (
            part,
            drill.tasks_start,
            drill.tasks_end,
        )


@pytest.mark.chaos
@pytest.mark.timeout(420)
async def test_chaos_drill(tmp_path) -> None:
    seed = int(os.environ.get("PITLINK_CHAOS_SEED", "20261126"))
    drill = Drill(tmp_path, seed=seed, duration=140.0)
    await drill.run()
    check(drill)


@pytest.mark.soak
@pytest.mark.timeout(2400)
async def test_soak(tmp_path) -> None:
    seed = int(os.environ.get("PITLINK_CHAOS_SEED", "7"))
    drill = Drill(
        tmp_path, seed=seed, duration=float(os.environ.get("PITLINK_SOAK_SECONDS", "1800"))
    )
    await drill.run()
    check(drill, since_settled=True)
