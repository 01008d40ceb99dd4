"""The live feeds: each pits' Server-Sent Events, their recent past, and who listens.

A pits' channel holds what a new subscriber is told first (the snapshot: is the box connected,
the race running now, the ETag of every watched file), the last events (a ring, for
`Last-Event-ID`) and its subscribers. Events are numbered `<epoch>-<n>`: the epoch names the
box's connection (a new one each time it connects; hex microseconds, so a later one is larger),
`n` counts up within it. The replica holding the box's connection numbers them; the others
take them from Redis in order (cloud.feed_replicas), so an id means the same on every replica.

Plain: no sockets. A subscriber is anything with `send` and `close` (cloud.feed_http writes to
a connection); time is passed in.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ujson

from cloud.metrics import Metrics

RING_EVENTS = 512  # the events a subscriber can resume after, per pits
RING_BYTES = 1024 * 1024  # ... and their bytes at most (an FPVTrackside event is up to 64 KiB)
MAX_UNSENT = 256 * 1024  # a subscriber with more than this not yet taken is dropped
MAX_CHANGES = 192  # ETags kept per pits for the snapshot (the box watches 48 paths at most)
MAX_CHANNELS = 10_000  # pits remembered without subscribers (then the oldest are forgotten)
ALIVE_FOR_S = 10.0  # a box held elsewhere counts as connected this long after a sign of life
RETRY_MS = 1000  # how soon EventSource dials again after a cut
KEEPALIVE = b": keep-alive\n\n"
KINDS = ("pits", "race", "change", "fpvtrackside")
# A Last-Event-ID as the relay writes them: hex epoch, a dash, a count.
EVENT_ID = re.compile(r"([0-9a-f]{1,16})-([0-9]{1,18})")
# Published between replicas but never written to a subscriber: the paths the box watches
# (for snapshots), and the holder's sign of life.
WATCHING, ALIVE = "watching", "alive"


def chunk(raw: bytes) -> bytes:
    """`raw` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(raw), raw)


@dataclass(frozen=True, slots=True)
class Sent:
    """One event as it is written: its number, its text and its text as a chunk."""

    n: int
    raw: bytes
    chunk: bytes


def sse(kind: str, data: dict[str, Any], event_id: str | None) -> bytes:
    """One Server-Sent Event: JSON never holds a raw line break, so `data` is one line."""
    text = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {text}\n\n".encode()


class Listener(Protocol):
    """A subscriber as the feed sees it (cloud.feed_http.Subscriber is one)."""

    client: str

    def send(self, raw: bytes, framed: bytes) -> None: ...

    def close(self) -> None: ...


