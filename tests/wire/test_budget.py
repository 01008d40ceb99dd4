"""The token bucket and the log throttle, with time passed in."""

from __future__ import annotations

from wire.budget import Throttle, TokenBucket


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 1.0
    assert bucket.take(1.0) == 0.0
    assert bucket.take(1.0) > 0


def test_bucket_with_no_rate_never_refills() -> None:
    bucket = TokenBucket(rate=0.0, burst=1.0, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(1e9) == float("inf")


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0  # no tokens minted by time running back


def test_throttle_lets_one_line_a_second_through_and_counts_the_rest() -> None:
    throttle = Throttle(1.0)
    assert throttle.allow("accept", 0.0) == 0
    assert [throttle.allow("accept", 0.1 * i) for i in range(1, 10)] == [None] * 9
    assert throttle.allow("accept", 1.0) == 9
    assert throttle.allow("accept", 1.5) is None
    assert throttle.allow("accept", 2.0) == 1


def test_throttle_keeps_kinds_apart_and_bounded() -> None:
    throttle = Throttle(1.0, max_kinds=2)
    assert throttle.allow("a", 0.0) == 0
    assert throttle.allow("b", 0.0) == 0
    assert throttle.allow("a", 0.5) is None
    assert throttle.allow("c", 0.5) == 0  # "b", least recently seen, is forgotten
    assert throttle.allow("b", 0.5) == 0
    assert len(throttle._kinds) == 2
