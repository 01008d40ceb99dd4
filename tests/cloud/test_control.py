"""A pits connection without a server: handshake, frames, liveness, and the registry."""

from __future__ import annotations

import asyncio

import pytest
import ujson
from cloudfakes import dropped, frame, pits_hello, value

from cloud.control import ControlSettings, PitsConnection
from cloud.metrics import Metrics
from cloud.registry import Registry
from pitlink_testkit.clock import FakeClock
from pitlink_testkit.waiting import wait_for
from wire import PROTOCOL_VERSION, CloseCode, ErrorCode, ProtocolError
from wire import messages as m

WALL_MS = 1_700_000_000_000


def gauge(metrics: Metrics, state: str) -> float:
    return value(metrics.control_connections.labels(state))


def fetch_msg(path: str = "/events/e1/Event.json") -> m.Fetch:
    return m.Fetch(method="GET", path=path, timeout_ms=1000)


# -- handshake --------------------------------------------------------------------------------


def test_start_sends_the_cloud_hello(connect) -> None:
    settings = ControlSettings(limits={"maxBodyBytes": 1234})
    conn, transport = connect(hello=False, settings=settings)
    [hello] = transport.frames()
    assert hello.type == "hello"
    assert hello.message == m.CloudHello(
        protocol_version=PROTOCOL_VERSION,
        server_time_ms=WALL_MS,
        limits={"maxBodyBytes": 1234},
        features=("fpvtrackside", "push"),
    )
    assert hello.ts == WALL_MS
    assert conn.state == "handshake"
    assert transport.closes == []


def test_matching_hello_registers(connect, registry: Registry, metrics: Metrics) -> None:
    conn, transport = connect(hello=False)
    assert registry.get("p1") is None
    assert gauge(metrics, "handshake") == 1
    conn.on_text(pits_hello("p1"))
    assert conn.state == "open"
    assert registry.get("p1") is conn
    assert registry.live() == [conn]
    assert conn.describe()["swVersion"] == "test-1.0"
    assert conn.describe()["protocolVersion"] == PROTOCOL_VERSION
    assert transport.closes == []
    assert (gauge(metrics, "handshake"), gauge(metrics, "open")) == (0, 1)


def test_hello_with_another_pits_id_closed_1008(connect, registry: Registry) -> None:
    conn, transport = connect("p1", hello=False)
    conn.on_text(pits_hello("p2"))
    assert [code for code, _ in transport.closes] == [CloseCode.POLICY]
    assert conn.state == "closed"
    assert registry.get("p1") is None
    assert registry.get("p2") is None
    assert conn not in registry.all


def test_unsupported_version_closed_4002(connect, registry: Registry) -> None:
    conn, transport = connect("p1", hello=False)
    conn.on_text(pits_hello("p1", version=99))
    [(code, reason)] = transport.closes
    assert code == CloseCode.VERSION_REFUSED == 4002
    assert "99" in reason
    assert conn.state == "closed"
    assert registry.get("p1") is None


def test_second_hello_dropped(connect, metrics: Metrics, registry: Registry) -> None:
    conn, transport = connect("p1")
    conn.on_text(pits_hello("p1"))
    assert dropped(metrics, "unexpected") == 1
    assert conn.state == "open"
    assert registry.get("p1") is conn
    assert transport.closes == []


def test_frames_before_hello_dropped(connect, metrics: Metrics) -> None:
    conn, transport = connect(hello=False)
    sent = len(transport.sent)
    conn.on_text(frame(m.Ping(), "p-early"))
    conn.on_text(frame(m.Response(status=200, body=b"[]"), "r-early"))
    assert dropped(metrics, "before_hello") == 2
    assert len(transport.sent) == sent  # no pong, no error
    assert conn.state == "handshake"


# -- frames once open -------------------------------------------------------------------------

MALFORMED = [
    ("not json", None),
    ("[]", None),
    ('{"id": "x1"}', "x1"),
    ('{"id": "x2", "type": "ping", "ts": "now", "payload": {}}', "x2"),
    ('{"id": "x3", "type": "teleport", "ts": 0, "payload": {}}', "x3"),
    ('{"id": "x4", "type": "fetch", "ts": 0, "payload": {"method": "GET", "path": "/"}}', "x4"),
    ('{"id": "x5", "type": "response", "ts": 0, "payload": {"status": "200"}}', "x5"),
    ('{"id": "x6", "type": "error", "ts": 0, "payload": {"code": "NOPE", "message": "?"}}', "x6"),
    (b"\xff\xfe", None),
]