class Channel:
    """One pits' feed: what the box said last, the ring of recent events, the subscribers."""

    def __init__(self, pits_id: str):
        self.pits_id = pits_id
        self.epoch: str | None = None
        self.n = 0
        self.ring: deque[Sent] = deque()
        self.ring_bytes = 0
        self.subscribers: set[Listener] = set()
        self.here = False  # the box is connected to this replica (we number its events)
        self.alive_until = 0.0  # another replica holds it: its last sign of life, and then some
        self.lost_sight: dict[str, Any] | None = None  # what we said before we lost sight of it
        self.known = False  # heard a `pits` event, or restored: the snapshot can be trusted
        self.connected = False
        self.since: float | None = None
        self.pushing = False
        self.race: str | None = None
        self.watched: tuple[str, ...] = ()
        self.changes: dict[str, dict[str, Any]] = {}

    @property
    def event_id(self) -> str | None:
        return None if self.epoch is None else f"{self.epoch}-{self.n}"

    def new_epoch(self, epoch: str) -> None:
        """The box connected again: a new numbering, nothing of the old connection's state."""
        self.epoch, self.n = epoch, 0
        self.ring.clear()
        self.ring_bytes = 0
        self.race, self.watched, self.changes = None, (), {}
        self.lost_sight = None

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        """What an event says of the pits, kept for the snapshot."""
        if kind == "pits":
            self.known = True
            self.connected = bool(data.get("connected"))
            self.since = data.get("since")
            self.pushing = bool(data.get("pushing"))
        elif kind == "race":
            path = data.get("path")
            self.race = path if isinstance(path, str) else None
        elif kind == "change" and isinstance(data.get("path"), str):
            self.changes.pop(data["path"], None)
            self.changes[data["path"]] = data
            while len(self.changes) > MAX_CHANGES:
                del self.changes[next(iter(self.changes))]
        elif kind == WATCHING:
            paths = data.get("paths")
            if isinstance(paths, list):
                self.watched = tuple(p for p in paths if isinstance(p, str))
                self.changes = {p: c for p, c in self.changes.items() if p in self.watched}

    def keep(self, sent: Sent) -> None:
        self.ring.append(sent)
        self.ring_bytes += len(sent.raw)
        while len(self.ring) > RING_EVENTS or self.ring_bytes > RING_BYTES:
            self.ring_bytes -= len(self.ring.popleft().raw)

    def forget_past(self) -> None:
        """Events were missed: nobody may resume across the gap (they get a snapshot)."""
        self.ring.clear()
        self.ring_bytes = 0

    def replay(self, last_id: str | None, limit: int) -> bytes | None:
        """The events after `last_id`, or None when they are not all here (or too many)."""
        found = EVENT_ID.fullmatch(last_id or "")
        if found is None or found.group(1) != self.epoch:
            return None
        after = int(found.group(2))
        if after > self.n:
            return None
        if after == self.n:
            return b""
        if not self.ring or self.ring[0].n > after + 1:
            return None
        missed = [s.raw for s in self.ring if s.n > after]
        if sum(map(len, missed)) > limit:
            return None
        return b"".join(missed)

    def snapshot(self) -> bytes:
        """Where things stand: the box, the race running now, each watched file's ETag."""
        at = self.event_id
        events = [
            sse("pits", self.pits_event(), at),
            sse("race", {"path": self.race}, at),
        ]
        events += [sse("change", self.changes[p], at) for p in self.watched if p in self.changes]
        return b"".join(events)

    def pits_event(self) -> dict[str, Any]:
        return {
            "pitsId": self.pits_id,
            "connected": self.connected,
            "since": self.since,
            "pushing": self.pushing,
        }

    def state(self) -> dict[str, Any]:
        """What a replica that knows nothing of this pits yet starts from (cloud.feed_replicas)."""
        return {
            "epoch": self.epoch,
            "n": self.n,
            "connected": self.connected,
            "since": self.since,
            "pushing": self.pushing,
            "race": self.race,
            "watched": list(self.watched),
            "changes": [self.changes[p] for p in self.watched if p in self.changes],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take a state another replica saved (cloud.feed_replicas) where this one knows less:
        what it heard since (it is newer) stays."""
        epoch, n = state.get("epoch"), state.get("n")
        if not isinstance(epoch, str) or not EVENT_ID.fullmatch(f"{epoch}-0"):
            return
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 10**18:
            return
        if self.epoch is not None and int(epoch, 16) < int(self.epoch, 16):
            return
        if epoch != self.epoch:
            self.new_epoch(epoch)
        if n > self.n:
            self.forget_past()
            self.n = n
        heard = self.changes
        self.changes = {}
        for change in state.get("changes") or []:
            if isinstance(change, dict):
                self.apply("change", change)
        for change in heard.values():
            self.apply("change", change)
        if not self.watched:
            self.apply(WATCHING, {"paths": state.get("watched")})
        if self.race is None:
            self.apply("race", {"path": state.get("race")})
        if not self.known:
            self.apply("pits", state)


# Told of every event this replica numbers, to publish it to the others.
Published = Callable[[Channel, str, dict[str, Any]], None]


class Feed:
    """Every pits' channel on this replica, and the limits on subscribers."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        wall: Callable[[], float],
        max_subscribers: int = 20_000,
        per_client: int = 8,
        max_unsent: int = MAX_UNSENT,
    ):
        self.metrics = metrics
        self.wall = wall
        self.max_subscribers = max_subscribers
        self.per_client = per_client
        self.max_unsent = max_unsent
        self.channels: dict[str, Channel] = {}
        self.count = 0
        self._clients: dict[str, int] = {}
        self.published: Published | None = None  # replicas: cloud.feed_replicas

    # -- what the box does (the replica holding its connection: cloud.push) ---------------------

    def opened(self, pits_id: str, *, since: float, pushing: bool) -> None:
        """The box connected here: a new epoch, and `pits` to every subscriber."""
        ch = self.channel(pits_id)
        epoch = int(self.wall() * 1_000_000)
        if ch.epoch is not None:
            epoch = max(epoch, int(ch.epoch, 16) + 1)
        ch.new_epoch(f"{epoch:x}")
        ch.here = True
        self.emit(
            ch, "pits", {"pitsId": pits_id, "connected": True, "since": since, "pushing": pushing}
        )

    def closed(self, pits_id: str, *, since: float) -> None:
        """The box's connection here ended."""
        ch = self.channels.get(pits_id)
        if ch is None or not ch.here:
            return
        ch.here = False
        self.emit(
            ch, "pits", {"pitsId": pits_id, "connected": False, "since": since, "pushing": False}
        )

    def publish(self, pits_id: str, kind: str, data: dict[str, Any]) -> None:
        """An event of a box connected here (`race`, `change`, `fpvtrackside`)."""
        ch = self.channels.get(pits_id)
        if ch is not None and ch.here:
            self.emit(ch, kind, data)

    def watching(self, pits_id: str, paths: tuple[str, ...]) -> None:
        """The paths the box watches now: the snapshot's `change` events are theirs."""
        ch = self.channels.get(pits_id)
        if ch is not None and ch.here:
            ch.apply(WATCHING, {"paths": list(paths)})
            if self.published is not None:
                self.published(ch, WATCHING, {"paths": list(paths)})

    def emit(self, ch: Channel, kind: str, data: dict[str, Any]) -> None:
        """Number an event, keep it and write it to every subscriber (and to the replicas)."""
        ch.n += 1
        self._deliver(ch, kind, data)
        if self.published is not None:
            self.published(ch, kind, data)

    def _deliver(self, ch: Channel, kind: str, data: dict[str, Any]) -> None:
        ch.apply(kind, data)
        raw = sse(kind, data, ch.event_id)
        sent = Sent(ch.n, raw, chunk(raw))
        ch.keep(sent)
        self.metrics.feed_events.labels(kind).inc()
        for sub in list(ch.subscribers):
            sub.send(sent.raw, sent.chunk)

    # -- what another replica numbered ----------------------------------------------------------

    def heard(
        self, pits_id: str, epoch: str, n: int, kind: str, data: dict[str, Any], now: float
    ) -> None:
        """An event from the replica holding the box, in the order it numbered them."""
        if kind not in (*KINDS, WATCHING, ALIVE):
            return
        if EVENT_ID.fullmatch(f"{epoch}-{n}") is None:
            return
        ch = self.channel(pits_id)
        if ch.epoch is None or int(epoch, 16) > int(ch.epoch, 16):
            ch.new_epoch(epoch)
            ch.here = False
        elif epoch != ch.epoch:
            return  # an older connection's, late
        ch.alive_until = now + ALIVE_FOR_S
        if not ch.known and kind == ALIVE:
            ch.connected = True  # held and alive on another replica; the rest is unknown
        if ch.lost_sight is not None and kind != "pits":
            ch.apply("pits", ch.lost_sight)  # it was there all along
            ch.lost_sight = None
            self._tell(ch)
        if kind == ALIVE:
            if n != ch.n:
                ch.forget_past()  # events were lost on the way
                ch.n = n
            return
        if kind == WATCHING:
            ch.apply(WATCHING, data)
            return
        if n <= ch.n:
            return
        if n != ch.n + 1:
            ch.forget_past()
        ch.n = n
        self._deliver(ch, kind, data)

    def expire(self, now: float) -> None:
        """A box another replica held and that gave no sign of life (that replica gone, or
        Redis): offline, as far as this replica can tell, until it hears of it again."""
        for ch in list(self.channels.values()):
            if not ch.here and ch.connected and ch.alive_until and now > ch.alive_until:
                ch.lost_sight = ch.pits_event()
                ch.apply("pits", {"connected": False, "since": self.wall(), "pushing": False})
                ch.forget_past()
                self._tell(ch)

    def _tell(self, ch: Channel) -> None:
        """Where the box stands as this replica sees it, to its subscribers only (not numbered:
        its id is the last event's)."""
        raw = sse("pits", ch.pits_event(), ch.event_id)
        for sub in list(ch.subscribers):
            sub.send(raw, chunk(raw))

    # -- subscribers -----------------------------------------------------------------------------

    def refusal(self, client: str) -> str | None:
        """Which limit a new subscriber of `client` would cross: `process`, `client` or None."""
        if self.count >= self.max_subscribers:
            return "process"
        if self._clients.get(client, 0) >= self.per_client:
            return "client"
        return None

    def join(self, pits_id: str, sub: Listener, last_id: str | None) -> bytes:
        """Add a subscriber; what it is sent first: what it missed after `last_id`, else the
        snapshot (the caller checked `refusal`)."""
        ch = self.channel(pits_id)
        missed = ch.replay(last_id, self.max_unsent // 2)
        first = f"retry: {RETRY_MS}\n\n".encode() + (ch.snapshot() if missed is None else missed)
        ch.subscribers.add(sub)
        self.count += 1
        self._clients[sub.client] = self._clients.get(sub.client, 0) + 1
        self.metrics.feed_subscribers.set(self.count)
        return first

    def leave(self, pits_id: str, sub: Listener) -> None:
        ch = self.channels.get(pits_id)
        if ch is None or sub not in ch.subscribers:
            return
        ch.subscribers.discard(sub)
        self.count -= 1
        left = self._clients.get(sub.client, 1) - 1
        if left > 0:
            self._clients[sub.client] = left
        else:
            self._clients.pop(sub.client, None)
        self.metrics.feed_subscribers.set(self.count)

    def heartbeat(self) -> None:
        """A comment to every subscriber: proxies close a connection silent for long."""
        framed = chunk(KEEPALIVE)
        for ch in list(self.channels.values()):
            for sub in list(ch.subscribers):
                sub.send(KEEPALIVE, framed)

    def close_all(self) -> None:
        """The relay is leaving: every subscriber is cut (EventSource dials again, elsewhere)."""
        for ch in list(self.channels.values()):
            for sub in list(ch.subscribers):
                self.metrics.feed_dropped.labels("shutdown").inc()
                sub.close()

    def channel(self, pits_id: str) -> Channel:
        ch = self.channels.get(pits_id)
        if ch is None:
            ch = self.channels[pits_id] = Channel(pits_id)
            if len(self.channels) > MAX_CHANNELS:
                self._forget_idle()
        return ch

    def _forget_idle(self) -> None:
        """Forget the oldest channels nobody listens to and no box here feeds."""
        for pits_id, ch in list(self.channels.items()):
            if len(self.channels) <= MAX_CHANNELS // 2:
                return
            if not ch.subscribers and not ch.here:
                del self.channels[pits_id]

    def describe(self, pits_id: str) -> dict[str, Any]:
        ch = self.channels.get(pits_id)
        return {"feedSubscribers": 0 if ch is None else len(ch.subscribers)}
