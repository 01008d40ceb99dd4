"""The protocol session without a socket: two ends talking through lists of frames."""

from __future__ import annotations

import json

import pytest

from wire import PROTOCOL_VERSION, CloseCode, ErrorCode
from wire import messages as m
from wire.budget import Throttle
from wire.session import (
    GOING_AWAY,
    Closing,
    Dropped,
    Event,
    Opened,
    Received,
    RoundTrip,
    Session,
    SessionSettings,
    close_policy,
)

SETTINGS = SessionSettings(ping_interval=5.0, ping_timeout=15.0, handshake_timeout=10.0)
CLOUD_HELLO = m.CloudHello(protocol_version=PROTOCOL_VERSION, server_time_ms=0, limits={"a": 1})
PITS_HELLO = m.PitsHello(protocol_version=PROTOCOL_VERSION, pits_id="club-7", sw_version="1.0")


def cloud(now: float = 0.0, **settings: float) -> Session:
    s = SessionSettings(**{**SETTINGS.__dict__, **settings})
    return Session(
        "cloud", settings=s, now=now, hello=CLOUD_HELLO, expect_pits_id="club-7", wall=lambda: 1.0
    )


def pits(now: float = 0.0, hello: m.PitsHello = PITS_HELLO) -> Session:
    return Session("pits", settings=SETTINGS, now=now, hello=hello, wall=lambda: 1.0)


