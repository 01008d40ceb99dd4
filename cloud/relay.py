"""Serving public requests from the cache and the pits: freshness, coalescing, stale copies.

One revalidation per cache key is in flight at a time; every request for that key that arrives
meanwhile waits on it, so 1,000 simultaneous requests for one path make one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from cloud.cache import Cache, CacheKey, Entry, Served
from cloud.cluster import Cluster
from cloud.control import PitsConnection
from cloud.drift import DriftWatch
from cloud.metrics import Metrics
from cloud.ratelimit import RateLimited, RateLimiter, SharedLimiter
from cloud.registry import Registry
from wire import ErrorCode, ProtocolError
from wire.canonical import check_json, etag_of, is_json_path
from wire.errors import STALE_OK
from wire.flights import Flights
from wire.messages import Fetch
from wire.paths import Allowlist

log = logging.getLogger("pitlink.cloud.relay")
audit = logging.getLogger("pitlink.cloud.audit")


class Freshness:
    """How long a cached copy is served without asking the pits: per-path rules, then default."""

    def __init__(self, default: float = 1.0, rules: Iterable[tuple[str, float]] = ()):
        self.default = default
        self.rules = [(Allowlist([pattern]), float(seconds)) for pattern, seconds in rules]

    def ttl(self, path: str) -> float:
        for matcher, seconds in self.rules:
            if matcher.allows(path):
                return seconds
        return self.default


def _served(entry: Entry, cache: str, ttl: float, reason: ErrorCode | None = None) -> Served:
    return Served(
        status=200,
        body=entry.body,
        etag=entry.etag,
        fetched_at=entry.fetched_at,
        cache=cache,
        ttl=ttl,
        stale_reason=reason,
    )


# Answers from a pits that say the path has nothing to serve now. Remembered for the path's
# freshness window, so that asking again and again for what is not there costs no fetch.
NEGATIVE = frozenset(
    {
        ErrorCode.DENIED,
        ErrorCode.BAD_REQUEST,
        ErrorCode.BAD_CONTENT,
        ErrorCode.TOO_LARGE,
        ErrorCode.ORIGIN_UNREACHABLE,
        ErrorCode.INTERNAL,
    }
)
MAX_NEGATIVE = 10_000


class PushedCopies(Protocol):
    """What the relay asks of the boxes that push (cloud.push.PushIntake): is a copy confirmed
    by its box lately, and who reads what."""

    def note(self, pits_id: str, path: str, now: float) -> None: ...

    def confirmed(self, pits_id: str, path: str, entry: Entry, now: float) -> bool: ...

    def pushed_since(self, pits_id: str, path: str, since: float) -> Entry | None: ...


class Relay:
    """Answers (pits id, normalized path) from the cache, revalidating with the pits when due."""

    def __init__(
        self,
        *,
        registry: Registry[PitsConnection],
        cache: Cache,
        metrics: Metrics,
        freshness: Freshness,
        fetch_timeout: float = 8.0,
        pits_limiter: RateLimiter | None = None,
        miss_limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        drift: DriftWatch | None = None,
    ):
        self.registry = registry
        self.drift = drift
        self.cache = cache
        self.metrics = metrics
        self.freshness = freshness
        self.fetch_timeout = fetch_timeout
        no_limit = RateLimiter(None)
        pits = no_limit if pits_limiter is None else pits_limiter  # (an empty limiter is falsy)
        self.pits_limits = SharedLimiter(pits, "pits", clock=clock)
        # Per client: requests that would start a fetch. Well below the per-pits budget, so
        # that a few spectators asking for random paths cannot spend a whole pits' budget.
        miss = no_limit if miss_limiter is None else miss_limiter
        self.miss_limits = SharedLimiter(miss, "miss", clock=clock)
        self.clock = clock
        self._flights: Flights[CacheKey, asyncio.Future[Served]] = Flights()
        self._negative: OrderedDict[CacheKey, tuple[float, Served | ProtocolError]] = OrderedDict()
        self.cluster: Cluster | None = None  # see share()
        self.push: PushedCopies | None = None  # the boxes that push (cloud.push)
        self.waiting = 0  # public requests waiting on a revalidation

    def share(self, cluster: Cluster) -> None:
        """Replicas share Redis: the shared cache, other replicas' pits, shared limits."""
        self.cluster = cluster
        self.pits_limits.remote = self.miss_limits.remote = cluster.limits

    @property
    def flights(self) -> int:
        """Keys with a revalidation in flight."""
        return len(self._flights)

    def fresh(self, pits_id: str, path: str) -> tuple[Entry, float, float] | None:
        """(entry, freshness window, now) when the cache holds `path` fresh, else None.

        The fast path of a hit (cloud.hits) asks this; it counts the hit itself.
        """
        entry, ttl, now = self._lookup((pits_id, "GET", path))
        push = self.push
        if push is not None:
            push.note(pits_id, path, now)
        if entry is not None and self._fresh(pits_id, path, entry, ttl, now):
            return entry, ttl, now
        return None

    def _fresh(self, pits_id: str, path: str, entry: Entry, ttl: float, now: float) -> bool:
        """Within its freshness window, or a copy its box confirms (a watched path it pushes)."""
        if entry.age(now) < ttl:
            return True
        return self.push is not None and self.push.confirmed(pits_id, path, entry, now)

    def pushed(self, pits_id: str, path: str, body: bytes, etag: str) -> Entry:
        """A body its box pushed (checked by cloud.push): the cache entry, fetched now."""
        key: CacheKey = (pits_id, "GET", path)
        entry = Entry(body=body, etag=etag, fetched_at=self.clock())
        self.cache.put(key, entry)
        self._negative.pop(key, None)
        return entry

    def _lookup(self, key: CacheKey) -> tuple[Entry | None, float, float]:
        """(the cached entry or None, the path's freshness window, now)."""
        return self.cache.get(key), self.freshness.ttl(key[2]), self.clock()

    async def get(
        self,
        pits_id: str,
        path: str,
        *,
        request_id: str,
        local_only: bool = False,
        client: str | None = None,
    ) -> Served:
        """Serve one public GET or HEAD; raises ProtocolError when there is nothing to serve.

        `local_only`: do not send the request on to another replica (it came from one).
        `client`: who asks, charged for a request that starts a fetch (the miss budget).
        """
        key: CacheKey = (pits_id, "GET", path)
        entry, ttl, now = self._lookup(key)
        if self.push is not None:
            self.push.note(pits_id, path, now)
        if entry is not None and self._fresh(pits_id, path, entry, ttl, now):
            self.metrics.cache_hits.inc()
            return _served(entry, "HIT", ttl)
        negative = self._negative_answer(key, entry, ttl, now)
        if negative is not None:
            return negative
        flight = self._flights.get(key)
        if flight is None and client is not None:
            wait = await self.miss_limits.wait(client)
            if wait:
                self.metrics.rate_limited.labels("miss").inc()
                if entry is not None:
                    self.metrics.cache_stale.inc()
                    return _served(entry, "STALE", ttl, ErrorCode.BUSY)
                raise RateLimited(
                    "too many requests for what is not in the cache from this address", wait
                )
            flight = self._flights.get(key)  # another request may have started it meanwhile
        if flight is None:
            flight = self._flights.join(
                key,
                lambda: asyncio.ensure_future(
                    self._revalidate(key, entry, ttl, request_id, local_only)
                ),
            )
        # A caller that goes away must not cancel the fetch the others are waiting on.
        self.waiting += 1
        try:
            served = await asyncio.shield(flight)
        finally:
            self.waiting -= 1
        if served.cache == "HIT":
            self.metrics.cache_hits.inc()
        elif served.cache == "STALE":
            self.metrics.cache_stale.inc()
        elif served.cache == "REVALIDATED":
            self.metrics.cache_revalidations.inc()
        else:
            self.metrics.cache_misses.inc()
        return served

    def _negative_answer(
        self, key: CacheKey, entry: Entry | None, ttl: float, now: float
    ) -> Served | None:
        """A negative answer still within its window: the stale copy, the answer, or its error."""
        remembered = self._negative.get(key)
        if remembered is None:
            return None
        until, answer = remembered
        if now >= until:
            del self._negative[key]
            return None
        self.metrics.cache_negative.inc()
        if entry is not None:
            self.metrics.cache_stale.inc()
            code = answer.code if isinstance(answer, ProtocolError) else None
            return _served(entry, "STALE", ttl, code)
        if isinstance(answer, ProtocolError):
            raise ProtocolError(answer.code, answer.message)
        return answer

    def _remember_negative(self, key: CacheKey, answer: Served | ProtocolError, ttl: float) -> None:
        if ttl <= 0:
            return
        self._negative[key] = (self.clock() + ttl, answer)
        self._negative.move_to_end(key)
        while len(self._negative) > MAX_NEGATIVE:
            self._negative.popitem(last=False)

    async def _revalidate(
        self, key: CacheKey, entry: Entry | None, ttl: float, request_id: str, local_only: bool
    ) -> Served:
        pits_id, _, path = key
        started = self.clock()
        status: int | None = None
        code: ErrorCode | None = None
        if entry is None and self.cluster is not None:
            # A replica that just started, or evicted this: the shared cache may have it.
            shared = await self.cluster.cache.get(pits_id, path)
            if shared is not None:
                body, etag, age = shared
                entry = Entry(body=body, etag=etag, fetched_at=self.clock() - age)
                self.cache.put(key, entry)
                if age < ttl:
                    return _served(entry, "HIT", ttl)
        try:
            served = await self._fetch(key, entry, ttl, request_id, local_only)
            status = served.status
            if served.status != 200:
                self._remember_negative(key, served, ttl)
            else:
                self._negative.pop(key, None)
            return served
        except ProtocolError as exc:
            code = exc.code
            if exc.code in NEGATIVE and not isinstance(exc, RateLimited):
                self._remember_negative(key, exc, ttl)
            if entry is not None and exc.code in STALE_OK:
                log.warning(
                    "serving stale copy",
                    extra={"pits_id": pits_id, "path": path, "code": str(exc.code)},
                )
                status = 200
                return _served(entry, "STALE", ttl, exc.code)
            raise
        finally:
            audit.info(
                "fetch",
                extra={
                    "pits_id": pits_id,
                    "request_id": request_id,
                    "path": path,
                    "status": status,
                    "code": None if code is None else str(code),
                    "latency_ms": round((self.clock() - started) * 1000, 1),
                },
            )

    async def _fetch(
        self, key: CacheKey, entry: Entry | None, ttl: float, request_id: str, local_only: bool
    ) -> Served:
        pits_id, method, path = key
        conn = self.registry.get(pits_id)
        if conn is None and self.cluster is not None and not local_only:
            node = await self.cluster.holder(pits_id)
            if node is not None and node != self.cluster.node_id:
                return await self._forward(node, key, entry, ttl, request_id)
        if conn is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"pits {pits_id} is not connected")
        if conn.paused:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"pits {pits_id} is paused by an admin")
        wait = await self.pits_limits.wait(pits_id)
        if wait:
            self.metrics.rate_limited.labels("pits").inc()
            raise RateLimited(f"fetch rate limit of pits {pits_id} reached", wait)
        fetch = Fetch(
            method=method,
            path=path,
            timeout_ms=max(1, int(self.fetch_timeout * 1000) - 250),
            if_none_match=entry.etag if entry is not None else None,
        )
        asked = self.clock()
        reply = await conn.fetch(fetch, self.fetch_timeout, frame_id=request_id)
        now = self.clock()
        newer = None if self.push is None else self.push.pushed_since(pits_id, path, asked)
        if newer is not None:
            # The box pushed this path while the fetch was on its way: its body is newer than
            # the reply's (which may have been read before), and is the cache entry already.
            return _served(newer, "HIT", ttl)
        if reply.status == 304 and entry is not None and reply.etag in (None, entry.etag):
            self.metrics.cache_bytes_saved.inc(len(entry.body))
            refreshed = self.cache.refresh(key, now)
            if refreshed is None:  # purged or evicted meanwhile: keep what we know is current
                refreshed = Entry(body=entry.body, etag=entry.etag, fetched_at=now)
                self.cache.put(key, refreshed)
            if self.cluster is not None:
                await self.cluster.cache.put(pits_id, path, refreshed.body, refreshed.etag, 0.0)
            return _served(refreshed, "REVALIDATED", ttl)
        body = reply.body if reply.body is not None else b""
        if reply.status != 200:
            if reply.status == 304:
                raise ProtocolError(
                    ErrorCode.INTERNAL, "pits answered 304 to an unconditional fetch"
                )
            return Served(
                status=reply.status, body=body, etag=None, fetched_at=now, cache="MISS", ttl=0.0
            )
        etag = etag_of(body)
        if reply.etag is not None and reply.etag != etag:
            raise ProtocolError(ErrorCode.BAD_CONTENT, "body does not match its ETag")
        if is_json_path(path):
            # Judged from the body itself, once per new body: a label from the pits proves nothing.
            check_json(body)
            if self.drift is not None:
                self.drift.seen(pits_id, path, body)  # a warning at most: it is still served
        fresh = Entry(body=body, etag=etag, fetched_at=now)
        self.cache.put(key, fresh)
        if self.cluster is not None:
            await self.cluster.cache.put(pits_id, path, body, etag, 0.0)
        return _served(fresh, "MISS", ttl)

    async def _forward(
        self, node: str, key: CacheKey, entry: Entry | None, ttl: float, request_id: str
    ) -> Served:
        """Fetch through the replica that holds the pits connection."""
        assert self.cluster is not None
        pits_id, _, path = key
        self.metrics.forwarded.inc()
        remote = await self.cluster.forward(
            node,
            pits_id,
            path,
            entry.etag if entry is not None else None,
            self.fetch_timeout,
            request_id,
        )
        now = self.clock()
        if remote.body is None and entry is not None and remote.etag == entry.etag:
            refreshed = Entry(body=entry.body, etag=entry.etag, fetched_at=now - remote.age)
            self.cache.put(key, refreshed)
            return _served(refreshed, "REVALIDATED", ttl)
        body = remote.body or b""
        if remote.status != 200:
            return Served(
                status=remote.status, body=body, etag=None, fetched_at=now, cache="MISS", ttl=0.0
            )
        if remote.etag != etag_of(body):
            raise ProtocolError(
                ErrorCode.BAD_CONTENT, "body from the other replica does not match its ETag"
            )
        fresh = Entry(body=body, etag=remote.etag, fetched_at=now - remote.age)
        self.cache.put(key, fresh)
        return _served(fresh, "MISS", ttl)
