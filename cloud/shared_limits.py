"""Limits every replica shares: token buckets and once-only claims, kept in Redis.

When Redis cannot say (down, slow), the answer is None and the caller decides alone
(`cloud.ratelimit.SharedLimiter` falls back to its own bucket).
"""

from __future__ import annotations

import time

from cloud.shared import P, SharedRedis

# Token bucket: KEYS[1] hash {t: tokens, u: updated ms}; ARGV rate/s, burst, now ms.
# Returns the wait in ms (0 when a token was taken).
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - updated) / 1000 * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 't', tokens, 'u', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class SharedLimits:
    """Rate limits and once-only claims across replicas."""

    def __init__(self, redis: SharedRedis):
        self.redis = redis

    async def rate_check(self, scope: str, key: str, rate: float, burst: float) -> float | None:
        """Seconds to wait (0 when allowed), or None when Redis cannot say (use the local one)."""
        wait_ms = await self.redis.script(
            "bucket", _BUCKET, [f"{P}rl:{scope}:{key}"], [rate, burst, int(time.time() * 1000)]
        )
        return None if wait_ms is None else float(wait_ms) / 1000

    async def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first replica to claim `name` within `ttl` seconds; True when Redis
        cannot say (the caller's own record decides then)."""
        key = f"{P}once:{name}"
        client = self.redis.client
        taken = await self.redis.call(
            lambda: client.set(key, self.redis.node_id, nx=True, ex=max(1, int(ttl))), default=True
        )
        return bool(taken)
