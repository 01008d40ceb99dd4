"""Token-bucket rate limits per key (a client, a pits).

Time is passed in, so the limits are tested without sleeping. Buckets are kept per key in a
bounded map, so a flood of distinct keys cannot grow memory without end; and a full map never
forgets a bucket that is still spending down, so that rotating keys (addresses) cannot turn
the bound into fresh bursts: newcomers then share one bucket until room is made.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from wire import ErrorCode, ProtocolError
from wire.budget import TokenBucket


class RateLimiter:
    """One bucket per key; `rate` None or 0 turns the limit off."""

    def __init__(self, rate: float | None, burst: float | None = None, *, max_keys: int = 100_000):
        self.rate = rate or None
        self.burst = max(1.0, burst if burst else (rate or 1.0))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._overflow: TokenBucket | None = None  # shared by newcomers while the map is full

    def check(self, key: str, now: float) -> float:
        """0.0 if allowed, else the seconds to wait (for Retry-After)."""
        if self.rate is None:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket.take(now)
        if len(self._buckets) >= self.max_keys:
            # Forget the least recently used bucket only if it has filled up again (it is then
            # no different from a new one); else the newcomer shares the overflow bucket.
            oldest = next(iter(self._buckets.values()))
            if not oldest.full(now):
                if self._overflow is None:
                    self._overflow = TokenBucket(self.rate, self.burst, now)
                return self._overflow.take(now)
            self._buckets.popitem(last=False)
        bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimited(ProtocolError):
    """A request refused by one of the relay's own limits: answered 429 with `Retry-After`.

    Only the relay raises this; what a pits says can never choose a status line or a wait.
    """

    def __init__(self, message: str, retry_after: float):
        super().__init__(ErrorCode.BUSY, message)
        self.retry_after = retry_after


class RemoteLimits(Protocol):
    """Limits kept where every replica sees them (cloud.shared_limits.SharedLimits)."""

    async def rate_check(self, scope: str, key: str, rate: float, burst: float) -> float | None: ...


class SharedLimiter:
    """A rate limit shared by the replicas while Redis answers, and this replica's own otherwise.

    The one place that decides between the two; the relay keeps one per scope (`client`,
    `miss`, `pits`).
    """

    def __init__(
        self, local: RateLimiter, scope: str, *, clock: Callable[[], float] = time.monotonic
    ):
        self.local = local
        self.scope = scope
        self.clock = clock
        self.remote: RemoteLimits | None = None

    def check_here(self, key: str) -> float | None:
        """As `wait`, decided without waiting: None when only Redis can say (replicas share it)."""
        if self.local.rate is None:
            return 0.0
        if self.remote is not None:
            return None
        return self.local.check(key, self.clock())

    async def wait(self, key: str) -> float:
        """0.0 if allowed, else the seconds to wait (for Retry-After)."""
        rate = self.local.rate
        if rate is None:
            return 0.0
        if self.remote is not None:
            wait = await self.remote.rate_check(self.scope, key, rate, self.local.burst)
            if wait is not None:
                return wait
        return self.local.check(key, self.clock())
