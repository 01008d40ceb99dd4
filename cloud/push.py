"""What a box that pushes sends unasked (feature `push`, wire.push), taken as the cache takes a
fetch's reply, and what the relay asks it to watch.

- `change`: a watched file's new body. Checked as a reply to a fetch is (within the body cap,
  its ETag its own, a `.json` body JSON, the schema drift check), its path normalized and on
  the public allowlist; then it IS the cache entry (fetched now), shared with the replicas,
  and a `change` event on the pits' live feed.
- `still`: every watched path was read again and none changed: their entries are fetched now.
- `watching`: the paths the box watches, how often it reads them, and the race running now.
- `fpvtrackside-event`: an FPVTrackside event, on to the feed (wire.fpvtevents cleaned it).

A watched path whose box confirmed its body lately (within a few of its intervals) is fresh
(cloud.relay asks `confirmed`): spectators get hits, never a wait for the box. When the box
stops confirming, the entry ages and the relay asks the box as before. A box whose hello does
not name `push` is served as before, by pulling, and is never sent `watch`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloud.admin import PublicAllowlist
from cloud.cache import Entry
from cloud.control import PitsConnection
from cloud.feed import Feed
from cloud.interest import Reads
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.relay import Relay
from cloud.routing import is_relay_own
from wire import ProtocolError
from wire.budget import TokenBucket
from wire.canonical import check_json, etag_of, is_json_path
from wire.paths import normalize_path
from wire.push import (
    FEATURE_PUSH,
    MAX_INTERVAL_MS,
    MIN_INTERVAL_MS,
    Change,
    FpvtEvent,
    PushMessage,
    Still,
    Watch,
    Watching,
)

log = logging.getLogger("pitlink.cloud.push")

GRACE_INTERVALS = 3  # a confirmed copy stays fresh this many of the box's intervals
WATCH_EVERY_S = 1.0  # a changed `watch` goes out at most this often
# Push frames a box may send: a burst, then a rate (a race's detections are a few a second).
PUSH_RATE = 50.0
PUSH_BURST = 200.0
MAX_CONFIRMED = 192  # paths whose pushed ETag is remembered, per box
TYPE_OF = {Change: "change", Still: "still", Watching: "watching", FpvtEvent: "fpvtrackside-event"}

# Shares a pushed body with the other replicas (cloud.feed_replicas), in the background.
Share = Callable[[str, str, bytes, str], None]


@dataclass(eq=False)
class PushState:
    """One box that pushes: what it watches, what it confirmed, and what spectators read."""

    conn: PitsConnection
    budget: TokenBucket
    reads: Reads = field(default_factory=Reads)
    watched: frozenset[str] = frozenset()
    interval: float = 1.0  # seconds, as the box said in `watching`
    race: str | None = None
    # path -> (ETag the box pushed, when): a `still` refreshes only what the box has said.
    confirmed: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)
    newest_change: float | None = None  # wall clock
    watch_sent_at: float = float("-inf")

    @property
    def grace(self) -> float:
        return GRACE_INTERVALS * self.interval


class Refused(ValueError):
    """Why a push frame is dropped (charged to the box's budget of dropped frames)."""


class PushIntake:
    """The push frames of every box connected here, and the `watch` each is sent."""

    def __init__(
        self,
        *,
        registry: Registry[PitsConnection],
        serving: Relay,
        feed: Feed,
        allowlist: PublicAllowlist,
        metrics: Metrics,
        max_body_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        share: Share | None = None,
    ):
        self.registry = registry
        self.serving = serving
        self.feed = feed
        self.allowlist = allowlist
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.wall = wall
        self.share = share
        self._states: dict[str, PushState] = {}
        serving.push = self

    # -- connections (registry hooks) ------------------------------------------------------------

    def connected(self, pits_id: str) -> None:
        conn = self.registry.get(pits_id)
        if conn is None:
            return
        hello = conn.hello
        pushing = hello is not None and FEATURE_PUSH in hello.features
        if pushing:
            self._states[pits_id] = PushState(
                conn, TokenBucket(PUSH_RATE, PUSH_BURST, self.clock())
            )
        else:
            self._states.pop(pits_id, None)
        self.feed.opened(pits_id, since=conn.connected_since_wall, pushing=pushing)

    def disconnected(self, pits_id: str) -> None:
        self._states.pop(pits_id, None)
        self.feed.closed(pits_id, since=self.wall())

    # -- frames from a box -----------------------------------------------------------------------

    def take(self, conn: PitsConnection, msg: PushMessage) -> str | None:
        """Handle one push frame; why it is refused, or None when taken."""
        kind = TYPE_OF.get(type(msg), "watch")
        try:
            self._take(conn, msg)
        except Refused as exc:
            self.metrics.push_frames.labels(kind, "refused").inc()
            return str(exc)
        self.metrics.push_frames.labels(kind, "taken").inc()
        return None

    def _take(self, conn: PitsConnection, msg: PushMessage) -> None:
        state = self._states.get(conn.pits_id)
        if state is None or state.conn is not conn:
            raise Refused("push frame from a box whose hello does not name push")
        now = self.clock()
        if state.budget.take(now):
            raise Refused(f"more than {PUSH_RATE:g} push frames a second")
        if isinstance(msg, Change):
            self._change(state, msg, now)
        elif isinstance(msg, Still):
            self._still(state, now)
        elif isinstance(msg, Watching):
            self._watching(state, msg)
        elif isinstance(msg, FpvtEvent):
            self.feed.publish(conn.pits_id, "fpvtrackside", msg.event)
        else:
            raise Refused("a box does not send watch")

    def _path(self, path: str) -> str:
        try:
            normal = normalize_path(path)
        except ProtocolError as exc:
            raise Refused(exc.message) from None
        if normal != path:
            raise Refused("path not in its normal form")
        if is_relay_own(path) or not self.allowlist.allows(path):
            raise Refused("path not on the public allowlist")
        return path

    def _change(self, state: PushState, msg: Change, now: float) -> None:
        pits_id, path, body = state.conn.pits_id, self._path(msg.path), msg.body
        if len(body) > self.max_body_bytes:
            raise Refused(f"{len(body)} bytes, over the {self.max_body_bytes} byte cap")
        if msg.etag != etag_of(body):
            raise Refused("body does not match its ETag")
        if is_json_path(path):
            try:
                check_json(body)
            except ProtocolError as exc:
                raise Refused(exc.message) from None
        before = state.confirmed.pop(path, None)
        state.confirmed[path] = (msg.etag, now)
        while len(state.confirmed) > MAX_CONFIRMED:
            state.confirmed.popitem(last=False)
        key = (pits_id, "GET", path)
        entry = self.serving.cache.get(key)
        if (
            before is not None
            and before[0] == msg.etag
            and entry is not None
            and entry.etag == msg.etag
        ):
            self.serving.cache.refresh(key, now)  # said again: nothing new to tell anyone
            return
        if is_json_path(path) and self.serving.drift is not None:
            self.serving.drift.seen(pits_id, path, body)  # a warning at most: still served
        self.serving.pushed(pits_id, path, body, msg.etag)
        if self.share is not None:
            self.share(pits_id, path, body, msg.etag)
        state.newest_change = self.wall()
        self.feed.publish(pits_id, "change", {"path": path, "etag": msg.etag, "size": len(body)})

    def _still(self, state: PushState, now: float) -> None:
        cache, pits_id = self.serving.cache, state.conn.pits_id
        for path in state.watched:
            said = state.confirmed.get(path)
            if said is None:
                continue
            key = (pits_id, "GET", path)
            entry = cache.get(key)
            if entry is not None and entry.etag == said[0]:
                cache.refresh(key, now)

    def _watching(self, state: PushState, msg: Watching) -> None:
        paths = tuple(self._path(p) for p in msg.paths)
        state.watched = frozenset(paths)
        state.interval = msg.interval_ms / 1000
        pits_id = state.conn.pits_id
        if msg.race != state.race:
            state.race = msg.race
            self.feed.publish(pits_id, "race", {"path": msg.race})
        self.feed.watching(pits_id, paths)

    # -- what the relay asks (cloud.relay.PushedCopies) ------------------------------------------

    def note(self, pits_id: str, path: str, now: float) -> None:
        """A spectator read `path` of `pits_id` (a hit or a miss): on every request, so cheap."""
        state = self._states.get(pits_id)
        if state is not None:
            state.reads.note(path, now)

    def confirmed(self, pits_id: str, path: str, entry: Entry, now: float) -> bool:
        """A watched path whose body its box pushed, and confirmed within the grace."""
        state = self._states.get(pits_id)
        if state is None or path not in state.watched:
            return False
        said = state.confirmed.get(path)
        return said is not None and said[0] == entry.etag and entry.age(now) < state.grace

    def pushed_since(self, pits_id: str, path: str, since: float) -> Entry | None:
        """The cache entry of `path` if its box pushed it at `since` or later."""
        state = self._states.get(pits_id)
        said = None if state is None else state.confirmed.get(path)
        if said is None or said[1] < since:
            return None
        entry = self.serving.cache.get((pits_id, "GET", path))
        return entry if entry is not None and entry.etag == said[0] else None

    # -- what the relay asks the boxes -----------------------------------------------------------

    def tick(self) -> None:
        """Send each box that pushes the paths its spectators read, when they changed."""
        now = self.clock()
        for state in list(self._states.values()):
            state.reads.forget(now)
            if not state.reads.changed or now - state.watch_sent_at < WATCH_EVERY_S:
                continue
            paths = state.reads.take()
            state.watch_sent_at = now
            ttl = min((self.serving.freshness.ttl(p) for p in paths), default=None)
            ttl = self.serving.freshness.default if ttl is None else ttl
            interval = min(MAX_INTERVAL_MS, max(MIN_INTERVAL_MS, int(ttl * 1000)))
            if state.conn.send(Watch(paths=paths, interval_ms=interval)):
                self.metrics.watch_sent.inc()
                log.debug("watch sent", extra={"pits_id": state.conn.pits_id, "paths": len(paths)})

    def describe(self, pits_id: str) -> dict[str, Any]:
        """For the admin and front pages: does the box push, and when it last changed a file."""
        state = self._states.get(pits_id)
        return {
            "pushing": state is not None,
            "newestChangeAt": None if state is None else state.newest_change,
            "watching": 0 if state is None else len(state.watched),
        }
