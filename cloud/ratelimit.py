"""Token-bucket rate limits, and which address a request really came from.

Time is passed in, so the limits are tested without sleeping. Buckets are kept per key in a
bounded LRU map, so a flood of distinct addresses cannot grow memory without end.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from wire import ErrorCode, ProtocolError
from wire.budget import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """One bucket per key; `rate` None or 0 turns the limit off."""

    def __init__(self, rate: float | None, burst: float | None = None, *, max_keys: int = 100_000):
        self.rate = rate or None
        self.burst = max(1.0, burst if burst else (rate or 1.0))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str, now: float) -> float:
        """0.0 if allowed, else the seconds to wait (for Retry-After)."""
        if self.rate is None:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges, e.g. `127.0.0.1`, `10.0.0.0/8`, `::1`."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_ip(remote: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: `X-Forwarded-For` counts only when it came from a trusted proxy.

    Walking the header from the right, the first address that is not a trusted proxy is the
    client; anything to its left could have been written by the client itself.
    """
    if not forwarded_for or not _trusted(remote, trusted):
        return remote
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote
    return hops[0] if hops else remote


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
