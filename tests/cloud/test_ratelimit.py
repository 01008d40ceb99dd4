"""Token buckets and client addresses, with time passed in."""

from __future__ import annotations

import pytest

from cloud.ratelimit import RateLimiter, TokenBucket, client_ip, parse_networks


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
    # The most recent keys are kept: the last one is still limited.
    assert limiter.check("10.0.3.231", 0.0) > 0.0


TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("remote", "header", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1, 10.1.2.3", "198.51.100.1"),  # through two proxies
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # client-written left part
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # all trusted: the leftmost
    ],
)
def test_client_ip(remote: str, header: str | None, expected: str) -> None:
    assert client_ip(remote, header, TRUSTED) == expected


def test_parse_networks_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_networks(["not-a-network"])
