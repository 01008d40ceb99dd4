"""Bodies and ETags in Redis, in front of each replica's own cache, so a new replica is warm."""

from __future__ import annotations

import time
from typing import Any

from cloud.shared import P, SharedRedis

NOT_FOUND_TTL_S = 60.0


class SharedCache:
    """Hashes `pitlink:cache:<pits>:<path>` of body, ETag and fetch time, with a TTL."""

    def __init__(self, redis: SharedRedis, *, ttl: float = 3600.0):
        self.redis = redis
        self.ttl = ttl

    @staticmethod
    def _key(pits_id: str, path: str) -> str:
        return f"{P}cache:{pits_id}:{path}"

    async def get(self, pits_id: str, path: str) -> tuple[bytes, str, float] | None:
        """(body, etag, age in s) of the shared copy, if there is one."""
        raw = await self.redis.call(lambda: self.redis.client.hgetall(self._key(pits_id, path)))
        if not raw or b"e" not in raw or b"b" not in raw:
            return None
        try:
            fetched = float(raw[b"f"])
        except (KeyError, ValueError):
            return None
        return raw[b"b"], raw[b"e"].decode(), max(0.0, time.time() - fetched)

    async def put(self, pits_id: str, path: str, body: bytes, etag: str, age: float) -> None:
        """Share a body. What FPVTrackside answers for a file it does not have (an empty body,
        `[]` once canonical) expires in a minute: random paths must not fill Redis for hours."""

        async def put() -> None:
            pipe = self.redis.client.pipeline(transaction=False)
            self.put_in(pipe, pits_id, path, body, etag, age)
            await pipe.execute()

        await self.redis.call(put)

    def put_in(
        self, pipe: Any, pits_id: str, path: str, body: bytes, etag: str, age: float
    ) -> None:
        """`put`, as commands added to a pipeline (cloud.feed_replicas: before the change's
        event, so that a replica that hears of the change finds the body)."""
        key = self._key(pits_id, path)
        ttl = min(self.ttl, NOT_FOUND_TTL_S) if body in (b"", b"[]") else self.ttl
        pipe.hset(key, mapping={"b": body, "e": etag, "f": str(time.time() - age)})
        pipe.expire(key, max(1, int(ttl)))

    async def purge(self, pits_id: str | None, prefix: str) -> int:
        pattern = f"{P}cache:{pits_id or '*'}:{prefix}*"
        client = self.redis.client

        async def purge() -> int:
            count = 0
            async for key in client.scan_iter(match=pattern, count=500):
                count += int(await client.delete(key))
            return count

        return int(await self.redis.call(purge, 0))
