"""What a box pushes, taken by the relay's plain objects over a fake transport (no server)."""

from __future__ import annotations

import pytest
from cloudfakes import FakeTransport, dropped, frame, value

from cloud.admin import PublicAllowlist
from cloud.cache import Cache, Entry
from cloud.control import ControlSettings, PitsConnection
from cloud.feed import Feed
from cloud.interest import FORGET_S, MAX_PATHS, Reads
from cloud.metrics import Metrics
from cloud.push import PUSH_BURST, PushIntake
from cloud.registry import Registry
from cloud.relay import Freshness, Relay
from pitlink_testkit.clock import FakeClock
from wire import PROTOCOL_VERSION
from wire import messages as m
from wire.canonical import etag_of
from wire.paths import DEFAULT_ALLOWLIST
from wire.push import FEATURE_PUSH, Change, FpvtEvent, Still, Watch, Watching

RACE = "/events/e1/r1/Race.json"
PILOTS = "/events/e1/Pilots.json"
BODY = b'{"a":1}'


class Parts:
    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.metrics = Metrics()
        self.registry: Registry[PitsConnection] = Registry(self.metrics, clock=clock)
        self.cache = Cache()
        self.relay = Relay(
            registry=self.registry,
            cache=self.cache,
            metrics=self.metrics,
            freshness=Freshness(1.0, [("/events/*/Pilots.json", 5.0)]),
            clock=clock,
        )
        self.feed = Feed(metrics=self.metrics, wall=lambda: 1_700_000_000.0)
        self.intake = PushIntake(
            registry=self.registry,
            serving=self.relay,
            feed=self.feed,
            allowlist=PublicAllowlist(DEFAULT_ALLOWLIST),
            metrics=self.metrics,
            max_body_bytes=1024,
            clock=clock,
            wall=lambda: 1_700_000_000.0,
        )
        self.registry.on_register.append(self.intake.connected)
        self.registry.on_unregister.append(self.intake.disconnected)

    def connect(
        self, pits_id: str = "p1", *, push: bool = True
    ) -> tuple[PitsConnection, FakeTransport]:
        transport = FakeTransport()
        conn = PitsConnection(
            pits_id=pits_id,
            claims={"sub": pits_id, "role": "pits"},
            transport=transport,
            registry=self.registry,
            settings=ControlSettings(drop_burst=5),
            metrics=self.metrics,
            clock=self.clock,
            wall=lambda: 1_700_000_000.0,
            on_push=self.intake.take,
        )
        self.registry.add(conn)
        conn.start()
        features = (FEATURE_PUSH,) if push else ()
        conn.on_text(
            frame(
                m.PitsHello(
                    protocol_version=PROTOCOL_VERSION,
                    pits_id=pits_id,
                    sw_version="t",
                    features=features,
                )
            )
        )
        return conn, transport

    def fresh(self, path: str, pits_id: str = "p1") -> bool:
        return self.relay.fresh(pits_id, path) is not None


@pytest.fixture
def parts(clock: FakeClock) -> Parts:
    return Parts(clock)


def change(path: str = RACE, body: bytes = BODY, etag: str | None = None) -> str:
    return frame(Change(path=path, etag=etag or etag_of(body), body=body))