@pytest.mark.parametrize(("data", "frame_id"), MALFORMED)
def test_malformed_frame_answered_bad_request_and_counted(
    connect, metrics: Metrics, data: str | bytes, frame_id: str | None
) -> None:
    conn, transport = connect()
    before = len(transport.sent)
    conn.on_text(data)
    assert len(transport.sent) == before + 1
    reply = transport.last
    assert reply.type == "error"
    assert reply.message.code == ErrorCode.BAD_REQUEST
    if frame_id is not None:
        assert reply.id == frame_id
    assert dropped(metrics, "malformed") == 1
    assert conn.state == "open"
    assert transport.closes == []


def test_malformed_frames_counted_one_each(connect, metrics: Metrics) -> None:
    conn, _ = connect()
    for data, _ in MALFORMED:
        conn.on_text(data)
    assert dropped(metrics, "malformed") == len(MALFORMED)
    assert conn.errors == len(MALFORMED)


def test_reply_for_an_unknown_id_dropped_and_counted(connect, metrics: Metrics) -> None:
    conn, transport = connect()
    before = len(transport.sent)
    conn.on_text(frame(m.Response(status=200, body=b"[]"), "never-sent"))
    conn.on_text(frame(m.Error(code=ErrorCode.TIMEOUT, message="late"), "never-sent-2"))
    assert dropped(metrics, "unknown_id") == 2
    assert len(transport.sent) == before  # nothing answered
    assert conn.state == "open"


def test_ping_answered_with_a_pong_echoing_its_id(connect) -> None:
    conn, transport = connect()
    conn.on_text(frame(m.Ping(), "ping-42"))
    pong = transport.last
    assert (pong.type, pong.id) == ("pong", "ping-42")


def test_pong_for_an_unknown_ping_counted(connect, metrics: Metrics) -> None:
    conn, _ = connect()
    conn.on_text(frame(m.Pong(), "no-such-ping"))
    assert dropped(metrics, "unknown_id") == 1
    assert conn.round_trip is None


# -- fetches ----------------------------------------------------------------------------------


async def test_fetch_sends_a_frame_and_returns_the_reply(connect, metrics: Metrics) -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.fetch(fetch_msg(), 5.0, frame_id="req-1"))
    await wait_for(lambda: transport.frames("fetch"), what="the fetch frame")
    [sent] = transport.frames("fetch")
    assert sent.id == "req-1"
    assert sent.message == fetch_msg()
    assert conn.in_flight == 1
    assert value(metrics.fetch_in_flight) == 1
    conn.on_text(frame(m.Response(status=200, etag='"e"', body=b"[1]"), "req-1"))
    reply = await asyncio.wait_for(task, 2)
    assert (reply.status, reply.etag, reply.body) == (200, '"e"', b"[1]")
    assert conn.in_flight == 0
    assert value(metrics.fetch_in_flight) == 0
    assert value(metrics.fetches) == 1


async def test_error_reply_raised_with_its_code(connect) -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.fetch(fetch_msg(), 5.0))
    await wait_for(lambda: transport.frames("fetch"), what="the fetch frame")
    fid = transport.frames("fetch")[0].id
    conn.on_text(frame(m.Error(code=ErrorCode.ORIGIN_UNREACHABLE, message="down"), fid))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 2)
    assert caught.value.code == ErrorCode.ORIGIN_UNREACHABLE


async def test_fetch_times_out(connect, metrics: Metrics) -> None:
    conn, _ = connect()
    with pytest.raises(ProtocolError) as caught:
        await conn.fetch(fetch_msg(), 0.05)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert conn.in_flight == 0
    assert value(metrics.fetch_in_flight) == 0


async def test_reply_after_the_timeout_counted_as_expired(connect, metrics: Metrics) -> None:
    conn, transport = connect(settings=ControlSettings(drop_burst=1, drop_rate=0))
    with pytest.raises(ProtocolError):
        await conn.fetch(fetch_msg(), 0.05, frame_id="late-1")
    late = frame(m.Response(status=200, body=b"[]"), "late-1")
    conn.on_text(late)
    assert (dropped(metrics, "expired"), dropped(metrics, "unknown_id")) == (1, 0)
    assert transport.closes == []  # a slow pits is not a hostile one: not charged
    conn.on_text(late)  # but the same id again is
    assert dropped(metrics, "unknown_id") == 1


