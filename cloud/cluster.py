"""Several relay replicas sharing state through Redis.

What is shared, and how:

- **who holds which pits**: `pitlink:holder:<pits>` names the replica with the live connection,
  with a short TTL that the holder refreshes; a replica that accepts a newer connection of the
  same pits claims the key and announces it, and the older holder closes its connection (4003);
- **fetches**: a replica without the pits connection sends the request to the holder's channel
  and the reply comes back on its own; the holder serves it through its own cache and
  coalescing, so there is at most one fetch per key across all replicas at a time;
- **the cache**: bodies and ETags in Redis hashes with a TTL (and Redis's `maxmemory`), in front
  of each replica's own cache, so a replica that just started serves warm data;
- **rate limits**: token buckets in Redis (one Lua script call per check);
- **the admin view**: each replica publishes its connections; admin actions go to the holder.

Redis down or slow never stops a replica: every call here has a short timeout, and a failure
falls back to what the replica can do alone (its own pits, its own cache, its own limits). The
`up` flag and the `pitlink_redis_up` gauge say which it is; it rejoins by itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import ujson
from redis.exceptions import RedisError

from cloud.active import How
from cloud.ratelimit import RateLimited
from wire import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from cloud.app import CloudRelay
    from cloud.relay import Served

log = logging.getLogger("pitlink.cloud.cluster")

P = "pitlink:"
HOLDER_TTL_S = 10
REFRESH_S = 3.0
CONNS_TTL_S = 10
OP_TIMEOUT_S = 0.5
HOLDER_CACHE_S = 1.0
ACTIVE_KEY = f"{P}active"
NOT_FOUND_TTL_S = 60.0

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


@dataclass(frozen=True)
class Remote:
    """A reply from the holder replica."""

    status: int
    etag: str | None
    body: bytes | None  # None: unchanged from the ETag we sent
    age: float


class Cluster:
    """This replica's membership of the cluster."""

    def __init__(
        self,
        relay: CloudRelay,
        url: str,
        *,
        node_id: str | None = None,
        cache_ttl: float = 3600.0,
        op_timeout: float = OP_TIMEOUT_S,
    ):
        self.relay = relay
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.cache_ttl = cache_ttl
        self.op_timeout = op_timeout
        self.redis = aioredis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry_on_timeout=False,
        )
        self.up = False
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._scripts: dict[str, Any] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._holders: dict[str, tuple[str, float]] = {}
        self.forwarded = 0
        self.served_for_others = 0

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def channel(self) -> str:
        return f"{P}node:{self.node_id}"

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            log.warning(
                "redis " + ("reachable" if up else "unreachable"), extra={"node": self.node_id}
            )
        self.up = up
        self.relay.metrics.redis_up.set(1 if up else 0)

    async def _call(self, make: Callable[[], Awaitable[Any]], default: Any = None) -> Any:
        """One Redis operation with a deadline; a failure marks Redis down and gives `default`."""
        if not self.up:
            return default
        try:
            return await asyncio.wait_for(make(), self.op_timeout * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("redis call failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._set_up(False)
            return default

    async def _script(self, name: str, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(source)
        return await self._call(lambda: script(keys=keys, args=args))

    async def start(self) -> None:
        """Reach Redis once before serving (a replica that starts serving before it can see
        the shared cache and the holders would refuse what the others can answer)."""
        try:
            await asyncio.wait_for(self.redis.ping(), self.op_timeout * 4)
            self._set_up(True)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis not reachable at start: serving alone", extra={"error": str(exc)})
            self._set_up(False)
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
                self.redis.config_get("maxmemory*"), self.op_timeout * 2
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
        for conn in self.relay.registry.live():
            await self.release(conn.pits_id)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProtocolError(ErrorCode.UNAVAILABLE, "replica stopping"))
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def _heartbeat(self) -> None:
        """Check Redis, keep our holder keys and our connection list alive."""
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), self.op_timeout * 2)
            except (RedisError, OSError, TimeoutError):
                self._set_up(False)
            else:
                was_down = not self.up
                self._set_up(True)
                if was_down:
                    # Back after an outage: claim what we hold again.
                    for conn in self.relay.registry.live():
                        await self._set_holder(conn.pits_id)
                for conn in self.relay.registry.live():
                    await self._script(
                        "refresh",
                        _REFRESH,
                        [f"{P}holder:{conn.pits_id}"],
                        [self.node_id, HOLDER_TTL_S],
                    )
                await self._publish_connections()
            await asyncio.sleep(min(REFRESH_S, 1.0) if not self.up else REFRESH_S)

    async def _publish_connections(self) -> None:
        rows = ujson.dumps(
            [dict(c.describe(), node=self.node_id) for c in self.relay.registry.live()]
        )
        key = f"{P}conns:{self.node_id}"
        await self._call(lambda: self.redis.set(key, rows, ex=CONNS_TTL_S))

    async def _listen(self) -> None:
        """Our channel and the broadcast channel; reconnects after Redis comes back."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, f"{P}all")
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    try:
                        data = ujson.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    self._dispatch(data)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.info("redis subscription lost", extra={"error": str(exc)})
                self._set_up(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    def _dispatch(self, data: dict[str, Any]) -> None:
        kind = data.get("t")
        if kind == "reply":
            future = self._pending.get(str(data.get("id")))
            if future is not None and not future.done():
                future.set_result(data)
        elif kind == "fetch":
            task = asyncio.ensure_future(self._serve_remote(data))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        elif kind == "takeover":
            node = str(data.get("node"))
            self._holders[str(data.get("pits"))] = (node, time.monotonic() + HOLDER_CACHE_S)
            if node != self.node_id:
                conn = self.relay.registry.get(str(data.get("pits")))
                if conn is not None:
                    conn.close(4003, "replaced by a newer connection on another replica")
        elif kind == "admin":
            self._admin_here(data)
        elif kind == "active":
            self._learn_active(data.get("pits"), data.get("how"))

    async def _publish(self, channel: str, message: dict[str, Any]) -> int:
        return int(await self._call(lambda: self.redis.publish(channel, ujson.dumps(message)), 0))

    # -- who holds which pits -----------------------------------------------------------------

    async def _set_holder(self, pits_id: str) -> None:
        key = f"{P}holder:{pits_id}"
        await self._call(lambda: self.redis.set(key, self.node_id, ex=HOLDER_TTL_S))

    async def claim(self, pits_id: str) -> None:
        """A pits finished its handshake here: we hold it now, and the others must let go."""
        await self._set_holder(pits_id)
        await self._publish(f"{P}all", {"t": "takeover", "pits": pits_id, "node": self.node_id})

    async def release(self, pits_id: str) -> None:
        await self._script("release", _RELEASE, [f"{P}holder:{pits_id}"], [self.node_id])

    async def holder(self, pits_id: str) -> str | None:
        """The replica holding the pits; remembered for a second (takeovers update it at once)."""
        known = self._holders.get(pits_id)
        now = time.monotonic()
        if known is not None and known[1] > now:
            return known[0]
        value = await self._call(lambda: self.redis.get(f"{P}holder:{pits_id}"))
        node = value.decode() if isinstance(value, bytes) else None
        if node is not None:
            self._holders[pits_id] = (node, now + HOLDER_CACHE_S)
        else:
            self._holders.pop(pits_id, None)
        return node

    # -- fetches through another replica ------------------------------------------------------

    async def forward(
        self,
        node: str,
        pits_id: str,
        path: str,
        if_none_match: str | None,
        timeout: float,
        request_id: str,
    ) -> Remote:
        """Ask the holder replica for a path; raises ProtocolError like a local fetch would."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = future
        try:
            receivers = await self._publish(
                f"{P}node:{node}",
                {
                    "t": "fetch",
                    "id": request_id,
                    "from": self.node_id,
                    "pits": pits_id,
                    "path": path,
                    "inm": if_none_match,
                    "timeout": timeout,
                },
            )
            if not receivers:
                self._holders.pop(pits_id, None)
                raise ProtocolError(
                    ErrorCode.UNAVAILABLE, f"the replica holding pits {pits_id} is gone"
                )
            self.forwarded += 1
            try:
                data = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise ProtocolError(
                    ErrorCode.TIMEOUT, f"no answer through replica {node} in {timeout:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        error = data.get("error")
        if isinstance(error, dict):
            code = str(error.get("code"))
            try:
                known = ErrorCode(code)
            except ValueError:
                known = ErrorCode.INTERNAL
            message = str(error.get("message", ""))[:500]
            wait = error.get("retryAfter")
            if isinstance(wait, int | float) and not isinstance(wait, bool):
                raise RateLimited(message, float(wait))
            raise ProtocolError(known, message)
        body = data.get("body")
        return Remote(
            status=int(data["status"]),
            etag=data.get("etag"),
            body=None if body is None else base64.b64decode(body),
            age=float(data.get("age", 0.0)),
        )

    async def _serve_remote(self, data: dict[str, Any]) -> None:
        """Another replica asks for a pits we hold: serve it through our own cache."""
        reply: dict[str, Any] = {"t": "reply", "id": data.get("id")}
        origin = str(data.get("from", ""))
        try:
            served: Served = await asyncio.wait_for(
                self.relay.relay.get(
                    str(data["pits"]),
                    str(data["path"]),
                    request_id=str(data["id"]),
                    local_only=True,
                ),
                float(data.get("timeout") or self.relay.config.fetch_timeout),
            )
        except ProtocolError as exc:
            reply["error"] = {"code": str(exc.code), "message": exc.message}
            if isinstance(exc, RateLimited):
                reply["error"]["retryAfter"] = exc.retry_after
        except (TimeoutError, KeyError, ValueError) as exc:
            reply["error"] = {
                "code": "TIMEOUT" if isinstance(exc, TimeoutError) else "BAD_REQUEST",
                "message": str(exc),
            }
        else:
            self.served_for_others += 1
            reply.update(
                status=served.status,
                etag=served.etag,
                age=max(0.0, self.relay.clock() - served.fetched_at),
                body=None
                if served.etag is not None and served.etag == data.get("inm")
                else base64.b64encode(served.body).decode("ascii"),
            )
        await self._publish(f"{P}node:{origin}", reply)

    # -- the shared cache ---------------------------------------------------------------------

    def _cache_key(self, pits_id: str, path: str) -> str:
        return f"{P}cache:{pits_id}:{path}"

    async def cache_get(self, pits_id: str, path: str) -> tuple[bytes, str, float] | None:
        """(body, etag, age in s) of the shared copy, if there is one."""
        raw = await self._call(lambda: self.redis.hgetall(self._cache_key(pits_id, path)))
        if not raw or b"e" not in raw or b"b" not in raw:
            return None
        try:
            fetched = float(raw[b"f"])
        except (KeyError, ValueError):
            return None
        return (
            raw[b"b"],
            raw[b"e"].decode(),
            max(0.0, time.time() - fetched),
        )

    async def cache_put(self, pits_id: str, path: str, body: bytes, etag: str, age: float) -> None:
        """Share a body. What FPVTrackside answers for a file it does not have (an empty body,
        `[]` once canonical) expires in a minute: random paths must not fill Redis for hours."""
        key = self._cache_key(pits_id, path)
        ttl = min(self.cache_ttl, NOT_FOUND_TTL_S) if body in (b"", b"[]") else self.cache_ttl

        async def put() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, mapping={"b": body, "e": etag, "f": str(time.time() - age)})
            pipe.expire(key, max(1, int(ttl)))
            await pipe.execute()

        await self._call(put)

    async def cache_touch(self, pits_id: str, path: str) -> None:
        """The pits confirmed the shared copy (304): fresh again."""
        key = self._cache_key(pits_id, path)
        await self._call(lambda: self.redis.hset(key, "f", str(time.time())))

    async def cache_purge(self, pits_id: str | None, prefix: str) -> int:
        pattern = f"{P}cache:{pits_id or '*'}:{prefix}*"

        async def purge() -> int:
            count = 0
            async for key in self.redis.scan_iter(match=pattern, count=500):
                count += int(await self.redis.delete(key))
            return count

        return int(await self._call(purge, 0))

    async def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first replica to claim `name` within `ttl` seconds; True when Redis
        cannot say (the caller's own record decides then)."""
        key = f"{P}once:{name}"
        taken = await self._call(
            lambda: self.redis.set(key, self.node_id, nx=True, ex=max(1, int(ttl))), default=True
        )
        return bool(taken)

    # -- the active pits ---------------------------------------------------------------------

    async def adopt_active(self, pits_id: str) -> None:
        """This replica adopted the first pits to connect; the first replica to do so wins."""
        value = ujson.dumps({"pits": pits_id, "how": "first"})
        taken = await self._call(lambda: self.redis.set(ACTIVE_KEY, value, nx=True))
        if taken:
            await self._publish(f"{P}all", {"t": "active", "pits": pits_id, "how": "first"})
        else:
            await self.load_active()

    async def publish_active(self, pits_id: str | None, how: str | None) -> None:
        """An admin chose the active pits here: every replica takes the same."""
        if pits_id is None:
            await self._call(lambda: self.redis.delete(ACTIVE_KEY))
        else:
            value = ujson.dumps({"pits": pits_id, "how": how})
            await self._call(lambda: self.redis.set(ACTIVE_KEY, value))
        await self._publish(f"{P}all", {"t": "active", "pits": pits_id, "how": how})

    async def load_active(self) -> None:
        """Take the active pits the cluster agreed on, unless a flag named one here."""
        raw = await self._call(lambda: self.redis.get(ACTIVE_KEY))
        if raw:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = ujson.loads(raw)
                self._learn_active(data.get("pits"), data.get("how"))

    def _learn_active(self, pits_id: object, how: object) -> None:
        active = self.relay.active
        if active.how == "flag" or not (pits_id is None or isinstance(pits_id, str)):
            return
        learned: How = "admin" if how == "admin" else "first" if how == "first" else "other replica"
        active.learn(pits_id, learned)

    # -- shared rate limits -------------------------------------------------------------------

    async def rate_check(self, scope: str, key: str, rate: float, burst: float) -> float | None:
        """Seconds to wait (0 when allowed), or None when Redis cannot say (use the local one)."""
        wait_ms = await self._script(
            "bucket", _BUCKET, [f"{P}rl:{scope}:{key}"], [rate, burst, int(time.time() * 1000)]
        )
        return None if wait_ms is None else float(wait_ms) / 1000

    # -- the admin view -----------------------------------------------------------------------

    async def all_connections(self) -> list[dict[str, Any]] | None:
        """Every replica's connections, or None when Redis cannot say."""

        async def collect() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            async for key in self.redis.scan_iter(match=f"{P}conns:*", count=100):
                raw = await self.redis.get(key)
                if raw:
                    rows.extend(ujson.loads(raw))
            return rows

        return await self._call(collect)

    async def admin(self, pits_id: str, action: str, who: str) -> bool:
        """Send an admin action to the replica holding the pits; False if none took it."""
        node = await self.holder(pits_id)
        if node is None:
            return False
        message = {"t": "admin", "action": action, "pits": pits_id, "who": who}
        if node == self.node_id:
            return self._admin_here(message)
        return await self._publish(f"{P}node:{node}", message) > 0

    def _admin_here(self, data: dict[str, Any]) -> bool:
        conn = self.relay.registry.get(str(data.get("pits")))
        if conn is None:
            return False
        action = data.get("action")
        if action == "reconnect":
            conn.close(4000, "reconnect requested by an admin")
        elif action in ("pause", "resume"):
            conn.paused = action == "pause"
        log.info(
            "admin action from another replica",
            extra={"action": action, "pits_id": conn.pits_id, "admin": data.get("who")},
        )
        return True
