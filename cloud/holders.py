"""Which replica holds which pits' connection: a short-lived key the holder refreshes.

A replica that accepts a newer connection of the same pits claims the key and announces it; the
older holder closes its connection (4003). A replica remembers a holder for a second, and a
takeover it hears of updates that at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cloud.replica_messages import Takeover
from cloud.shared import BROADCAST, P, SharedRedis

HOLDER_TTL_S = 10
HOLDER_CACHE_S = 1.0

# Refresh the holder key only while it still names us: a takeover must not be undone.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _key(pits_id: str) -> str:
    return f"{P}holder:{pits_id}"


class Holders:
    """This replica's claims, and what it knows of the others'."""

    def __init__(self, redis: SharedRedis, *, clock: Callable[[], float] = time.monotonic):
        self.redis = redis
        self.clock = clock
        self._known: dict[str, tuple[str, float]] = {}

    @property
    def node_id(self) -> str:
        return self.redis.node_id

    async def set(self, pits_id: str) -> None:
        await self.redis.call(
            lambda: self.redis.client.set(_key(pits_id), self.node_id, ex=HOLDER_TTL_S)
        )

    async def claim(self, pits_id: str) -> None:
        """A pits finished its handshake here: we hold it now, and the others must let go."""
        await self.set(pits_id)
        await self.redis.publish(BROADCAST, Takeover(pits=pits_id, node=self.node_id))

    async def refresh(self, pits_id: str) -> None:
        await self.redis.script("refresh", _REFRESH, [_key(pits_id)], [self.node_id, HOLDER_TTL_S])

    async def release(self, pits_id: str) -> None:
        await self.redis.script("release", _RELEASE, [_key(pits_id)], [self.node_id])

    def heard(self, takeover: Takeover) -> None:
        self._known[takeover.pits] = (takeover.node, self.clock() + HOLDER_CACHE_S)

    def forget(self, pits_id: str) -> None:
        self._known.pop(pits_id, None)

    async def holder(self, pits_id: str) -> str | None:
        """The replica holding the pits; remembered for a second (takeovers update it at once)."""
        known = self._known.get(pits_id)
        now = self.clock()
        if known is not None and known[1] > now:
            return known[0]
        value = await self.redis.call(lambda: self.redis.client.get(_key(pits_id)))
        node = value.decode() if isinstance(value, bytes) else None
        if node is not None:
            self._known[pits_id] = (node, now + HOLDER_CACHE_S)
        else:
            self._known.pop(pits_id, None)
        return node