async def test_fetch_before_the_handshake_is_unavailable(connect) -> None:
    conn, transport = connect(hello=False)
    with pytest.raises(ProtocolError) as caught:
        await conn.fetch(fetch_msg(), 5.0)
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert transport.frames("fetch") == []


async def test_duplicate_frame_id_gets_a_fresh_one(connect) -> None:
    conn, transport = connect()
    first = asyncio.ensure_future(conn.fetch(fetch_msg("/a.json"), 5.0, frame_id="same"))
    second = asyncio.ensure_future(conn.fetch(fetch_msg("/b.json"), 5.0, frame_id="same"))
    await wait_for(lambda: len(transport.frames("fetch")) == 2, what="two fetch frames")
    ids = [f.id for f in transport.frames("fetch")]
    assert ids[0] == "same" and ids[1] != "same"
    for f in transport.frames("fetch"):
        conn.on_text(frame(m.Response(status=200, body=f.message.path.encode()), f.id))
    assert (await asyncio.wait_for(first, 2)).body == b"/a.json"
    assert (await asyncio.wait_for(second, 2)).body == b"/b.json"


async def test_closed_fails_pending_fetches_at_once(connect, registry: Registry) -> None:
    conn, transport = connect()
    tasks = [asyncio.ensure_future(conn.fetch(fetch_msg(), 30.0)) for _ in range(3)]
    await wait_for(lambda: len(transport.frames("fetch")) == 3, what="three fetch frames")
    conn.closed()
    for task in tasks:
        with pytest.raises(ProtocolError) as caught:
            await asyncio.wait_for(task, 1.0)  # not the 30 s deadline
        assert caught.value.code == ErrorCode.UNAVAILABLE
    assert conn.state == "closed"
    assert conn.in_flight == 0
    assert registry.get("p1") is None


async def test_close_closes_the_transport_and_fails_fetches(connect) -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.fetch(fetch_msg(), 30.0))
    await wait_for(lambda: transport.frames("fetch"), what="the fetch frame")
    conn.close(CloseCode.RECONNECT, "admin asked")
    conn.close(CloseCode.RECONNECT, "again")  # a second close does nothing
    assert transport.closes == [(CloseCode.RECONNECT, "admin asked")]
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 1.0)
    assert caught.value.code == ErrorCode.UNAVAILABLE


# -- liveness ---------------------------------------------------------------------------------


def test_tick_pings_on_schedule_and_closes_a_silent_connection(
    connect, clock: FakeClock, metrics: Metrics, registry: Registry
) -> None:
    settings = ControlSettings(ping_interval=5.0, ping_timeout=15.0)
    conn, transport = connect(settings=settings)  # opened and heard from at t0
    t0 = clock.now

    clock.now = t0 + 4.9
    conn.tick()
    assert transport.frames("ping") == []
    clock.now = t0 + 5.0
    conn.tick()
    conn.tick()  # not twice for the same interval
    [ping] = transport.frames("ping")

    clock.now = t0 + 5.25
    conn.on_text(frame(m.Pong(), ping.id))
    assert conn.round_trip == pytest.approx(0.25)
    assert metrics.ws_roundtrip._sum.get() == pytest.approx(0.25)
    heard = clock.now

    clock.now = t0 + 9.9
    conn.tick()
    assert len(transport.frames("ping")) == 1
    clock.now = t0 + 10.0
    conn.tick()
    assert len(transport.frames("ping")) == 2

    clock.now = heard + 14.9  # silent, but not for long enough yet
    conn.tick()
    assert transport.closes == []
    assert conn.state == "open"

    clock.now = heard + 15.1
    conn.tick()
    assert [code for code, _ in transport.closes] == [1001]
    assert conn.state == "closed"
    assert registry.get("p1") is None
    # Listed as offline: last heard from at the pong, and why its link ended.
    [gone] = registry.offline.recent(1_700_000_000.0)
    assert gone.pits_id == "p1"
    assert gone.last_seen == pytest.approx(1_700_000_000.0 - 15.1)
    assert gone.error == "ping timeout: silent for 15 s, closed by the relay (1001)"
    pings = len(transport.frames("ping"))
    clock.advance(100)
    conn.tick()  # a closed connection does nothing more
    assert len(transport.frames("ping")) == pings
    assert len(transport.closes) == 1


