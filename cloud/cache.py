"""The relay's response cache: bounded by entries and by bytes, least recently used out first.

Entries are keyed by (pits id, method, path) and hold what the pits sent: the body, its ETag and
when it was fetched (the content type follows from the path, never from the pits). Time is
passed in, so freshness is tested without sleeping.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from wire import ErrorCode

CacheKey = tuple[str, str, str]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One cached response."""

    body: bytes
    etag: str
    fetched_at: float

    def age(self, now: float) -> float:
        return max(0.0, now - self.fetched_at)


@dataclass(frozen=True, kw_only=True)
class Served:
    """What a public request gets: a body (maybe stale) and how the cache came by it."""

    status: int
    body: bytes
    etag: str | None
    fetched_at: float
    cache: str  # HIT, MISS, REVALIDATED or STALE
    ttl: float
    stale_reason: ErrorCode | None = None


@dataclass
class CacheStats:
    """Counters over the cache's life."""

    entries: int = 0
    bytes: int = 0
    evictions: int = 0


class Cache:
    """An LRU map of Entry, bounded by `max_entries` and `max_bytes` of bodies."""

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: CacheKey, entry: Entry) -> bool:
        """Store an entry; False when it alone is larger than the cache."""
        self._remove(key)
        size = len(entry.body)
        if size > self.max_bytes:
            return False
        self._entries[key] = entry
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            old_key, _ = next(iter(self._entries.items()))
            self._remove(old_key)
            self.evictions += 1
        return True

    def refresh(self, key: CacheKey, now: float) -> Entry | None:
        """The pits confirmed the entry unchanged (304): it is fresh again from `now`."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry = replace(entry, fetched_at=now)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        return entry

    def forget(self, key: CacheKey) -> None:
        """Drop one entry (a newer body is elsewhere: the shared cache has it)."""
        self._remove(key)

    def purge(self, pits_id: str | None = None, prefix: str = "/") -> int:
        """Remove entries of one pits (or all) whose path starts with `prefix`; returns count."""
        doomed = [
            k
            for k in self._entries
            if (pits_id is None or k[0] == pits_id) and k[2].startswith(prefix)
        ]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)

    def stats(self) -> CacheStats:
        return CacheStats(entries=len(self._entries), bytes=self._bytes, evictions=self.evictions)
