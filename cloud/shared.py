"""The replicas' one Redis, as every cluster part uses it: calls that never hang a replica.

Every call has a short deadline; a failure marks Redis down (`pitlink_redis_up` 0) and gives
the caller a default, so that each part falls back to what the replica can do alone. The
heartbeat (`cloud.cluster`) marks it up again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cloud.metrics import Metrics
from cloud.replica_messages import ReplicaMessage, encode

log = logging.getLogger("pitlink.cloud.cluster")

P = "pitlink:"
OP_TIMEOUT_S = 0.5
BROADCAST = f"{P}all"


def node_channel(node_id: str) -> str:
    return f"{P}node:{node_id}"


class SharedRedis:
    """A Redis client with deadlines, an up/down flag, scripts and publishing."""

    def __init__(
        self, url: str, *, node_id: str, metrics: Metrics, op_timeout: float = OP_TIMEOUT_S
    ):
        self.node_id = node_id
        self.metrics = metrics
        self.op_timeout = op_timeout
        self.client = aioredis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry_on_timeout=False,
        )
        self.up = False
        self._scripts: dict[str, Any] = {}

    def set_up(self, up: bool) -> None:
        if up != self.up:
            log.warning(
                "redis " + ("reachable" if up else "unreachable"), extra={"node": self.node_id}
            )
        self.up = up
        self.metrics.redis_up.set(1 if up else 0)

    async def call(self, make: Callable[[], Awaitable[Any]], default: Any = None) -> Any:
        """One Redis operation with a deadline; a failure marks Redis down and gives `default`."""
        if not self.up:
            return default
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result of an
            # operation that finished just as its task was cancelled, and the cancellation is
            # lost, so a replica's heartbeat loop went on after stop() and stop() never ended.
            async with asyncio.timeout(self.op_timeout * 2):
                return await make()
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("redis call failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            self.set_up(False)
            return default

    async def script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.client.register_script(source)
        return await self.call(lambda: script(keys=keys, args=args))

    async def publish(self, channel: str, message: ReplicaMessage) -> int:
        """Send a message; how many replicas heard it (0 when Redis is down)."""
        text = encode(message)
        return int(await self.call(lambda: self.client.publish(channel, text), 0))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.op_timeout * 2):  # see call()
                await self.client.ping()
        except (RedisError, OSError, TimeoutError):
            return False
        return True