def test_any_frame_counts_as_life(connect, clock: FakeClock) -> None:
    conn, transport = connect(settings=ControlSettings(ping_interval=5.0, ping_timeout=15.0))
    for _ in range(6):
        clock.advance(10.0)
        conn.on_text(frame(m.Ping()))
        conn.tick()
    assert transport.closes == []
    assert conn.state == "open"


def test_connection_stuck_in_handshake_closed(
    connect, clock: FakeClock, metrics: Metrics, registry: Registry
) -> None:
    settings = ControlSettings(ping_interval=5.0, ping_timeout=15.0, handshake_timeout=10.0)
    conn, transport = connect(hello=False, settings=settings)
    t0 = clock.now
    clock.now = t0 + 5.0
    conn.on_text(frame(m.Ping()))  # talking, but never a hello
    clock.now = t0 + 10.0
    conn.tick()
    assert transport.closes == []
    clock.now = t0 + 10.1
    conn.tick()
    assert [code for code, _ in transport.closes] == [CloseCode.POLICY]
    assert conn.state == "closed"
    assert conn not in registry.all
    assert gauge(metrics, "handshake") == 0


def test_registry_tick_ticks_every_connection(
    connect, clock: FakeClock, registry: Registry
) -> None:
    settings = ControlSettings(ping_interval=5.0, ping_timeout=15.0)
    pairs = [connect(f"p{i}", settings=settings) for i in range(3)]
    clock.advance(5.0)
    registry.tick()
    assert all(len(t.frames("ping")) == 1 for _, t in pairs)
    clock.advance(20.0)
    registry.tick()
    assert all(t.closes and t.closes[0][0] == 1001 for _, t in pairs)
    assert registry.live() == []
    assert registry.all == set()


# -- the registry -----------------------------------------------------------------------------


async def test_newer_connection_replaces_the_older(
    connect, registry: Registry, metrics: Metrics
) -> None:
    old, old_t = connect("p1")
    pending = asyncio.ensure_future(old.fetch(fetch_msg(), 30.0, frame_id="on-old"))
    await wait_for(lambda: old_t.frames("fetch"), what="the fetch on the old connection")

    new, new_t = connect("p1")
    assert [code for code, _ in old_t.closes] == [CloseCode.REPLACED]
    assert CloseCode.REPLACED == 4003
    assert new_t.closes == []
    assert registry.get("p1") is new
    assert old.state == "closed"
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(pending, 1.0)
    assert caught.value.code == ErrorCode.UNAVAILABLE

    # The old connection's handler reports its close later: the new one stays.
    old.closed()
    registry.unregister(old)
    assert registry.get("p1") is new
    assert registry.live() == [new]
    assert gauge(metrics, "open") == 1

    # A reply on the new connection to the old one's id is not delivered anywhere.
    new.on_text(frame(m.Response(status=200, body=b"[]"), "on-old"))
    assert dropped(metrics, "unknown_id") == 1


def test_connections_of_different_pits_live_side_by_side(connect, registry: Registry) -> None:
    a, a_t = connect("pa")
    b, b_t = connect("pb")
    assert (registry.get("pa"), registry.get("pb")) == (a, b)
    assert a_t.closes == b_t.closes == []
    assert set(registry.live()) == {a, b}


def test_a_replaced_connection_in_handshake_does_not_unseat_the_live_one(
    connect, registry: Registry
) -> None:
    live, _ = connect("p1")
    late, late_t = connect("p1", hello=False)
    late.close(CloseCode.POLICY, "gave up")
    assert registry.get("p1") is live
    assert late_t.closes == [(CloseCode.POLICY, "gave up")]


def test_unregister_of_an_unknown_connection_is_harmless(
    registry: Registry, metrics: Metrics, connect
) -> None:
    live, _ = connect("p1")
    stranger = PitsConnection(
        pits_id="p1",
        claims={},
        transport=type(live.transport)(),
        registry=registry,
        settings=ControlSettings(),
        metrics=metrics,
    )
    registry.unregister(stranger)
    assert registry.get("p1") is live


# -- what a hostile pits can send -------------------------------------------------------------


