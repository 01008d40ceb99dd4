"""The feeds as plain objects: numbering, the ring and resuming, snapshots, limits, replicas."""

from __future__ import annotations

import json

import pytest
from cloudfakes import value

from cloud import feed as feed_module
from cloud.feed import KEEPALIVE, RING_EVENTS, Feed
from cloud.metrics import Metrics


class Listener:
    """A subscriber that keeps what it was written."""

    def __init__(self, client: str = "192.0.2.1"):
        self.client = client
        self.raw = b""
        self.closed = False

    def send(self, raw: bytes, framed: bytes) -> None:
        assert framed == b"%x\r\n%s\r\n" % (len(raw), raw)
        self.raw += raw

    def close(self) -> None:
        self.closed = True


def events(text: bytes) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of each event in a feed's text."""
    out = []
    for block in text.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            out.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return out


@pytest.fixture
def feed() -> Feed:
    return Feed(metrics=Metrics(), wall=lambda: 1_700_000_000.0, per_client=2, max_subscribers=3)


def test_a_box_connecting_starts_an_epoch_and_numbers_its_events(feed: Feed) -> None:
    sub = Listener()
    first = feed.join("p1", sub, None)
    assert first.startswith(b"retry: 1000\n\n")
    assert events(first) == [
        (None, "pits", {"pitsId": "p1", "connected": False, "since": None, "pushing": False}),
        (None, "race", {"path": None}),
    ]
    feed.opened("p1", since=1_700_000_000.0, pushing=True)
    feed.publish("p1", "race", {"path": "/events/e/r/Race.json"})
    feed.publish("p1", "change", {"path": "/events/e/r/Race.json", "etag": '"x"', "size": 3})
    feed.closed("p1", since=1_700_000_100.0)
    epoch = f"{1_700_000_000 * 1_000_000:x}"
    assert [(i, k) for i, k, _ in events(sub.raw)] == [
        (f"{epoch}-1", "pits"),
        (f"{epoch}-2", "race"),
        (f"{epoch}-3", "change"),
        (f"{epoch}-4", "pits"),
    ]
    assert events(sub.raw)[-1][2]["connected"] is False
    # Connected again in the same microsecond: still a later epoch.
    feed.opened("p1", since=1_700_000_200.0, pushing=False)
    assert events(sub.raw)[-1][0] == f"{int(epoch, 16) + 1:x}-1"


def test_resume_replays_what_was_missed_or_gives_a_snapshot(feed: Feed) -> None:
    feed.opened("p1", since=1.0, pushing=True)
    feed.watching("p1", ("/a.json", "/b.json"))
    feed.publish("p1", "change", {"path": "/a.json", "etag": '"1"', "size": 1})
    feed.publish("p1", "change", {"path": "/b.json", "etag": '"2"', "size": 1})
    feed.publish("p1", "change", {"path": "/a.json", "etag": '"3"', "size": 1})
    epoch = feed.channels["p1"].epoch
    # Missed the last two: replayed, nothing else.
    replayed = feed.join("p1", Listener(), f"{epoch}-2")
    assert [(i, d["etag"]) for i, _, d in events(replayed)] == [
        (f"{epoch}-3", '"2"'),
        (f"{epoch}-4", '"3"'),
    ]
    assert events(feed.join("p1", Listener("192.0.2.2"), f"{epoch}-4")) == []
    # Another epoch, an id from the future, or nonsense: the snapshot, at the current id.
    for last in (f"{int(epoch, 16) - 1:x}-2", f"{epoch}-9", "garbage", ""):
        feed.channels["p1"].subscribers.clear()
        feed.count, feed._clients = 0, {}
        snapshot = events(feed.join("p1", Listener(), last))
        assert [(i, k) for i, k, _ in snapshot] == [
            (f"{epoch}-4", k) for k in ("pits", "race", "change", "change")
        ]
        assert [d["etag"] for _, k, d in snapshot if k == "change"] == ['"3"', '"2"']


def test_the_ring_keeps_the_last_events_only(feed: Feed, monkeypatch) -> None:
    feed.opened("p1", since=1.0, pushing=True)
    for n in range(RING_EVENTS + 10):
        feed.publish("p1", "fpvtrackside", {"type": "DetectionExt", "n": n})
    ch = feed.channels["p1"]
    assert len(ch.ring) == RING_EVENTS and ch.ring[-1].n == ch.n == RING_EVENTS + 11
    # Too far back: a snapshot. Just within: replayed.
    assert events(feed.join("p1", Listener(), f"{ch.epoch}-5"))[0][1] == "pits"
    oldest = ch.ring[0].n
    assert (
        len(events(feed.join("p1", Listener("192.0.2.2"), f"{ch.epoch}-{oldest - 1}")))
        == RING_EVENTS
    )
    # Bounded in bytes too.
    monkeypatch.setattr(feed_module, "RING_BYTES", 10_000)
    feed.publish("p1", "fpvtrackside", {"type": "DetectionExt", "pad": "x" * 200})
    assert ch.ring_bytes <= 10_000


def test_a_replay_too_large_to_send_at_once_is_a_snapshot(feed: Feed) -> None:
    feed.opened("p1", since=1.0, pushing=True)
    epoch = feed.channels["p1"].epoch
    for _ in range(100):
        feed.publish("p1", "fpvtrackside", {"type": "DetectionExt", "pad": "x" * 2000})
    first = events(feed.join("p1", Listener(), f"{epoch}-1"))
    assert [k for _, k, _ in first] == ["pits", "race"]