def pump(a: Session, b: Session, now: float) -> tuple[list[Event], list[Event]]:
    """Deliver what each end queued to the other until both are quiet."""
    got_a: list[Event] = []
    got_b: list[Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_b and not to_a:
            return got_a, got_b
        for text in to_b:
            got_b += b.receive(text, now)
        for text in to_a:
            got_a += a.receive(text, now)


def opened() -> tuple[Session, Session]:
    relay, box = cloud(), pits()
    relay.start()
    got_relay, got_box = pump(relay, box, 0.0)
    assert got_relay == [Opened(PITS_HELLO)] and isinstance(got_box[0], Opened)
    return relay, box


def frames(session: Session, sender: m.Sender = "cloud") -> list[m.Frame]:
    return [m.decode(text, sender=sender) for text in session.data_to_send()]


# -- the handshake ------------------------------------------------------------------------------


def test_the_relay_speaks_first_and_both_ends_open() -> None:
    relay, box = opened()
    assert (relay.state, box.state) == ("open", "open")
    assert relay.peer_hello == PITS_HELLO
    assert box.peer_hello == CLOUD_HELLO


def test_the_box_does_not_speak_before_the_relays_hello() -> None:
    box = pits()
    box.start()
    assert box.data_to_send() == []


def test_a_hello_naming_another_pits_is_closed_1008() -> None:
    relay = cloud()
    relay.start()
    other = m.PitsHello(protocol_version=PROTOCOL_VERSION, pits_id="club-8", sw_version="1")
    events = relay.receive(m.encode(other, now_ms=0), 1.0)
    assert events == [Closing(CloseCode.POLICY, "pitsId does not match the token")]
    assert relay.state == "closed" and relay.peer_hello is None


@pytest.mark.parametrize("side", ["cloud", "pits"])
def test_an_unsupported_version_is_closed_4002_on_either_end(side: str) -> None:
    me = cloud() if side == "cloud" else pits()
    hello: m.Message
    if side == "cloud":
        hello = m.PitsHello(protocol_version=99, pits_id="club-7", sw_version="1")
    else:
        hello = m.CloudHello(protocol_version=99, server_time_ms=0)
    [event] = me.receive(m.encode(hello, now_ms=0), 1.0)
    assert isinstance(event, Closing) and event.code == CloseCode.VERSION_REFUSED
    assert "99" in event.reason


def test_a_hello_past_its_bounds_is_closed_1008() -> None:
    relay = cloud()
    payload = {"protocolVersion": 1, "pitsId": "club-7", "swVersion": "v" * 100}
    text = json.dumps({"id": "h", "type": "hello", "ts": 0, "payload": payload})
    [event] = relay.receive(text, 1.0)
    assert isinstance(event, Closing) and event.code == CloseCode.POLICY
    assert "swVersion" in event.reason


def test_no_hello_in_time_is_closed_1008() -> None:
    relay = cloud()
    relay.receive(m.encode(m.Ping(), now_ms=0), 5.0)  # talking, but never a hello
    assert relay.tick(10.0) == []
    assert relay.tick(10.1) == [Closing(CloseCode.POLICY, "no hello received")]


def test_frames_before_the_hello_and_a_second_hello_are_dropped() -> None:
    relay = cloud()
    [before] = relay.receive(m.encode(m.Response(status=200), frame_id="r", now_ms=0), 1.0)
    assert isinstance(before, Dropped) and before.reason == "before_hello"
    relay, _ = opened()
    [again] = relay.receive(m.encode(PITS_HELLO, now_ms=0), 1.0)
    assert isinstance(again, Dropped) and again.reason == "unexpected"


# -- liveness -------------------------------------------------------------------------------------


def test_pings_come_every_interval_and_their_pongs_give_the_round_trip() -> None:
    relay, box = opened()
    assert relay.tick(4.9) == [] and relay.data_to_send() == []
    relay.tick(5.0)
    [ping_text] = relay.data_to_send()
    ping = m.decode(ping_text, sender="cloud")
    assert ping.type == "ping"
    assert box.receive(ping_text, 5.1) == []
    [pong_text] = box.data_to_send()
    pong = m.decode(pong_text, sender="pits")
    assert (pong.type, pong.id) == ("pong", ping.id)
    assert relay.receive(pong_text, 5.25) == [RoundTrip(0.25)]
    assert relay.round_trip == pytest.approx(0.25)


def test_a_pong_for_no_ping_is_dropped() -> None:
    relay, _ = opened()
    [event] = relay.receive(m.encode(m.Pong(), frame_id="nobody", now_ms=0), 1.0)
    assert isinstance(event, Dropped) and event.reason == "unknown_id"


def test_a_silent_peer_is_closed_going_away() -> None:
    _, box = opened()
    box.receive(m.encode(m.Ping(), now_ms=0), 10.0)  # the relay spoke at 10 s
    assert box.tick(25.0) == []
    assert box.tick(25.1) == [Closing(GOING_AWAY, "silent for 15 s")]


def test_next_deadline_says_when_to_tick() -> None:
    relay = cloud(now=100.0)
    assert relay.next_deadline(100.0) == pytest.approx(10.0)  # the handshake deadline
    relay.start()
    relay.receive(m.encode(PITS_HELLO, now_ms=0), 101.0)
    assert relay.next_deadline(101.0) == pytest.approx(5.0)  # the next ping
    assert relay.next_deadline(200.0) == pytest.approx(0.01)  # overdue: at once


# -- what a peer sends ------------------------------------------------------------------------------


def test_a_malformed_frame_is_answered_and_dropped() -> None:
    relay, _ = opened()
    [event] = relay.receive('{"id": "f9", "type": "response", "ts": 0, "payload": {}}', 1.0)
    assert isinstance(event, Dropped)
    assert (event.reason, event.frame_id, event.held) == ("malformed", "f9", 0)
    [answer] = frames(relay)
    assert (answer.type, answer.id) == ("error", "f9")
    assert isinstance(answer.message, m.Error) and answer.message.code == ErrorCode.BAD_REQUEST


def test_a_flood_spends_the_budget_and_is_closed_1008() -> None:
    relay = cloud(drop_burst=10, drop_rate=1.0)
    relay.start()
    relay.receive(m.encode(PITS_HELLO, now_ms=0), 0.0)
    relay.data_to_send()
    events: list[Event] = []
    for i in range(11):
        events += relay.receive(f"junk {i}", 0.0)
    assert events[-1] == Closing(CloseCode.POLICY, "too many bad frames")
    assert len(frames(relay)) == 10  # the one past the budget is not answered
    logged = [e for e in events if isinstance(e, Dropped) and e.held is not None]
    assert len(logged) == 1  # one line a second, whatever the flood
    assert relay.receive("more", 0.0) == []  # closed: nothing more is read


def test_late_drops_can_be_free_and_the_budget_refills() -> None:
    relay = cloud(drop_burst=2, drop_rate=1.0)
    relay.start()
    relay.receive(m.encode(PITS_HELLO, now_ms=0), 0.0)
    for _ in range(10):
        relay.drop("expired", "late reply", 0.0, charge=False)
    assert relay.state == "open"
    for t in range(30):
        relay.drop("unknown_id", "x", float(t))
    assert relay.state == "open"


def test_the_log_throttle_can_be_shared_across_connections() -> None:
    shared = Throttle(1.0)
    first = Session(
        "cloud", settings=SETTINGS, now=0.0, hello=CLOUD_HELLO, expect_pits_id="club-7",
        log_throttle=shared, log_key="club-7",
    )  # fmt: skip
    [a] = first.drop("malformed", "x", 0.0)
    second = Session(
        "cloud", settings=SETTINGS, now=0.0, hello=CLOUD_HELLO, expect_pits_id="club-7",
        log_throttle=shared, log_key="club-7",
    )  # fmt: skip
    [b] = second.drop("malformed", "x", 0.5)
    assert isinstance(a, Dropped) and isinstance(b, Dropped)
    assert (a.held, b.held) == (0, None)  # dialing again does not buy a fresh log line


def test_messages_for_the_shell() -> None:
    relay, box = opened()
    fetch = m.Fetch(method="GET", path="/", timeout_ms=1000)
    assert box.receive(m.encode(fetch, frame_id="f1", now_ms=0), 1.0) == [Received("f1", fetch)]
    reply = m.Response(status=304, etag='"sha256:ab"')
    assert relay.receive(m.encode(reply, frame_id="f1", now_ms=0), 1.0) == [Received("f1", reply)]


def test_close_once_then_nothing() -> None:
    relay, _ = opened()
    assert relay.close(1000, "bye") == [Closing(1000, "bye")]
    assert relay.close(1000, "bye") == []
    assert relay.tick(99.0) == []


@pytest.mark.parametrize(
    ("code", "policy"),
    [
        (CloseCode.RECONNECT, "now"),
        (CloseCode.TOKEN_EXPIRED, "slow"),
        (CloseCode.VERSION_REFUSED, "slow"),
        (CloseCode.POLICY, "slow"),
        (CloseCode.REPLACED, "backoff"),
        (CloseCode.NORMAL, "backoff"),
        (GOING_AWAY, "backoff"),
        (None, "backoff"),
    ],
)
def test_close_policy(code: int | None, policy: str) -> None:
    assert close_policy(code) == policy