def test_a_change_is_the_cache_entry_and_a_feed_event(parts: Parts) -> None:
    conn, _ = parts.connect()
    conn.on_text(change())
    entry = parts.cache.get(("p1", "GET", RACE))
    assert entry is not None and entry.body == BODY and entry.fetched_at == parts.clock.now
    ch = parts.feed.channels["p1"]
    assert ch.changes[RACE] == {"path": RACE, "etag": etag_of(BODY), "size": len(BODY)}
    assert value(parts.metrics.push_frames.labels("change", "taken")) == 1
    # The same body again: the entry is fresh again, but nothing new for the feed.
    parts.clock.advance(0.5)
    conn.on_text(change())
    assert parts.cache.get(("p1", "GET", RACE)).fetched_at == parts.clock.now
    assert ch.n == 2  # the `pits` event and one change
    assert parts.intake.describe("p1") == {
        "pushing": True,
        "newestChangeAt": 1_700_000_000.0,
        "watching": 0,
    }


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (change(etag=etag_of(b"other")), "ETag"),
        (change(path="/events//e1/r1/Race.json"), "normal form"),
        (change(path="/secret/keys.json"), "allowlist"),
        (change(path="/pitlink/live"), "allowlist"),
        (change(body=b"<html>not json</html>"), "JSON"),
        (change(body=b"x" * 2000, path="/events/e1/big.bin"), "cap"),
        (frame(Watching(paths=("/events/../etc",), interval_ms=1000)), "dot segment"),
    ],
)
def test_a_bad_push_frame_is_refused_and_charged(parts: Parts, bad: str, why: str, caplog) -> None:
    conn, _ = parts.connect()
    conn.on_text(bad)
    assert dropped(parts.metrics, "push_refused") == 1
    assert conn.errors == 1
    assert why in caplog.records[-1].__dict__["detail"]
    assert parts.cache.get(("p1", "GET", RACE)) is None
    assert parts.feed.channels["p1"].n == 1  # the `pits` event only


def test_a_box_without_push_has_its_push_frames_refused(parts: Parts) -> None:
    conn, transport = parts.connect(push=False)
    conn.on_text(change())
    assert dropped(parts.metrics, "push_refused") == 1
    assert parts.cache.get(("p1", "GET", RACE)) is None
    parts.relay.fresh("p1", RACE)  # a spectator's read
    parts.clock.advance(2)
    parts.intake.tick()
    assert transport.frames("watch") == []
    assert parts.feed.channels["p1"].pushing is False


def test_a_flood_of_push_frames_is_refused_past_the_budget(parts: Parts) -> None:
    conn, transport = parts.connect()
    for _ in range(int(PUSH_BURST)):
        conn.on_text(frame(Still()))
    assert conn.state == "open"
    for _ in range(10):
        conn.on_text(frame(Still()))
    assert transport.closes and transport.closes[0][0] == 1008  # the drop budget (5 here)


def test_confirmed_copies_stay_fresh_past_the_window_until_the_box_falls_silent(
    parts: Parts,
) -> None:
    conn, _ = parts.connect()
    conn.on_text(frame(Watching(paths=(RACE,), interval_ms=1000, race=RACE)))
    conn.on_text(change())
    parts.clock.advance(2.5)  # past the 1 s window, within 3 intervals
    assert parts.fresh(RACE)
    conn.on_text(frame(Still()))
    parts.clock.advance(2.5)
    assert parts.fresh(RACE)
    parts.clock.advance(1.0)  # silent for 3.5 s: aged; the relay asks the box again
    assert not parts.fresh(RACE)


def test_still_refreshes_only_what_the_box_pushed(parts: Parts) -> None:
    """A copy the relay pulled before (maybe older than the box's) is never confirmed by a
    `still`: only a body the box itself pushed is."""
    conn, _ = parts.connect()
    parts.cache.put(
        ("p1", "GET", PILOTS), Entry(body=b"[]", etag=etag_of(b"[]"), fetched_at=parts.clock.now)
    )
    conn.on_text(frame(Watching(paths=(RACE, PILOTS), interval_ms=1000)))
    conn.on_text(change())
    parts.clock.advance(6)
    conn.on_text(frame(Still()))
    assert parts.fresh(RACE)
    assert not parts.fresh(PILOTS)  # its 5 s window is over, and the box never pushed it
    # Unwatched: no longer confirmed.
    conn.on_text(frame(Watching(paths=(PILOTS,), interval_ms=1000)))
    parts.clock.advance(1.5)
    assert not parts.fresh(RACE)


