"""The race gate (pits_appliance/update_race.py) with an injected clock: which word on a race
counts, when fetches stand in for one, and the pace a download keeps while race data flows."""

from __future__ import annotations

import pytest

from pits_appliance.update_race import DATA_WINDOW, EXTENSION_HELD, Pace, RaceGate

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_extension_mode_beats_the_files_while_it_is_fresh() -> None:
    clock = Clock()
    files: list[bool | None] = [None]
    gate = RaceGate(files_running=lambda: files[0], fetch_window=None, now=clock)
    assert gate.running() is None
    files[0] = True
    assert gate.running() == "the race now has started and not ended in FPVTrackside's files"
    gate.heard("RaceEnd")
    assert gate.running() is None  # ExtensionMode's word wins over a file not yet read again
    gate.heard("DetectionExt")  # not about a race's start or end
    assert gate.running() is None
    gate.heard("RaceStart")
    files[0] = False
    assert gate.running() == "FPVTrackside says a race is running"
    gate.heard("RaceCancelled")
    assert gate.running() is None
    gate.heard("RaceStart")
    clock.t += EXTENSION_HELD  # an hour without a word: the files again
    assert gate.running() is None
    gate.heard(["RaceStart"])  # hostile: not a string
    assert gate.running() is None


def test_fetches_stand_in_only_when_nothing_else_knows_and_only_within_the_window() -> None:
    clock = Clock()
    fetched: list[float | None] = [None]
    gate = RaceGate(last_fetch=lambda: fetched[0], fetch_window=300.0, now=clock)
    assert gate.running() is None
    fetched[0] = clock.t - 299.9
    assert gate.running() == "spectators fetched in the last 5 min"
    fetched[0] = clock.t - 300.0
    assert gate.running() is None
    off = RaceGate(last_fetch=lambda: clock.t, fetch_window=None, now=clock)
    assert off.running() is None
    told = RaceGate(files_running=lambda: False, last_fetch=lambda: clock.t, now=clock)
    assert told.running() is None  # the files say none runs


def test_the_pace_while_race_data_flows() -> None:
    clock = Clock()
    pushed: list[float | None] = [clock.t]
    gate = RaceGate(last_push=lambda: pushed[0], rate=100_000, now=clock)
    pace = Pace(gate, clock=clock)
    assert pace.chunk(4_000_000) == (100_000, 0.0)  # one second's worth at most
    clock.t += 0.25
    size, wait = pace.chunk(4_000_000)
    assert size == 100_000 and wait == pytest.approx(0.75)  # 100 kB a second on average
    clock.t += 0.75 + 2.0  # the range took two seconds to come: no wait
    assert pace.chunk(4_000_000) == (100_000, 0.0)
    clock.t += DATA_WINDOW  # no fetch or push for 30 s: the whole chunk, at once
    assert pace.chunk(4_000_000) == (4_000_000, 0.0)
    uncapped = Pace(RaceGate(last_push=lambda: clock.t, rate=None, now=clock), clock=clock)
    assert uncapped.chunk(4_000_000) == (4_000_000, 0.0)


async def test_wait_returns_at_once_without_a_race_and_says_why_with_one() -> None:
    clock = Clock()
    gate = RaceGate(poll=0.01, now=clock)
    said: list[str] = []
    assert await gate.wait(said.append) is False and said == []
    gate.heard("RaceStart")
    gate.heard("RaceEnd")
    assert await gate.wait(said.append) is False
