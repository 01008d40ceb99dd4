"""The relay's cache: bounded by entries and by bytes, least recently used out first."""

from __future__ import annotations

import pytest

from cloud.cache import Cache, CacheKey, Entry


def entry(body: bytes = b"[]", *, etag: str = '"e"', at: float = 100.0) -> Entry:
    return Entry(body=body, etag=etag, fetched_at=at)


def key(path: str, pits: str = "p1") -> CacheKey:
    return (pits, "GET", path)


def keys_of(cache: Cache, candidates: list[CacheKey]) -> list[CacheKey]:
    """Which of `candidates` are present (without touching recency more than get() does)."""
    return [k for k in candidates if cache.get(k) is not None]


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Cache(max_entries=0)
    with pytest.raises(ValueError):
        Cache(max_bytes=0)


def test_put_then_get() -> None:
    cache = Cache()
    e = entry(b"[1]")
    assert cache.put(key("/a"), e) is True
    assert cache.get(key("/a")) == e
    assert cache.get(key("/a", pits="p2")) is None
    assert cache.get(("p1", "HEAD", "/a")) is None
    assert len(cache) == 1
    assert cache.bytes == 3


def test_put_replaces_the_entry_of_a_key_and_its_bytes() -> None:
    cache = Cache()
    cache.put(key("/a"), entry(b"x" * 10))
    cache.put(key("/a"), entry(b"y" * 4, etag='"2"'))
    assert len(cache) == 1
    assert cache.bytes == 4
    got = cache.get(key("/a"))
    assert got is not None and got.etag == '"2"'
    assert cache.stats().evictions == 0


def test_lru_by_entries() -> None:
    cache = Cache(max_entries=3)
    ks = [key(f"/{i}") for i in range(4)]
    for k in ks[:3]:
        cache.put(k, entry())
    cache.put(ks[3], entry())
    assert len(cache) == 3
    assert cache.get(ks[0]) is None  # the oldest went
    assert keys_of(cache, ks[1:]) == ks[1:]
    assert cache.stats().evictions == 1


def test_lru_by_bytes() -> None:
    cache = Cache(max_entries=100, max_bytes=100)
    cache.put(key("/a"), entry(b"a" * 40))
    cache.put(key("/b"), entry(b"b" * 40))
    cache.put(key("/c"), entry(b"c" * 40))  # 120 > 100: /a goes
    assert cache.get(key("/a")) is None
    assert cache.bytes == 80
    cache.put(key("/d"), entry(b"d" * 100))  # needs everything else gone
    assert len(cache) == 1
    assert cache.bytes == 100
    assert cache.get(key("/d")) is not None
    assert cache.stats().evictions == 3


def test_get_refreshes_recency() -> None:
    cache = Cache(max_entries=2)
    cache.put(key("/a"), entry())
    cache.put(key("/b"), entry())
    assert cache.get(key("/a")) is not None  # /a is now the most recent
    cache.put(key("/c"), entry())
    assert cache.get(key("/b")) is None
    assert cache.get(key("/a")) is not None
    assert cache.get(key("/c")) is not None


def test_get_of_a_missing_key_changes_nothing() -> None:
    cache = Cache(max_entries=2)
    cache.put(key("/a"), entry())
    cache.put(key("/b"), entry())
    assert cache.get(key("/zzz")) is None
    cache.put(key("/c"), entry())
    assert cache.get(key("/a")) is None
    assert cache.get(key("/b")) is not None


def test_entry_larger_than_the_cache_refused_and_the_rest_left() -> None:
    cache = Cache(max_entries=10, max_bytes=100)
    cache.put(key("/a"), entry(b"a" * 50))
    cache.put(key("/b"), entry(b"b" * 50))
    assert cache.put(key("/big"), entry(b"x" * 101)) is False
    assert cache.get(key("/big")) is None
    assert keys_of(cache, [key("/a"), key("/b")]) == [key("/a"), key("/b")]
    assert cache.bytes == 100
    assert cache.stats().evictions == 0
    assert cache.put(key("/exact"), entry(b"x" * 100)) is True  # exactly the cap fits


def test_refresh_updates_fetched_at_and_keeps_the_rest() -> None:
    cache = Cache()
    cache.put(key("/a"), entry(b"[1]", etag='"t"', at=100.0))
    refreshed = cache.refresh(key("/a"), 250.0)
    assert refreshed is not None
    assert refreshed.fetched_at == 250.0
    assert (refreshed.body, refreshed.etag) == (b"[1]", '"t"')
    got = cache.get(key("/a"))
    assert got is not None and got.fetched_at == 250.0
    assert cache.bytes == 3
    assert len(cache) == 1


def test_refresh_of_a_missing_key_is_none() -> None:
    cache = Cache()
    assert cache.refresh(key("/nope"), 1.0) is None
    assert len(cache) == 0


def test_refresh_refreshes_recency() -> None:
    cache = Cache(max_entries=2)
    cache.put(key("/a"), entry())
    cache.put(key("/b"), entry())
    cache.refresh(key("/a"), 500.0)
    cache.put(key("/c"), entry())
    assert cache.get(key("/b")) is None
    assert cache.get(key("/a")) is not None


@pytest.fixture
def filled() -> Cache:
    cache = Cache()
    for pits in ("p1", "p2"):
        for path in ("/", "/events/e1/Event.json", "/events/e1/r1/Race.json", "/httpfiles/a.js"):
            cache.put(key(path, pits), entry(b"12345"))
    return cache


def test_purge_by_pits_and_prefix(filled: Cache) -> None:
    assert filled.purge("p1", "/events/") == 2
    assert len(filled) == 6
    assert filled.get(key("/events/e1/Event.json", "p1")) is None
    assert filled.get(key("/events/e1/Event.json", "p2")) is not None
    assert filled.get(key("/httpfiles/a.js", "p1")) is not None
    assert filled.bytes == 30
    assert filled.purge("p1", "/events/") == 0


def test_purge_one_pits_entirely(filled: Cache) -> None:
    assert filled.purge("p2") == 4
    assert len(filled) == 4
    assert all(filled.get(key(p, "p2")) is None for p in ("/", "/httpfiles/a.js"))


def test_purge_a_prefix_across_all_pits(filled: Cache) -> None:
    assert filled.purge(None, "/events/e1/r1/") == 2
    assert len(filled) == 6


def test_purge_everything(filled: Cache) -> None:
    assert filled.purge() == 8
    assert len(filled) == 0
    assert filled.bytes == 0


def test_purge_of_an_unknown_pits_removes_nothing(filled: Cache) -> None:
    assert filled.purge("p9") == 0
    assert len(filled) == 8


def test_purge_does_not_count_as_eviction(filled: Cache) -> None:
    filled.purge()
    assert filled.stats().evictions == 0


def test_stats() -> None:
    cache = Cache(max_entries=2)
    assert (cache.stats().entries, cache.stats().bytes, cache.stats().evictions) == (0, 0, 0)
    cache.put(key("/a"), entry(b"aa"))
    cache.put(key("/b"), entry(b"bbb"))
    cache.put(key("/c"), entry(b"cccc"))
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 7, 1)


def test_entry_age_with_an_injected_now() -> None:
    e = entry(at=100.0)
    assert e.age(100.0) == 0.0
    assert e.age(103.5) == 3.5
    assert e.age(99.0) == 0.0  # a clock that went back never gives a negative age
