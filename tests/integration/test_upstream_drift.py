"""Upstream drift seen by the operator while spectators still get the data (issue 18)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System


def drift_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pitlink.cloud.drift"]


async def test_a_changed_field_type_is_counted_logged_and_still_served(
    system: System, caplog
) -> None:
    caplog.set_level(logging.INFO)
    path = f"/pits/{system.pits_id}{system.sim.event_path}/Event.json"
    metrics = system.relay.metrics
    assert (await system.get(path)).code == 200
    assert metrics.schema_mismatches.labels("Event.json")._value.get() == 0
    assert drift_lines(caplog) == []

    file = system.sim.root / system.sim.event_path.lstrip("/") / "Event.json"
    event = json.loads(file.read_bytes().decode("utf-8-sig"))
    event[0]["Laps"] = "three"  # a new FPVTrackside writes the number as text
    file.write_text(json.dumps(event, indent=2))
    got = await system.get(path)
    assert got.code == 200 and json.loads(got.body)[0]["Laps"] == "three"
    assert metrics.schema_mismatches.labels("Event.json")._value.get() == 1
    assert metrics.schema_mismatch_last._value.get() > 0
    (line,) = drift_lines(caplog)
    assert line.levelno == logging.WARNING
    assert (line.endpoint, line.pointer, line.kind, line.expected) == (  # type: ignore[attr-defined]
        "Event.json",
        "/0/Laps",
        "type",
        "integer",
    )
    seen = system.relay.serving.drift.first(system.pits_id)  # type: ignore[union-attr]
    assert seen is not None and seen.mismatch.pointer == "/0/Laps"

    # The same body again is no new body: not counted twice. A change is, but not logged
    # again within the interval (one line per endpoint and kind).
    assert (await system.get(path)).code == 200
    assert metrics.schema_mismatches.labels("Event.json")._value.get() == 1
    event[0]["Laps"] = "four"
    file.write_text(json.dumps(event, indent=2))
    assert (await system.get(path)).code == 200
    assert metrics.schema_mismatches.labels("Event.json")._value.get() == 2
    assert len(drift_lines(caplog)) == 1

    # Mended upstream: the warning for that endpoint goes.
    event[0]["Laps"] = 3
    file.write_text(json.dumps(event, indent=2))
    assert (await system.get(path)).code == 200
    assert system.relay.serving.drift.first(system.pits_id) is None  # type: ignore[union-attr]


async def test_a_relay_told_not_to_check_serves_the_same_and_counts_nothing(
    tmp_path: Path, sim: Simulator, caplog
) -> None:
    """`--no-schema-check`: for the bench's side-by-side, or a relay that must not spend the
    time; the data is served as before."""
    caplog.set_level(logging.INFO)
    s = System(tmp_path, sim)
    relay = await s.start_relay(freshness=0.0, no_schema_check=True)
    try:
        await s.start_agent()
        path = f"/pits/{s.pits_id}{sim.event_path}/Event.json"
        file = sim.root / sim.event_path.lstrip("/") / "Event.json"
        event = json.loads(file.read_bytes().decode("utf-8-sig"))
        event[0]["Laps"] = "three"
        file.write_text(json.dumps(event, indent=2))
        got = await s.get(path)
        assert got.code == 200 and json.loads(got.body)[0]["Laps"] == "three"
        assert relay.serving.drift is None
        assert relay.metrics.schema_mismatches.labels("Event.json")._value.get() == 0
        assert drift_lines(caplog) == []
    finally:
        await s.close()
