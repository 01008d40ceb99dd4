"""Upstream drift: the endpoints' schemas against the real event, simulated races, and changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cloud.drift import (
    LOG_INTERVAL_S,
    MAX_CHECKED_BYTES,
    MAX_PITS_SHOWN,
    DriftWatch,
    Schemas,
    endpoint_of,
)
from cloud.metrics import Metrics
from pitlink_testkit.fpvtrackside import LiveEvent
from wire.canonical import canonical_json

FIXTURE = Path(__file__).parents[1] / "fixtures" / "fpvtrackside"


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas()


def web_paths(root: Path) -> list[tuple[str, bytes]]:
    """(FPVTrackside path, the body the agent sends for it) for every file with a schema."""
    found = []
    for file in sorted(root.rglob("*.json")):
        path = "/" + file.relative_to(root).as_posix()
        if endpoint_of(path) is not None:
            data = json.loads(file.read_bytes().decode("utf-8-sig") or "[]")
            found.append((path, canonical_json(data)))
    return found


def test_every_endpoint_has_a_schema(schemas: Schemas) -> None:
    assert schemas.endpoints == ["Channels", "Event", "Pilots", "Race", "Results", "Rounds"]


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/events/e1/Event.json", "Event"),
        ("/events/e1/Results.json", "Results"),
        ("/events/e1/r1/Race.json", "Race"),
        ("/httpfiles/Channels.json", "Channels"),
        ("/events/e1/r1/Event.json", None),
        ("/httpfiles/index.html", None),
        ("/", None),
    ],
)
def test_which_paths_have_a_schema(path: str, endpoint: str | None) -> None:
    assert endpoint_of(path) == endpoint


def test_the_real_event_fits(schemas: Schemas) -> None:
    checked = web_paths(FIXTURE)
    assert len(checked) >= 18  # Event, Pilots, Rounds, 14 races, Channels
    assert [(p, schemas.check(p, body)) for p, body in checked if schemas.check(p, body)] == []


def test_a_simulated_event_fits_as_it_runs(schemas: Schemas, tmp_path: Path) -> None:
    live = LiveEvent(tmp_path, seed=11, pilots=8)
    for step in range(300):
        live.step()
        if step % 25 == 0:
            for path, body in web_paths(tmp_path):
                assert schemas.check(path, body) is None, (step, path)
    assert any(endpoint_of(p) == "Results" for p, _ in web_paths(tmp_path))


def test_pilots_with_photos_fit(schemas: Schemas, tmp_path: Path) -> None:
    """FPVTrackside keeps a pilot's photo as a path (`PhotoPath`, a string; null without one)."""
    LiveEvent(tmp_path, seed=3, pilots=4, photos=True)
    pilots = [(p, b) for p, b in web_paths(tmp_path) if endpoint_of(p) == "Pilots"]
    assert pilots and b"PhotoPath" in pilots[0][1]
    assert schemas.check(*pilots[0]) is None


def test_an_empty_file_fits(schemas: Schemas) -> None:
    """FPVTrackside's 200 with an empty body for an event file not written yet is `[]`."""
    assert schemas.check("/events/e1/Results.json", b"") is None
    assert schemas.check("/events/e1/Results.json", b"[]") is None


def race(tmp_path: Path) -> tuple[str, list[dict[str, object]]]:
    path, body = next((p, b) for p, b in web_paths(FIXTURE) if endpoint_of(p) == "Race")
    return path, json.loads(body)


def test_a_field_of_another_type_is_named_with_its_pointer(schemas: Schemas, tmp_path) -> None:
    path, data = race(tmp_path)
    data[0]["RaceNumber"] = "seven"
    found = schemas.check(path, canonical_json(data))
    assert found is not None
    assert (found.endpoint, found.pointer, found.kind, found.expected) == (
        "Race.json",
        "/0/RaceNumber",
        "type",
        "integer",
    )


def test_a_missing_field_and_a_bad_id_are_named(schemas: Schemas, tmp_path) -> None:
    path, data = race(tmp_path)
    del data[0]["Round"]
    found = schemas.check(path, canonical_json(data))
    assert found is not None and (found.pointer, found.kind) == ("/0", "required")
    assert "Round" in found.message
    path, data = race(tmp_path)
    data[0]["ID"] = "42"
    found = schemas.check(path, canonical_json(data))
    assert found is not None and (found.pointer, found.kind) == ("/0/ID", "pattern")


