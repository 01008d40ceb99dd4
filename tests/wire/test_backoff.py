"""Reconnect backoff: exponential ceilings, full jitter, reset after a stable connection.

Randomness is injected and time is passed in: nothing here sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from wire.backoff import Backoff

CEILINGS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]


def const(value: float) -> Callable[[], float]:
    return lambda: value


def draws(n: int, backoff: Backoff) -> list[float]:
    return [backoff.next_delay() for _ in range(n)]


def test_defaults() -> None:
    backoff = Backoff()
    assert (backoff.base, backoff.cap, backoff.reset_after) == (1.0, 60.0, 60.0)
    assert backoff.attempt == 0


def test_ceilings_double_up_to_the_cap() -> None:
    assert draws(len(CEILINGS), Backoff(rand=const(1.0))) == CEILINGS


def test_zero_draw_is_zero_delay() -> None:
    assert draws(len(CEILINGS), Backoff(rand=const(0.0))) == [0.0] * len(CEILINGS)


def test_half_draw_is_half_the_ceiling() -> None:
    assert draws(len(CEILINGS), Backoff(rand=const(0.5))) == [c / 2 for c in CEILINGS]


def test_each_draw_scales_its_own_ceiling() -> None:
    values: Iterator[float] = iter([0.25, 1.0, 0.0, 0.75, 0.5, 0.1, 0.9])
    backoff = Backoff(rand=lambda: next(values))
    assert draws(7, backoff) == pytest.approx([0.25, 2.0, 0.0, 6.0, 8.0, 3.2, 54.0])


def test_ceiling_method() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.ceiling() == 1.0
    backoff.next_delay()
    backoff.next_delay()
    assert backoff.attempt == 2
    assert backoff.ceiling() == 4.0


@pytest.mark.parametrize("attempt", [63, 64, 1000, 10**6, 10**18])
def test_ceiling_never_overflows(attempt: int) -> None:
    assert Backoff().ceiling(attempt) == 60.0


def test_many_attempts_stay_at_the_cap() -> None:
    backoff = Backoff(rand=const(1.0))
    assert set(draws(500, backoff)[6:]) == {60.0}


def test_custom_base_and_cap() -> None:
    backoff = Backoff(base=0.5, cap=5.0, rand=const(1.0))
    assert draws(6, backoff) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_base_equal_to_cap() -> None:
    assert draws(4, Backoff(base=3.0, cap=3.0, rand=const(1.0))) == [3.0] * 4


def test_full_jitter_range_with_real_randomness() -> None:
    rng = random.Random(20250129)
    backoff = Backoff(rand=rng.random)
    for _ in range(6):
        backoff.next_delay()
    delays = draws(2000, backoff)
    # Uniform over [0, cap): the whole range is used, not just the top of it.
    assert all(0.0 <= d <= 60.0 for d in delays)
    assert min(delays) < 3.0
    assert max(delays) > 57.0
    assert 25.0 < sum(delays) / len(delays) < 35.0


def test_full_jitter_bounded_by_each_ceiling() -> None:
    rng = random.Random(7)
    for _ in range(200):
        backoff = Backoff(rand=rng.random)
        for ceiling in CEILINGS:
            assert 0.0 <= backoff.next_delay() <= ceiling


@pytest.mark.parametrize("lived", [60.0, 60.5, 3600.0])
def test_reset_after_a_stable_connection(lived: float) -> None:
    backoff = Backoff(rand=const(1.0))
    assert draws(5, backoff) == CEILINGS[:5]
    backoff.connected(now=1000.0)
    backoff.disconnected(now=1000.0 + lived)
    assert backoff.attempt == 0
    assert draws(3, backoff) == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("lived", [0.0, 1.0, 30.0, 59.999])
def test_no_reset_after_a_short_connection(lived: float) -> None:
    backoff = Backoff(rand=const(1.0))
    draws(5, backoff)
    backoff.connected(now=1000.0)
    backoff.disconnected(now=1000.0 + lived)
    assert backoff.attempt == 5
    assert backoff.next_delay() == 32.0


def test_custom_reset_after() -> None:
    backoff = Backoff(reset_after=5.0, rand=const(1.0))
    draws(4, backoff)
    backoff.connected(now=10.0)
    backoff.disconnected(now=14.9)
    assert backoff.attempt == 4
    backoff.connected(now=20.0)
    backoff.disconnected(now=25.0)
    assert backoff.attempt == 0


def test_disconnect_without_connect_does_not_reset() -> None:
    backoff = Backoff(rand=const(1.0))
    draws(4, backoff)
    backoff.disconnected(now=10_000.0)
    assert backoff.attempt == 4


def test_connection_time_is_forgotten_after_a_disconnect() -> None:
    backoff = Backoff(rand=const(1.0))
    backoff.connected(now=0.0)
    backoff.disconnected(now=1.0)
    draws(4, backoff)
    # A second drop without a new connection is not measured from the old one.
    backoff.disconnected(now=500.0)
    assert backoff.attempt == 4


def test_only_the_latest_connection_counts() -> None:
    backoff = Backoff(rand=const(1.0))
    draws(3, backoff)
    backoff.connected(now=0.0)
    backoff.connected(now=100.0)
    backoff.disconnected(now=130.0)
    assert backoff.attempt == 3


def test_reset() -> None:
    backoff = Backoff(rand=const(1.0))
    draws(9, backoff)
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 1.0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 30.0), (0.5, 45.0), (1.0, 60.0)])
def test_slow_delay_between_half_cap_and_cap(draw: float, expected: float) -> None:
    assert Backoff(rand=const(draw)).slow_delay() == expected


def test_slow_delay_with_real_randomness() -> None:
    backoff = Backoff(rand=random.Random(3).random)
    delays = [backoff.slow_delay() for _ in range(1000)]
    assert all(30.0 <= d <= 60.0 for d in delays)
    assert min(delays) < 32.0
    assert max(delays) > 58.0


def test_slow_delay_uses_the_cap_of_a_custom_schedule() -> None:
    assert Backoff(base=0.1, cap=10.0, rand=const(0.0)).slow_delay() == 5.0


def test_after_a_slow_delay_the_schedule_stays_at_the_cap() -> None:
    backoff = Backoff(rand=const(1.0))
    backoff.slow_delay()
    assert backoff.ceiling() == 60.0
    assert backoff.next_delay() == 60.0
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_slow_delay_does_not_lower_a_later_attempt() -> None:
    backoff = Backoff(rand=const(1.0))
    backoff.attempt = 100
    backoff.slow_delay()
    assert backoff.attempt == 100


@pytest.mark.parametrize(
    ("base", "cap"),
    [(0.0, 60.0), (-1.0, 60.0), (2.0, 1.0), (1.0, 0.0), (1.0, -5.0), (0.0, 0.0)],
)
def test_invalid_base_or_cap(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


@pytest.mark.parametrize(("base", "cap"), [(float("nan"), 60.0), (1.0, float("nan"))])
def test_nan_base_or_cap_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def test_default_rand_is_full_jitter() -> None:
    backoff = Backoff()
    for ceiling in CEILINGS:
        assert 0.0 <= backoff.next_delay() <= ceiling
