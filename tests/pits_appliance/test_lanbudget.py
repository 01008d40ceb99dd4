"""The watcher's schedule: intervals, the budget, one request at a time; time injected."""

from __future__ import annotations

import math

import pytest

from pits_appliance.lanbudget import LOOK, RACE_SHARE, Schedule, stretch

pytestmark = pytest.mark.timeout(60)

RACE = "/events/e/r/Race.json"


def run(schedule: Schedule, until: float, *, step: float = 0.001, took: float = 0.005) -> list:
    """Play the watcher's loop with each request taking `took`: [(started, key), ...]."""
    reads = []
    now = 0.0
    while now < until:
        key, wait = schedule.next(now)
        if key is None:
            now += max(step, min(wait, 1.0))
            continue
        reads.append((now, key))
        schedule.done(key, now)
        now += took
    return reads


def rate_of(reads: list, key: str, seconds: float) -> float:
    return sum(1 for _, k in reads if k == key) / seconds


def test_within_the_budget_nothing_stretches() -> None:
    wanted = {RACE: 0.2, "/a": 1.0, "/b": 1.0}
    assert stretch(wanted, 20.0, RACE) == wanted


def test_past_the_budget_the_race_file_keeps_its_interval_and_the_rest_stretch_alike() -> None:
    wanted = {RACE: 0.2, **{f"/p{i}": 1.0 for i in range(30)}}  # 35 requests a second asked
    got = stretch(wanted, 20.0, RACE)
    assert got[RACE] == 0.2  # 5/s, within half the budget
    others = {got[f"/p{i}"] for i in range(30)}
    assert len(others) == 1  # all stretched by the same factor
    assert sum(1 / i for i in got.values()) == pytest.approx(20.0)


def test_a_race_file_asking_more_than_half_the_budget_gets_half() -> None:
    got = stretch({RACE: 0.05, "/a": 1.0}, 10.0, RACE)
    assert got[RACE] == pytest.approx(1 / (10.0 * RACE_SHARE))
    assert got["/a"] == 1.0  # what is left covers it
    assert stretch({RACE: 0.05}, 10.0, RACE) == {RACE: pytest.approx(0.1)}  # alone: all of it


def test_the_schedule_keeps_each_interval_and_the_budget() -> None:
    s = Schedule(budget=20.0, now=0.0)
    s.plan({RACE: 0.2, "/a": 1.0, "/b": 2.0}, RACE, 0.0)
    reads = run(s, 10.0)
    assert rate_of(reads, RACE, 10.0) == pytest.approx(5.0, abs=0.3)
    assert rate_of(reads, "/a", 10.0) == pytest.approx(1.0, abs=0.2)
    assert rate_of(reads, "/b", 10.0) == pytest.approx(0.5, abs=0.2)


def test_over_the_budget_no_more_than_it_and_nobody_starves() -> None:
    s = Schedule(budget=20.0, now=0.0)
    wanted = {RACE: 0.2, **{f"/p{i}": 0.1 for i in range(40)}}  # 405 requests a second asked
    s.plan(wanted, RACE, 0.0)
    reads = run(s, 20.0)
    assert len(reads) <= 20.0 * 20 + 20  # the budget, and its one second's burst
    assert rate_of(reads, RACE, 20.0) == pytest.approx(5.0, abs=0.5)
    each = [rate_of(reads, f"/p{i}", 20.0) for i in range(40)]
    assert min(each) > 0.15 and max(each) < 0.5  # ~15/40 a second each, none starved


def test_one_request_at_a_time() -> None:
    s = Schedule(budget=20.0, now=0.0)
    s.plan({"/a": 1.0, "/b": 1.0}, None, 0.0)
    key, _ = s.next(0.0)
    assert key is not None
    assert s.next(0.0) == (None, math.inf)  # the other waits for this one
    s.done(key, 0.0)
    other, _ = s.next(0.01)
    assert other is not None and other != key


def test_the_budget_is_a_bucket() -> None:
    s = Schedule(budget=2.0, now=0.0, burst=2.0)
    s.plan({f"/p{i}": 0.05 for i in range(10)}, None, 0.0)
    started = []
    for _ in range(2):
        key, _ = s.next(0.0)
        assert key is not None
        started.append(key)
        s.done(key, 0.0)
    key, wait = s.next(0.0)
    assert key is None and wait == pytest.approx(0.5)  # the next token, at 2 a second


def test_a_poke_reads_at_once_and_again_if_a_read_was_under_way() -> None:
    s = Schedule(budget=20.0, now=0.0)
    s.plan({RACE: 0.2, "/a": 5.0}, RACE, 0.0)
    key, _ = s.next(0.0)
    assert key == RACE
    s.poke(RACE, 0.05)  # an event while it was being read: read it again right after
    s.done(RACE, 0.0)
    assert s.next(0.06) == (RACE, 0.0)  # again, not at 0.2 (before /a, due as long: a tie)
    s.done(RACE, 0.06)
    assert s.next(0.07) == ("/a", 0.0)
    s.done("/a", 0.07)
    assert s.next(0.08)[0] is None
    s.poke(RACE, 0.08)
    assert s.next(0.08) == (RACE, 0.0)


def test_the_look_takes_its_turn() -> None:
    s = Schedule(budget=20.0, now=0.0)
    s.plan({RACE: 0.2}, RACE, 0.0)
    assert s.next(0.0, look=0.0) == (RACE, 0.0)  # at a tie the race file first
    s.done(RACE, 0.0)
    assert s.next(0.01, look=0.0) == (LOOK, 0.0)
    s.done(LOOK, 0.01)
    key, wait = s.next(0.02, look=5.0)
    assert key is None and wait == pytest.approx(0.18)


def test_a_new_plan_keeps_deadlines_and_reads_new_paths_at_once() -> None:
    s = Schedule(budget=20.0, now=0.0)
    assert s.plan({"/a": 1.0}, None, 0.0)
    s.done(*(s.next(0.0)[0], 0.0))  # type: ignore[arg-type]
    assert s.plan({"/a": 1.0, "/b": 1.0}, None, 0.5)
    assert s.next(0.5) == ("/b", 0.0)
    assert not s.plan({"/a": 1.0, "/b": 1.0}, None, 0.6)  # nothing changed
    assert s.round_length() == 1.0
    s.plan({}, None, 0.7)
    assert s.next(0.7) == (None, math.inf) and s.round_length() == 0.0