def test_hello_with_an_8_mib_sw_version_is_closed_1008(connect, registry: Registry) -> None:
    conn, transport = connect("p1", hello=False)
    payload = {"protocolVersion": 1, "pitsId": "p1", "swVersion": "x" * (8 * 1024 * 1024)}
    conn.on_text(ujson.dumps({"id": "h", "type": "hello", "ts": 0, "payload": payload}))
    [(code, reason)] = transport.closes
    assert code == CloseCode.POLICY
    assert "swVersion" in reason
    assert registry.get("p1") is None
    assert conn.hello is None


def test_a_flood_of_bad_frames_spends_the_budget_and_closes_1008(
    connect, metrics: Metrics, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn, transport = connect(settings=ControlSettings(drop_burst=20, drop_rate=1.0))
    caplog.set_level("WARNING", logger="pitlink.cloud.control")
    for i in range(20):
        conn.on_text(f"junk {i}")
    assert transport.closes == []
    assert len(transport.frames("error")) == 20
    conn.on_text("one past the budget")
    assert [code for code, _ in transport.closes] == [CloseCode.POLICY]
    assert conn.state == "closed"
    assert dropped(metrics, "malformed") == 21
    assert len(transport.frames("error")) == 20  # the last one is not answered
    # All in the same second: one line, not twenty-one.
    lines = [r for r in caplog.records if r.getMessage() == "dropped frame"]
    assert len(lines) == 1


def test_the_budget_refills_for_a_pits_with_an_occasional_bad_frame(
    connect, clock: FakeClock
) -> None:
    conn, transport = connect(settings=ControlSettings(drop_burst=3, drop_rate=1.0))
    for _ in range(30):
        conn.on_text("junk")
        clock.advance(1.0)
    assert transport.closes == []


def test_dropped_frame_lines_say_how_many_were_held_back(
    connect, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn, _ = connect()
    caplog.set_level("WARNING", logger="pitlink.cloud.control")
    for _ in range(5):
        conn.on_text("junk")
    clock.advance(1.0)
    conn.on_text("junk")
    lines = [r for r in caplog.records if r.getMessage() == "dropped frame"]
    assert [r.suppressed for r in lines] == [0, 4]


async def test_a_malformed_reply_fails_its_fetch_at_once(connect) -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.fetch(fetch_msg(), 30.0, frame_id="f-1"))
    await wait_for(lambda: transport.frames("fetch"), what="the fetch")
    bad = {"status": 302, "headers": {"Location": "https://evil.example/"}}
    conn.on_text(ujson.dumps({"id": "f-1", "type": "response", "ts": 0, "payload": bad}))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.code == ErrorCode.BAD_CONTENT
    assert "302" in caught.value.message


async def test_error_details_from_a_pits_are_not_passed_on(connect) -> None:
    conn, transport = connect()
    task = asyncio.ensure_future(conn.fetch(fetch_msg(), 30.0, frame_id="f-2"))
    await wait_for(lambda: transport.frames("fetch"), what="the fetch")
    details = {"httpStatus": 302, "retryAfter": 1e300}
    conn.on_text(frame(m.Error(code=ErrorCode.BUSY, message="go away", details=details), "f-2"))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 1)
    assert (caught.value.code, caught.value.message) == (ErrorCode.BUSY, "go away")
    assert caught.value.details is None


def test_a_closed_link_is_listed_offline_until_the_box_is_back(connect, registry: Registry) -> None:
    """The box (or the network) ended it: its code and reason, or that there was no close frame;
    a replaced connection is not offline, and a box that connects again is no longer listed."""
    from cloud.control import why_peer_closed

    conn, _ = connect("p1")
    conn.closed(why_peer_closed(1001, "agent stopping"))
    [gone] = registry.offline.recent(1_700_000_000.0)
    assert (gone.pits_id, gone.error) == ("p1", "closed by the box (1001): agent stopping")
    second, _ = connect("p1")
    assert registry.offline.recent(1_700_000_000.0) == []
    third, _ = connect("p1")  # replaces the second: that one is not offline
    assert registry.offline.recent(1_700_000_000.0) == []
    third.closed(why_peer_closed(None, None))
    [gone] = registry.offline.recent(1_700_000_000.0)
    assert gone.error.startswith("connection lost without a close frame")
    assert second.state == "closed"
