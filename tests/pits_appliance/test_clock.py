"""The box's clock: kept across reboots, taken from the relay when NTP does not get through."""

from __future__ import annotations

from pathlib import Path

import pytest

from pits_appliance.clock import TOLERANCE_S, WallClock, parse_date, read_saved

NOW = 1_800_000_000.0  # 2027-01-15
RELAY_DATE = "Fri, 15 Jan 2027 08:00:00 GMT"
RELAY_TIME = 1_800_000_000.0 - (1_800_000_000 % 86400) + 8 * 3600


class Box:
    """A clock the test moves, and a record of what the box set it to."""

    def __init__(self, now: float):
        self.now = now
        self.set_to: list[float] = []

    def __call__(self) -> float:
        return self.now

    def set_time(self, when: float) -> None:
        self.set_to.append(when)
        self.now = when


def clock(tmp_path: Path, box: Box, *, may_set: bool = True, synced: bool = False) -> WallClock:
    flag = tmp_path / "synchronized"
    if synced:
        flag.touch()
    return WallClock(
        saved=tmp_path / "state" / "clock",
        may_set=may_set,
        ntp_flag=flag,
        now=box,
        set_time=box.set_time,
    )


def test_dates_as_http_sends_them() -> None:
    assert parse_date(RELAY_DATE) == RELAY_TIME
    assert parse_date("Friday, 15-Jan-27 08:00:00 GMT") == RELAY_TIME  # the obsolete RFC 850 form
    for bad in (None, "", "yesterday", "Fri, 15 Jan 2027 08:00:00", "x" * 200):
        assert parse_date(bad) is None


def test_a_clock_years_behind_is_set_forward_and_kept(tmp_path: Path) -> None:
    box = Box(RELAY_TIME - 3 * 365 * 86400)  # a Pi that booted with no idea of the date
    wall = clock(tmp_path, box)
    assert wall.observe(RELAY_DATE) == "set"
    assert box.set_to == [RELAY_TIME]
    assert read_saved(tmp_path / "state" / "clock") == RELAY_TIME  # for the next boot
    assert (tmp_path / "state" / "clock").stat().st_mode & 0o777 == 0o600
    # The next answers agree: it stays "set", and nothing is set again.
    assert wall.observe(RELAY_DATE) == "set"
    assert box.set_to == [RELAY_TIME]


def test_a_clock_ahead_is_never_set_back(tmp_path: Path) -> None:
    box = Box(RELAY_TIME + 3600)
    wall = clock(tmp_path, box)
    assert wall.observe(RELAY_DATE) == "wrong"  # a hostile network could say it is 2019
    assert box.set_to == []
    assert wall.skew == pytest.approx(-3600)


def test_a_box_that_may_not_set_its_clock_says_so(tmp_path: Path) -> None:
    box = Box(RELAY_TIME - 86400)
    wall = clock(tmp_path, box, may_set=False)
    assert wall.observe(RELAY_DATE) == "wrong"
    assert box.set_to == []


def test_ntp_wins(tmp_path: Path) -> None:
    box = Box(RELAY_TIME - 86400)
    wall = clock(tmp_path, box, synced=True)
    assert wall.observe(RELAY_DATE) == "ntp"
    assert box.set_to == []


def test_a_clock_within_the_tolerance_agrees(tmp_path: Path) -> None:
    box = Box(RELAY_TIME + TOLERANCE_S - 1)
    wall = clock(tmp_path, box)
    assert wall.observe(RELAY_DATE) == "agrees"
    assert wall.observe(None) == "agrees"  # no Date this time: what was known stays
    assert wall.observe("not a date") == "agrees"


def test_the_time_is_saved_now_and_then_and_only_forward(tmp_path: Path) -> None:
    box = Box(RELAY_TIME)
    wall = clock(tmp_path, box)
    saved = tmp_path / "state" / "clock"
    wall.save()
    assert not saved.exists()  # nothing is known yet: nothing is kept
    wall.observe(RELAY_DATE)
    wall.save()
    assert read_saved(saved) == RELAY_TIME
    box.now += 60
    wall.save()
    assert read_saved(saved) == RELAY_TIME  # not yet ten minutes
    box.now += 600
    wall.save()
    assert read_saved(saved) == RELAY_TIME + 660
    saved.write_text(f"{int(RELAY_TIME + 99999)}\n")  # a later time kept: never overwritten
    box.now += 600
    wall.save()
    assert read_saved(saved) == RELAY_TIME + 99999


def test_a_damaged_saved_time_is_no_time(tmp_path: Path) -> None:
    for damaged in (b"tomorrow\n", b"\xff\xfe", b"nan\n", b"inf\n", b"1" * 5000, b""):
        (tmp_path / "clock").write_bytes(damaged)
        assert read_saved(tmp_path / "clock") is None, damaged
    (tmp_path / "clock").write_bytes(b"1800000000" + b" " * 2000)  # past its bound: not read
    assert read_saved(tmp_path / "clock") is None
    assert read_saved(tmp_path / "none") is None
    assert read_saved(None) is None
