"""What the simulator's ExtensionMode events say of a race: FPVTrackside's positions (quirks
included), its date and time formats, its Hello."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from pitlink_testkit.fpvtrackside import ExtensionSettings
from pitlink_testkit.fpvtrackside_messages import (
    Messages,
    timespan_seconds,
    track_position,
    utc_iso,
)
from pitlink_testkit.fpvtrackside_race import NULL_DATE, LiveEvent, format_date, parse_date
from wire.fpvtevents import clean

START = dt.datetime(2025, 6, 1, 18, 0, 0)


def detection(pilot: str, lap: int, seconds: float, *, valid: bool = True) -> dict[str, Any]:
    return {
        "Pilot": pilot,
        "LapNumber": lap,
        "TimingSystemIndex": 0,
        "Time": format_date(START + dt.timedelta(seconds=seconds)),
        "Valid": valid,
        "IsLapEnd": True,
        "ID": f"{pilot}-{lap}-{seconds}",
    }


def race(*detections: dict[str, Any], pilots: str = "ABCD", laps: int = 3) -> dict[str, Any]:
    return {
        "Start": format_date(START),
        "TargetLaps": laps,
        "PilotChannels": [{"Pilot": p, "Channel": "c"} for p in pilots],
        "Detections": list(detections),
    }


def positions(r: dict[str, Any]) -> dict[str, int]:
    return {pc["Pilot"]: track_position(r, pc["Pilot"]) for pc in r["PilotChannels"]}


def test_no_detection_yet_puts_everyone_last() -> None:
    assert positions(race()) == {"A": 4, "B": 4, "C": 4, "D": 4}


def test_further_along_is_ahead_then_the_earlier_detection() -> None:
    r = race(
        detection("A", 0, 1.0),
        detection("B", 0, 1.5),
        detection("C", 0, 2.0),
        detection("B", 1, 20.0),
        detection("C", 1, 21.0),
    )
    # D has no detection: behind every pilot detected
    assert positions(r) == {"B": 1, "C": 2, "A": 3, "D": 4}


def test_the_same_time_as_the_pilot_just_ahead_is_a_dead_heat() -> None:
    r = race(detection("A", 1, 20.0), detection("B", 1, 20.0), detection("C", 1, 21.0))
    assert positions(r) == {"A": 1, "B": 1, "C": 3, "D": 4}


def test_invalid_detections_and_laps_past_the_target_do_not_count() -> None:
    r = race(
        detection("A", 1, 20.0),
        detection("B", 2, 30.0, valid=False),
        detection("B", 1, 21.0),
        detection("C", 4, 80.0),  # past the 3 laps of the race
        detection("C", 1, 22.0),
        laps=3,
    )
    assert positions(r) == {"A": 1, "B": 2, "C": 3, "D": 4}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:02:00", 120.0),
        ("00:00:00.5000000", 0.5),
        ("00:00:05", 5.0),
        ("1.02:03:04.25", 93784.25),
    ],
)
def test_timespans_as_newtonsoft_writes_them(text: str, seconds: float) -> None:
    assert timespan_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "2:00", "00:02:00x", "00:02"])
def test_a_timespan_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="TimeSpan"):
        timespan_seconds(text)


@pytest.mark.parametrize(
    "when",
    [START, START.replace(microsecond=500_000), START.replace(hour=9, microsecond=123_000)],
)
def test_parse_date_reads_what_format_date_writes(when: dt.datetime) -> None:
    assert parse_date(format_date(when)) == when


def test_parse_date_refuses_what_fpvtrackside_does_not_write() -> None:
    assert parse_date(NULL_DATE) == dt.datetime(1, 1, 1)
    with pytest.raises(ValueError, match="not a date"):
        parse_date("2025-06-01T18:00:00")


def test_utc_times_keep_milliseconds_truncated() -> None:
    assert utc_iso(START.replace(microsecond=999_999)) == "2025-06-01T18:00:00.999Z"
    assert utc_iso(START) == "2025-06-01T18:00:00.000Z"


def test_hello_on_another_platform_has_its_own_paths(tmp_path: Path) -> None:
    settings = ExtensionSettings(platform="Linux", working_directory="/home/rd/FPVTrackside")
    hello = Messages(LiveEvent(tmp_path, seed=2, pilots=4), settings).hello()
    assert hello["paths"]["workingDirectory"] == "/home/rd/FPVTrackside/"
    assert hello["paths"]["profileDirectory"] == "/home/rd/FPVTrackside/data/default/"
    assert hello["eventSettings"] == {
        "raceStartIgnoreDetections": 0.5,
        "minLapTime": 5.0,
        "primaryTimingSystemLocation": "Holeshot",
    }
    assert len(hello["channelSettings"]["channels"]) == 4
    clean({"type": "Hello", "ts": "x", "seq": 1, **hello})


def test_next_race_is_nulls_when_the_schedule_has_none_yet(tmp_path: Path) -> None:
    messages = Messages(LiveEvent(tmp_path, seed=2, pilots=4), ExtensionSettings())
    assert messages.next_race(None) == {
        "round": None,
        "race": None,
        "raceType": None,
        "scheduledStart": None,
        "pilots": [],
    }
