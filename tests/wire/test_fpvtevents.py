"""ExtensionMode events as they may leave the pits: the specification's types with their fields,
nothing of the laptop's file system, and every bound crossed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wire.fpvtevents import EVENT_TYPES, MAX_DEPTH, MAX_LIST, MAX_STRING, Refused, clean

PILOT = {
    "name": "John Doe",
    "phonetic": "jon doh",
    "discordID": None,
    "photoPath": "pilots/jdoe/jdoe.mp4",
    "videoFlipped": False,
    "videoMirrored": False,
    "channel": {"band": "Raceband", "number": 1, "frequency": 5658},
}
LOADED = {
    "type": "RaceLoaded",
    "ts": "2026-05-03T12:34:56.789Z",
    "seq": 42,
    "round": 3,
    "race": 2,
    "raceType": "Race",
    "targetLaps": 5,
    "pilots": [PILOT, PILOT],
}


def test_the_specifications_types_are_known() -> None:
    assert {"Hello", "RaceLoaded", "RaceStart", "DetectionExt", "RaceEnd", "RaceResult"} <= set(
        EVENT_TYPES
    )


def test_photo_paths_and_the_laptops_folders_stay_at_the_pits() -> None:
    got = clean(LOADED)
    assert all("photoPath" not in pilot for pilot in got["pilots"])
    assert got["pilots"][0]["name"] == "John Doe"
    assert LOADED["pilots"][0]["photoPath"]  # the input is not changed
    hello = {"type": "Hello", "ts": "t", "seq": 1, "fpvtVersion": "v", "platform": "Windows"}
    hello["paths"] = {"pilotsDirectory": "C:\\fpvt\\pilots\\"}
    assert "paths" not in clean(hello)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"type": "Whatever"}, "not an event type"),
        ({"type": 7}, "not an event type"),
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"ts": None}, "no ts"),
        ({"pilots": "all"}, "RaceLoaded without its pilots"),
        ({"round": 3.5}, "RaceLoaded without its round"),
        ({"round": True}, "RaceLoaded without its round"),
        ({"extra": "x" * (MAX_STRING + 1)}, "a string of more than"),
        ({"extra": list(range(MAX_LIST + 1))}, "a list of more than"),
        ({"extra": {str(i): i for i in range(65)}}, "an object of more than"),
        ({"extra": float("nan")}, "a number JSON cannot carry"),
    ],
)
def test_what_is_refused(change: dict[str, Any], why: str) -> None:
    event = {**LOADED, **change}
    with pytest.raises(Refused, match=why):
        clean(event)


def test_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(Refused, match="nested deeper"):
        clean({**LOADED, "extra": deep})


def test_the_whole_event_is_bounded() -> None:
    big = copy.deepcopy(LOADED)
    big["pilots"] = [{**PILOT, "name": "x" * MAX_STRING, "phonetic": "y" * MAX_STRING}] * 200
    with pytest.raises(Refused, match="over 65536 bytes"):
        clean(big)


@pytest.mark.parametrize("not_an_object", [[], "x", 1, None])
def test_only_an_object_is_an_event(not_an_object: Any) -> None:
    with pytest.raises(Refused, match="not a JSON object"):
        clean(not_an_object)