def test_the_race_and_what_is_watched_go_to_the_feed(parts: Parts) -> None:
    conn, _ = parts.connect()
    conn.on_text(frame(Watching(paths=(RACE, PILOTS), interval_ms=500, race=RACE)))
    ch = parts.feed.channels["p1"]
    assert ch.race == RACE and ch.watched == (RACE, PILOTS)
    n = ch.n
    conn.on_text(frame(Watching(paths=(RACE, PILOTS), interval_ms=500, race=RACE)))
    assert ch.n == n  # the same race: no event
    event = {"type": "RaceStart", "seq": 3, "ts": "t", "round": 1, "race": 2, "raceType": "Race"}
    conn.on_text(frame(FpvtEvent(event=event)))
    last = ch.ring[-1].raw.decode()
    assert last.startswith(f"id: {ch.epoch}-{n + 1}\nevent: fpvtrackside\ndata: {{")
    assert '"type":"RaceStart"' in last and '"seq":3' in last


def test_what_spectators_read_is_sent_as_watch_at_most_once_a_second(parts: Parts) -> None:
    _, transport = parts.connect()
    parts.relay.fresh("p1", RACE)
    parts.clock.advance(0.1)
    parts.relay.fresh("p1", PILOTS)
    parts.intake.tick()
    [first] = transport.frames("watch")
    assert first.message == Watch(paths=(PILOTS, RACE), interval_ms=1000)
    parts.relay.fresh("p1", RACE)  # read again: the set is the same
    parts.clock.advance(1)
    parts.intake.tick()
    assert len(transport.frames("watch")) == 1
    parts.relay.fresh("p1", "/events/e1/Rounds.json")
    parts.clock.advance(0.5)
    parts.intake.tick()
    assert len(transport.frames("watch")) == 2  # a second after the first
    parts.relay.fresh("p1", "/events/e1/Results.json")
    parts.intake.tick()
    assert len(transport.frames("watch")) == 2  # not yet a second since
    parts.clock.advance(1)
    parts.intake.tick()
    assert transport.frames("watch")[-1].message.paths[0] == "/events/e1/Results.json"
    # Pilots.json alone: its own window (5 s) is the interval.
    parts.clock.advance(FORGET_S)
    parts.relay.fresh("p1", PILOTS)
    parts.intake.tick()
    assert transport.frames("watch")[-1].message == Watch(paths=(PILOTS,), interval_ms=5000)
    assert value(parts.metrics.watch_sent) == 4


def test_reads_are_bounded_and_forgotten() -> None:
    reads = Reads()
    for i in range(MAX_PATHS + 5):
        reads.note(f"/p{i}", float(i))
    assert len(reads) == MAX_PATHS
    assert reads.take()[:2] == (f"/p{MAX_PATHS + 4}", f"/p{MAX_PATHS + 3}")
    reads.note("/p10", 100.0)  # read again: most recent, the set unchanged
    assert not reads.changed and reads.take()[0] == "/p10"
    reads.forget(100.0 + FORGET_S - 1)
    assert reads.changed and reads.take() == ("/p10",)
    reads.forget(100.0 + FORGET_S)
    assert reads.take() == ()


def test_a_push_that_races_a_fetch_wins(parts: Parts) -> None:
    conn, _ = parts.connect()
    asked = parts.clock.now
    parts.clock.advance(0.1)
    conn.on_text(change())
    assert parts.intake.pushed_since("p1", RACE, asked).body == BODY
    assert parts.intake.pushed_since("p1", RACE, parts.clock.now + 1) is None
    assert parts.intake.pushed_since("p1", PILOTS, asked) is None


def test_disconnect_ends_the_feed_epoch_and_forgets_the_box(parts: Parts) -> None:
    conn, _ = parts.connect()
    conn.on_text(frame(Watching(paths=(RACE,), interval_ms=1000)))
    conn.on_text(change())
    conn.closed()
    ch = parts.feed.channels["p1"]
    assert not ch.connected and not ch.here
    parts.clock.advance(1.5)
    assert not parts.fresh(RACE)
    assert parts.intake.describe("p1")["pushing"] is False
