"""The live feeds across replicas: the replica holding a box publishes its events in order on
Redis; every replica delivers them to its own subscribers and keeps its own ring (cloud.feed).

- Events go out in the order they were numbered: one sender, a bounded queue (past it, the
  oldest are dropped: the others see the gap and let nobody resume across it). A pushed
  body goes to the shared cache in the same order, before the event that tells of it; a
  replica that hears of a change drops its own older copy, and takes the shared one.
- Each pits' state (the snapshot a subscriber starts from) is kept in Redis, at most once a
  second, so that a replica that starts during a race knows where things stand.
- The holder says every few seconds that the box is still there; a replica that hears nothing
  for a while (the holder gone, or Redis) says the box is offline.

Redis down never stops a replica: its own boxes' feeds go on for its own subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ujson

from cloud.feed import ALIVE, ALIVE_FOR_S, Channel, Feed
from cloud.replica_messages import FeedEvent, encode
from cloud.shared import BROADCAST, P, SharedRedis
from cloud.shared_cache import SharedCache
from wire.errors import DamagedError
from wire.untrusted import load_json

log = logging.getLogger("pitlink.cloud.feed")

MAX_QUEUE = 10_000  # events waiting for Redis
STATE_TTL_S = 3600
MAX_STATE_BYTES = 1024 * 1024
ALIVE_EVERY_S = 3.0
STATE_EVERY_S = 1.0


def _key(pits_id: str) -> str:
    return f"{P}feed:{pits_id}"


# One step of what goes to Redis, in order: adds its commands to a pipeline.
Step = Callable[[Any], None]


class FeedReplicas:
    """This replica's side of the feeds in a cluster."""

    def __init__(
        self,
        redis: SharedRedis,
        feed: Feed,
        cache: SharedCache,
        *,
        clock: Callable[[], float] = time.monotonic,
        forget: Callable[[str, str, str], None] | None = None,
    ):
        self.redis = redis
        self.feed = feed
        self.cache = cache
        self.clock = clock
        self.forget = forget  # a newer body of a path is in the shared cache: drop ours
        self._queue: deque[Step] = deque()
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._states: dict[str, str] = {}  # to write to Redis
        self._state_at = 0.0
        self._alive_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.lost = 0  # steps dropped because Redis could not take them fast enough
        feed.published = self.published

    # -- out -------------------------------------------------------------------------------------

    def _queue_step(self, step: Step) -> None:
        if len(self._queue) >= MAX_QUEUE:
            self._queue.popleft()
            self.lost += 1
        self._queue.append(step)
        self._wake.set()

    def share(self, pits_id: str, path: str, body: bytes, etag: str) -> None:
        """A body its box pushed, for the shared cache: before the event that tells of it."""
        self._queue_step(lambda pipe: self.cache.put_in(pipe, pits_id, path, body, etag, 0.0))

    def published(self, ch: Channel, kind: str, data: dict[str, Any]) -> None:
        """The feed numbered an event of a box held here: on to the others, in order."""
        if ch.epoch is None:
            return
        text = encode(
            FeedEvent(
                node=self.redis.node_id,
                pits=ch.pits_id,
                epoch=ch.epoch,
                n=ch.n,
                kind=kind,
                data=data,
            )
        )
        self._queue_step(lambda pipe: pipe.publish(BROADCAST, text))
        if kind != "fpvtrackside":
            self._dirty.add(ch.pits_id)

    async def _send(self) -> None:
        """The one sender: whatever is queued, in pipelines, in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]

                async def send(batch: list[Step] = batch) -> None:
                    pipe = self.redis.client.pipeline(transaction=False)
                    for step in batch:
                        step(pipe)
                    await pipe.execute()

                await self.redis.call(send)
            if self._states:
                await self._save()

    def tick(self) -> None:
        """From the relay's tick: a sign of life for the boxes held here; states to Redis."""
        now = self.clock()
        if now - self._alive_at >= ALIVE_EVERY_S:
            self._alive_at = now
            for ch in list(self.feed.channels.values()):
                if ch.here:
                    self.published(ch, ALIVE, {})
        if self._dirty and now - self._state_at >= STATE_EVERY_S:
            self._state_at = now
            for pits_id in self._dirty:
                known = self.feed.channels.get(pits_id)
                if known is not None and known.epoch is not None:
                    self._states[pits_id] = encode_state(known)
            self._dirty.clear()
            self._wake.set()

    async def _save(self) -> None:
        states, self._states = self._states, {}

        async def save() -> None:
            pipe = self.redis.client.pipeline(transaction=False)
            for pits_id, text in states.items():
                pipe.set(_key(pits_id), text, ex=STATE_TTL_S)
            await pipe.execute()

        await self.redis.call(save)

    # -- in --------------------------------------------------------------------------------------

    def heard(self, message: FeedEvent) -> None:
        """An event another replica numbered (our own come back too: skipped)."""
        if message.node == self.redis.node_id:
            return
        self.feed.heard(
            message.pits, message.epoch, message.n, message.kind, message.data, self.clock()
        )
        data = message.data
        if message.kind == "change" and self.forget is not None:
            path, etag = data.get("path"), data.get("etag")
            if isinstance(path, str) and isinstance(etag, str):
                self.forget(message.pits, path, etag)

    async def load(self, pits_id: str) -> None:
        """Before a subscriber's snapshot: what Redis says of a pits this replica has not
        heard the whole of (it started after the box connected)."""
        ch = self.feed.channels.get(pits_id)
        if ch is not None and (ch.known or ch.here):
            return
        raw = await self.redis.call(lambda: self.redis.client.get(_key(pits_id)))
        if not raw:
            return
        try:
            state = load_json(raw, limit=MAX_STATE_BYTES)
            if not isinstance(state, dict):
                raise DamagedError("not an object")
        except DamagedError as exc:
            log.warning(
                "a feed state in Redis is damaged", extra={"pits_id": pits_id, "error": str(exc)}
            )
            return
        ch = self.feed.channel(pits_id)
        if not ch.known and not ch.here:
            ch.restore(state)
            if ch.connected and not ch.alive_until:
                ch.alive_until = self.clock() + ALIVE_FOR_S

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._send())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():  # as cloud.cluster.Cluster.stop: a lost cancellation
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def encode_state(ch: Channel) -> str:
    return str(ujson.dumps(ch.state(), ensure_ascii=False))