def test_limits_per_client_and_per_process(feed: Feed) -> None:
    a1, a2 = Listener("192.0.2.1"), Listener("192.0.2.1")
    feed.join("p1", a1, None)
    feed.join("p2", a2, None)
    assert feed.refusal("192.0.2.1") == "client"
    assert feed.refusal("192.0.2.9") is None
    feed.join("p1", Listener("192.0.2.9"), None)
    assert feed.refusal("192.0.2.8") == "process"
    feed.leave("p1", a1)
    feed.leave("p1", a1)  # twice is once
    assert feed.refusal("192.0.2.1") is None and feed.count == 2
    assert value(feed.metrics.feed_subscribers) == 2


def test_heartbeat_and_close_all(feed: Feed) -> None:
    subs = [Listener(f"192.0.2.{i}") for i in range(3)]
    for i, sub in enumerate(subs):
        feed.join(f"p{i}", sub, None)
    feed.heartbeat()
    assert all(sub.raw.endswith(KEEPALIVE) for sub in subs)
    feed.close_all()
    assert all(sub.closed for sub in subs)
    assert value(feed.metrics.feed_dropped.labels("shutdown")) == 3


def test_another_replicas_events_are_taken_in_order_and_gaps_end_resuming(feed: Feed) -> None:
    sub = Listener()
    feed.join("p1", sub, None)
    epoch = "18f0000000000"
    pits = {"pitsId": "p1", "connected": True, "since": 5.0, "pushing": True}
    feed.heard("p1", epoch, 1, "pits", pits, now=0.0)
    feed.heard("p1", epoch, 2, "race", {"path": "/r.json"}, now=0.0)
    feed.heard("p1", epoch, 2, "race", {"path": "/again.json"}, now=0.0)  # a repeat: ignored
    feed.heard("p1", "17f0000000000", 9, "pits", {"connected": False}, now=0.0)  # older epoch
    assert [(i, k) for i, k, _ in events(sub.raw)][-2:] == [
        (f"{epoch}-1", "pits"),
        (f"{epoch}-2", "race"),
    ]
    ch = feed.channels["p1"]
    assert ch.race == "/r.json" and ch.connected and not ch.here
    feed.heard("p1", epoch, 5, "change", {"path": "/r.json", "etag": '"e"', "size": 1}, now=0.0)
    assert [s.n for s in ch.ring] == [5]  # 3 and 4 were lost on the way: nobody resumes across
    assert events(feed.join("p1", Listener("192.0.2.2"), f"{epoch}-2"))[0][1] == "pits"
    # The holder says it is alive; then falls silent: offline, as far as this replica can tell.
    feed.heard("p1", epoch, 5, "alive", {}, now=100.0)
    feed.expire(105.0)
    assert ch.connected
    feed.expire(100.0 + feed_module.ALIVE_FOR_S + 1)
    assert not ch.connected
    assert events(sub.raw)[-1][2]["connected"] is False
    # Heard of again (Redis back): there all along, and the subscribers are told.
    feed.heard("p1", epoch, 5, "alive", {}, now=200.0)
    assert ch.connected and events(sub.raw)[-1][2] == pits


def test_a_state_restored_from_redis_gives_the_snapshot(feed: Feed) -> None:
    feed.opened("p1", since=1.0, pushing=True)
    feed.watching("p1", ("/a.json",))
    feed.publish("p1", "race", {"path": "/a.json"})
    feed.publish("p1", "change", {"path": "/a.json", "etag": '"1"', "size": 1})
    state = json.loads(json.dumps(feed.channels["p1"].state()))
    other = Feed(metrics=Metrics(), wall=lambda: 0.0)
    other.channel("p1").restore(state)
    assert other.channels["p1"].snapshot() == feed.channels["p1"].snapshot()
    for damaged in ({"epoch": "not hex", "n": 1}, {"epoch": "ab", "n": -1}, {}):
        fresh = Feed(metrics=Metrics(), wall=lambda: 0.0)
        fresh.channel("p1").restore(damaged)
        assert fresh.channels["p1"].epoch is None


def test_a_replay_past_its_byte_bound_is_a_snapshot() -> None:
    """Events all still held but more bytes than half a subscriber's unsent bound: the
    subscriber gets where things stand, not a backlog it would be dropped for."""
    feed = Feed(metrics=Metrics(), wall=lambda: 1.0, max_unsent=4000)
    feed.opened("p1", since=1.0, pushing=True)
    big = {"type": "DetectionExt", "pad": "x" * 500}
    for _ in range(3):
        feed.publish("p1", "fpvtrackside", big)
    epoch = feed.channels["p1"].epoch
    replayed = events(feed.join("p1", Listener(), f"{epoch}-1"))
    assert [k for _, k, _ in replayed] == ["fpvtrackside"] * 3  # about 1.6 KB: replayed
    for _ in range(3):
        feed.publish("p1", "fpvtrackside", big)
    cut = events(feed.join("p1", Listener("192.0.2.2"), f"{epoch}-1"))
    assert [k for _, k, _ in cut][:2] == ["pits", "race"]  # about 3.2 KB > 2,000: a snapshot
