"""This replica's membership of a cluster of replicas that share one Redis.

What is shared, and where it is done:

- **who holds which pits** (`cloud.holders`): the replica with the live connection holds a short
  key it refreshes; a newer connection of the same pits on another replica takes over (4003);
- **fetches** (`cloud.forwarding`): a replica without the pits connection asks the holder,
  which serves through its own cache and coalescing: one fetch per key across all replicas;
- **the cache** (`cloud.shared_cache`): bodies and ETags in Redis with a TTL, in front of each
  replica's own cache, so a replica that just started serves warm data;
- **limits** (`cloud.shared_limits`): token buckets and once-only claims;
- **the admin view and the active pits**: each replica publishes its connections; admin
  actions go to the holder; the active pits is agreed on.

Redis down or slow never stops a replica (`cloud.shared`): each falls back to what it can do
alone, `pitlink_redis_up` says which it is, and it rejoins by itself. Messages between
replicas are typed (`cloud.replica_messages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import ujson
from redis.exceptions import RedisError

from cloud.active import ActivePits, How
from cloud.control import PitsConnection
from cloud.forwarding import Forwarding, Remote, Serve
from cloud.holders import HOLDER_TTL_S, Holders
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.replica_messages import (
    Action,
    ActiveChoice,
    AdminAction,
    FeedEvent,
    FetchReply,
    FetchRequest,
    Takeover,
    decode,
)
from cloud.shared import BROADCAST, OP_TIMEOUT_S, P, SharedRedis, node_channel
from cloud.shared_cache import SharedCache
from cloud.shared_limits import SharedLimits
from wire import CloseCode, ErrorCode, ProtocolError
from wire.errors import DamagedError
from wire.untrusted import DamageNotes, load_json

log = logging.getLogger("pitlink.cloud.cluster")

REFRESH_S = 3.0
CONNS_TTL_S = 10
MAX_CONNS_BYTES = 64 * 1024 * 1024  # one replica's connections: about 2 KB each
MAX_ACTIVE_BYTES = 4096  # {"pits": "<id>", "how": "admin"}
ACTIVE_KEY = f"{P}active"

__all__ = ["HOLDER_TTL_S", "Cluster", "Remote"]


class Cluster:
    """This replica in the cluster: its parts, the heartbeat and the listener."""

    def __init__(
        self,
        url: str,
        *,
        registry: Registry[PitsConnection],
        active: ActivePits,
        metrics: Metrics,
        serve: Serve,
        clock: Callable[[], float] = time.monotonic,
        fetch_timeout: float = 8.0,
        node_id: str | None = None,
        cache_ttl: float = 3600.0,
        op_timeout: float = OP_TIMEOUT_S,
    ):
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.registry = registry
        self.active = active
        self.redis = SharedRedis(url, node_id=self.node_id, metrics=metrics, op_timeout=op_timeout)
        self.holders = Holders(self.redis)
        self.forwarding = Forwarding(
            self.redis, serve=serve, clock=clock, default_timeout=fetch_timeout
        )
        self.cache = SharedCache(self.redis, ttl=cache_ttl)
        self.limits = SharedLimits(self.redis)
        self._damaged = DamageNotes(max_kept=256)  # replicas' keys in Redis said damaged
        self._tasks: list[asyncio.Task[None]] = []
        self.on_feed: Callable[[FeedEvent], None] | None = None  # cloud.feed_replicas
        # More of each connection for the admin view (cloud.push: does it push).
        self.describe_more: Callable[[str], dict[str, Any]] | None = None

    @property
    def up(self) -> bool:
        return self.redis.up

    # -- what the relay asks --------------------------------------------------------------------

    async def holder(self, pits_id: str) -> str | None:
        return await self.holders.holder(pits_id)

    async def forward(
        self,
        node: str,
        pits_id: str,
        path: str,
        if_none_match: str | None,
        timeout: float,
        request_id: str,
    ) -> Remote:
        try:
            return await self.forwarding.forward(
                node, pits_id, path, if_none_match, timeout, request_id
            )
        except LookupError:
            self.holders.forget(pits_id)
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, f"the replica holding pits {pits_id} is gone"
            ) from None

    # -- the life of a replica ------------------------------------------------------------------

    async def start(self) -> None:
        """Reach Redis once before serving (a replica that starts serving before it can see
        the shared cache and the holders would refuse what the others can answer)."""
        client = self.redis.client
        try:
            await asyncio.wait_for(client.ping(), self.redis.op_timeout * 4)
            self.redis.set_up(True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis not reachable at start: serving alone", extra={"error": str(exc)})
            self.redis.set_up(False)
        await self._check_maxmemory()
        await self.load_active()
        self._tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._heartbeat()),
        ]

    async def _check_maxmemory(self) -> None:
        """Warn when Redis may grow without bound: the shared cache relies on its maxmemory."""
        try:
            config = await asyncio.wait_for(
                self.redis.client.config_get("maxmemory*"), self.redis.op_timeout * 2
            )
        except (RedisError, OSError, TimeoutError):
            return  # down, or CONFIG is renamed away (a managed Redis): nothing to check
        maxmemory = str(config.get("maxmemory", "0"))
        policy = str(config.get("maxmemory-policy", ""))
        if maxmemory == "0" or not policy.startswith("allkeys"):
            log.warning(
                "redis has no memory bound the shared cache can live with: set maxmemory and "
                "maxmemory-policy allkeys-lru",
                extra={"maxmemory": maxmemory, "policy": policy},
            )

    async def stop(self) -> None:
        for conn in self.registry.live():
            await self.holders.release(conn.pits_id)
        for task in self._tasks:
            # Cancelled again until it ends: a cancellation that lands as a Redis call
            # returns can be lost (on Python 3.11, inside the client library too), and the
            # loop would go on with stop() waiting for it.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.forwarding.stop()
        with contextlib.suppress(Exception):
            await self.redis.client.aclose()

    async def _heartbeat(self) -> None:
        """Check Redis, keep our holder keys and our connection list alive."""
        while True:
            if not await self.redis.ping():
                self.redis.set_up(False)
            else:
                was_down = not self.redis.up
                self.redis.set_up(True)
                for conn in self.registry.live():
                    if was_down:  # back after an outage: claim what we hold again
                        await self.holders.set(conn.pits_id)
                    await self.holders.refresh(conn.pits_id)
                await self._publish_connections()
            await asyncio.sleep(REFRESH_S if self.redis.up else min(REFRESH_S, 1.0))

    async def _publish_connections(self) -> None:
        more = self.describe_more or (lambda _: {})
        now = time.time()
        # The boxes whose link ended here lately too: every replica's admin page lists them.
        gone = [dict(d.describe(now), node=self.node_id) for d in self.registry.offline.recent(now)]
        rows = ujson.dumps(
            [dict(c.describe(), **more(c.pits_id), node=self.node_id) for c in self.registry.live()]
            + gone
        )
        key = f"{P}conns:{self.node_id}"
        await self.redis.call(lambda: self.redis.client.set(key, rows, ex=CONNS_TTL_S))

    async def _listen(self) -> None:
        """Our channel and the broadcast channel; reconnects after Redis comes back."""
        while True:
            pubsub = self.redis.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(node_channel(self.node_id), BROADCAST)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.info("redis subscription lost", extra={"error": str(exc)})
                self.redis.set_up(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    def _dispatch(self, data: bytes) -> None:
        message = decode(data)
        if isinstance(message, FetchReply):
            self.forwarding.replied(message)
        elif isinstance(message, FetchRequest):
            self.forwarding.asked(message)
        elif isinstance(message, Takeover):
            self.holders.heard(message)
            conn = self.registry.get(message.pits) if message.node != self.node_id else None
            if conn is not None:
                conn.close(CloseCode.REPLACED, "replaced by a newer connection on another replica")
        elif isinstance(message, AdminAction):
            self._admin_here(message)
        elif isinstance(message, ActiveChoice):
            self._learn_active(message.pits, message.how)
        elif isinstance(message, FeedEvent) and self.on_feed is not None:
            self.on_feed(message)

    # -- the active pits ------------------------------------------------------------------------

    async def adopt_active(self, pits_id: str) -> None:
        """This replica adopted the first pits to connect; the first replica to do so wins."""
        value = ujson.dumps({"pits": pits_id, "how": "first"})
        taken = await self.redis.call(lambda: self.redis.client.set(ACTIVE_KEY, value, nx=True))
        if taken:
            await self.redis.publish(BROADCAST, ActiveChoice(pits=pits_id, how="first"))
        else:
            await self.load_active()

    async def publish_active(self, pits_id: str | None, how: str | None) -> None:
        """An admin chose the active pits here: every replica takes the same."""
        client = self.redis.client
        if pits_id is None:
            await self.redis.call(lambda: client.delete(ACTIVE_KEY))
        else:
            value = ujson.dumps({"pits": pits_id, "how": how})
            await self.redis.call(lambda: client.set(ACTIVE_KEY, value))
        await self.redis.publish(BROADCAST, ActiveChoice(pits=pits_id, how=how))

    async def load_active(self) -> None:
        """Take the active pits the cluster agreed on, unless a flag named one here."""
        raw = await self.redis.call(lambda: self.redis.client.get(ACTIVE_KEY))
        if raw:
            with contextlib.suppress(DamagedError, TypeError, AttributeError):
                data = load_json(raw, limit=MAX_ACTIVE_BYTES)
                self._learn_active(data.get("pits"), data.get("how"))

    def _learn_active(self, pits_id: object, how: object) -> None:
        if self.active.how == "flag" or not (pits_id is None or isinstance(pits_id, str)):
            return
        learned: How = "admin" if how == "admin" else "first" if how == "first" else "other replica"
        self.active.learn(pits_id, learned)

    # -- the admin view -------------------------------------------------------------------------

    async def all_connections(self) -> list[dict[str, Any]] | None:
        """Every replica's connections, or None when Redis cannot say."""
        client = self.redis.client

        async def collect() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            async for key in client.scan_iter(match=f"{P}conns:*", count=100):
                raw = await client.get(key)
                if raw:
                    rows.extend(self._connections_of(key, raw))
            return rows

        return await self.redis.call(collect)

    def _connections_of(self, key: bytes | str, raw: bytes | str) -> list[dict[str, Any]]:
        """One replica's published connections; damaged, none (said once per value)."""
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        try:
            rows = load_json(raw, limit=MAX_CONNS_BYTES)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DamagedError("not a list of objects")
        except DamagedError as exc:
            if self._damaged.first(key, hash(raw)):
                log.warning(
                    "a replica's connections in Redis are damaged; not shown",
                    extra={"key": key[:200], "error": str(exc)},
                )
            return []
        self._damaged.good(key)
        return rows

    async def admin(self, pits_id: str, action: Action, who: str) -> bool:
        """Send an admin action to the replica holding the pits; False if none took it."""
        node = await self.holders.holder(pits_id)
        if node is None:
            return False
        message = AdminAction(action=action, pits=pits_id, who=who)
        if node == self.node_id:
            return self._admin_here(message)
        return await self.redis.publish(node_channel(node), message) > 0

    def _admin_here(self, message: AdminAction) -> bool:
        conn = self.registry.get(message.pits)
        if conn is None:
            return False
        conn.act(message.action)
        log.info(
            "admin action from another replica",
            extra={"action": message.action, "pits_id": conn.pits_id, "admin": message.who},
        )
        return True