def test_an_added_field_is_not_drift(schemas: Schemas, tmp_path) -> None:
    path, data = race(tmp_path)
    data[0]["NewInNextVersion"] = {"x": 1}
    assert schemas.check(path, canonical_json(data)) is None


def test_what_is_shown_is_bounded(schemas: Schemas, tmp_path) -> None:
    path, data = race(tmp_path)
    data[0]["x" * 5000] = 1
    data[0]["ID"] = "y" * 5000
    found = schemas.check(path, canonical_json(data))
    assert found is not None
    assert all(len(v) <= 120 for v in (found.pointer, found.expected, found.message))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(
    schemas: Schemas, clock: Clock, caplog: pytest.LogCaptureFixture
) -> tuple[DriftWatch, Metrics]:
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="pitlink.test.drift")
    return (
        DriftWatch(
            schemas,
            mismatches=metrics.schema_mismatches,
            last_mismatch=metrics.schema_mismatch_last,
            unchecked=metrics.schema_unchecked,
            log=logging.getLogger("pitlink.test.drift"),
            wall=clock,
            monotonic=clock,
        ),
        metrics,
    )


def bad_event() -> bytes:
    return canonical_json([{"ID": "not-a-uuid", "Name": 7}])


def test_a_body_over_the_checked_bound_is_counted_not_checked(
    schemas: Schemas, caplog: pytest.LogCaptureFixture
) -> None:
    drift, metrics = watch(schemas, Clock(), caplog)
    path = "/events/e1/Event.json"
    huge = b"[" + b" " * MAX_CHECKED_BYTES + b"]"
    assert drift.seen("p1", path, huge) is None
    assert metrics.schema_unchecked._value.get() == 1
    assert drift.seen("p1", path, bad_event()) is not None  # at the bound's side: checked
    assert metrics.schema_unchecked._value.get() == 1


def test_one_line_per_endpoint_and_kind_per_interval(
    schemas: Schemas, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    drift, metrics = watch(schemas, clock, caplog)
    for _ in range(50):
        drift.seen("p1", "/events/e1/Event.json", bad_event())
    assert len(caplog.records) == 1
    clock.now += LOG_INTERVAL_S
    drift.seen("p1", "/events/e1/Event.json", bad_event())
    assert len(caplog.records) == 2
    assert caplog.records[1].suppressed == 49  # type: ignore[attr-defined]
    assert metrics.schema_mismatches.labels("Event.json")._value.get() == 51


def test_the_pits_remembered_for_the_admin_are_bounded(
    schemas: Schemas, caplog: pytest.LogCaptureFixture
) -> None:
    drift, _ = watch(schemas, Clock(), caplog)
    for i in range(MAX_PITS_SHOWN + 1):
        drift.seen(f"p{i}", "/events/e1/Event.json", bad_event())
    assert drift.first("p0") is None  # the oldest forgotten
    assert drift.first(f"p{MAX_PITS_SHOWN}") is not None


DEEP = b"[" * 1000 + b"]" * 1000  # decodes (ujson goes to 1024), but its repr recurses


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b"[" + DEEP + b"]",
        b'[{"Laps":[' + DEEP + b"]}]",
        b'[{"ID":' + DEEP + b"}]",
        b'[{"a":' * 500 + b"1" + b"}]" * 500,
        b"[" * 100_000,
    ],
    ids=["top", "item", "lap", "id", "objects", "unclosed"],
)
def test_a_deep_body_is_drift_not_a_recursion_error(
    schemas: Schemas, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """Before, jsonschema raised RecursionError out of the relay's serving of a new body."""
    drift, metrics = watch(schemas, Clock(), caplog)
    for path in ("/events/e/r/Race.json", "/events/e/Event.json", "/httpfiles/Channels.json"):
        found = drift.seen("p1", path, body)
        assert found is not None and found.kind == "json", found
        assert "nested more than" in found.message or "not JSON" in found.message
    assert metrics.schema_mismatches.labels("Race.json")._value.get() == 1
