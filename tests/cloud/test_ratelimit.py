"""Token buckets, with time passed in."""

from __future__ import annotations

import pytest

from cloud.ratelimit import RateLimiter, TokenBucket


def test_bucket_allows_a_burst_then_paces() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_bucket_never_saves_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) > 0.0


def test_limiter_keys_are_independent() -> None:
    limiter = RateLimiter(1.0, 1.0)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) == pytest.approx(1.0)
    assert limiter.check("b", 0.0) == 0.0


@pytest.mark.parametrize("rate", [None, 0, 0.0])
def test_limiter_off(rate) -> None:
    limiter = RateLimiter(rate)
    assert all(limiter.check("a", 0.0) == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1.0, max_keys=100)
    for i in range(1000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100
    # Buckets still spending down are kept; a newcomer then shares the overflow bucket.
    assert limiter.check("10.0.0.1", 0.0) > 0.0
    assert limiter.check("10.0.3.231", 0.0) > 0.0


def test_rotating_keys_gets_no_fresh_bursts() -> None:
    """The attack: a table full of drained buckets, then one new address after another, each
    hoping for a fresh burst. They share one bucket: the burst once, then the rate."""
    limiter = RateLimiter(1.0, 5.0, max_keys=4)
    for key in "abcd":
        for _ in range(5):
            assert limiter.check(key, 0.0) == 0.0
    allowed = sum(limiter.check(f"rotated-{i}", 0.0) == 0.0 for i in range(1000))
    assert allowed == 5  # one burst in all, not one per address
    assert len(limiter) == 4
    # The held keys are still limited: none was evicted to make room.
    assert all(limiter.check(key, 0.0) > 0.0 for key in "abcd")


def test_a_full_table_makes_room_by_forgetting_a_refilled_bucket() -> None:
    limiter = RateLimiter(1.0, 2.0, max_keys=2)
    limiter.check("a", 0.0)
    limiter.check("b", 1.0)
    # At t=2 "a" has its whole burst back: it is forgotten, losing nothing, for "c".
    assert limiter.check("c", 2.0) == 0.0
    assert len(limiter) == 2
    assert limiter.check("c", 2.0) == 0.0
    assert limiter.check("c", 2.0) > 0.0
