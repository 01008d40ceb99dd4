"""The status page's PIN gate: sessions, and how slowly wrong PINs may come. Time is passed in."""

from __future__ import annotations

import logging
import re

import pytest

from pits_appliance.pin import PinGate, make_pin
from pits_appliance.server import peer_of

PIN = "428571"


def test_the_right_pin_opens_a_session_and_a_wrong_one_does_not() -> None:
    gate = PinGate(PIN)
    wrong = gate.check("10.0.0.9", "000000", now=0.0)
    assert (wrong.session, wrong.wait, wrong.message) == (None, None, "wrong PIN")
    right = gate.check("10.0.0.9", PIN, now=1.0)
    assert right.session is not None and right.message == "PIN accepted."
    assert len(right.session) >= 40  # 32 random bytes, base64
    assert gate.valid(right.session, now=2.0)
    other = gate.check("10.0.0.9", PIN, now=3.0).session
    assert other is not None and other != right.session
    for bad in (None, "", "x", right.session + "x", right.session[:-1], "a" * 10_000):
        assert not gate.valid(bad, now=4.0)


@pytest.mark.parametrize("attempt", ["42857", "4285710", " 428571", "428571\n", "٤٢٨٥٧١", ""])
def test_only_the_pin_itself_is_right(attempt: str) -> None:
    assert PinGate(PIN).check("10.0.0.9", attempt, now=0.0).session is None


def test_a_client_gets_five_wrong_pins_then_one_a_minute() -> None:
    gate = PinGate(PIN)
    for i in range(5):
        assert gate.check("10.0.0.9", f"00000{i}", now=float(i)).wait is None
    limited = gate.check("10.0.0.9", PIN, now=5.0)  # even the right one is not looked at now
    assert limited.session is None
    assert limited.wait == pytest.approx(55.0)
    assert limited.message == "too many wrong PINs: try again in 55 s"
    assert gate.check("10.0.0.9", "999999", now=59.0).wait == pytest.approx(1.0)
    # A minute after the first wrong one, one more guess; then a minute more.
    assert gate.check("10.0.0.9", "999999", now=60.5).wait is None
    assert gate.check("10.0.0.9", PIN, now=61.0).wait == pytest.approx(59.0, abs=0.6)
    assert gate.check("10.0.0.9", PIN, now=121.0).session is not None
    # Another client was never slowed.
    assert gate.check("10.0.0.10", PIN, now=6.0).session is not None


def test_everybody_together_gets_twenty_then_one_every_30_s() -> None:
    """Many addresses (a neighbour can take many on the LAN) share one budget."""
    gate = PinGate(PIN)
    for i in range(20):
        assert gate.check(f"10.0.1.{i}", "000000", now=0.0).wait is None
    limited = gate.check("10.0.2.1", PIN, now=1.0)  # a fresh client, the right PIN
    assert limited.session is None and limited.wait == pytest.approx(29.0)
    assert gate.check("10.0.2.1", "000000", now=30.5).wait is None
    assert gate.check("10.0.2.2", PIN, now=31.0).wait == pytest.approx(29.0, abs=0.6)
    assert gate.check("10.0.2.2", PIN, now=61.0).session is not None


def test_a_session_opened_before_an_attack_keeps_working() -> None:
    gate = PinGate(PIN)
    session = gate.check("10.0.0.9", PIN, now=0.0).session
    for i in range(40):
        gate.check(f"10.0.1.{i}", "000000", now=1.0)
    assert gate.check("10.0.0.9", PIN, now=2.0).wait is not None
    assert gate.valid(session, now=2.0)


def test_an_ipv6_client_is_its_slash_64() -> None:
    """A host may take any address of its /64: its guesses all count against one budget."""
    gate = PinGate(PIN)
    for i in range(5):
        peer = peer_of((f"2001:db8:1:2::{i + 1:x}", 8081, 0, 0))
        assert gate.check(peer, "000000", now=0.0).wait is None
    assert gate.check(peer_of(("2001:db8:1:2:ffff::1", 1, 0, 0)), PIN, now=0.0).wait is not None
    assert gate.check(peer_of(("2001:db8:1:3::1", 1, 0, 0)), PIN, now=0.0).session is not None


def test_the_clients_remembered_are_bounded() -> None:
    gate = PinGate(PIN, max_clients=8, total_burst=1000)
    for i in range(100):
        gate.check(f"10.0.{i // 250}.{i % 250}", "000000", now=0.0)
    assert len(gate._clients) == 8


def test_sessions_are_bounded_the_least_recently_used_go_first() -> None:
    gate = PinGate(PIN, max_sessions=3)
    sessions = [gate.check("10.0.0.9", PIN, now=float(i)).session for i in range(3)]
    assert gate.valid(sessions[0], now=3.0)  # used: now the most recent
    fourth = gate.check("10.0.0.9", PIN, now=4.0).session
    assert len(gate) == 3
    assert [gate.valid(s, now=5.0) for s in (*sessions, fourth)] == [True, False, True, True]


def test_a_session_unused_for_a_day_is_forgotten() -> None:
    gate = PinGate(PIN, session_idle=3600.0)
    session = gate.check("10.0.0.9", PIN, now=0.0).session
    assert gate.valid(session, now=3000.0)
    assert gate.valid(session, now=6500.0)  # an hour since its last use, not its first
    assert not gate.valid(session, now=10_200.0)
    assert len(gate) == 0


def test_a_wrong_pin_is_logged_at_most_once_a_second_without_the_pin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = PinGate(PIN, client_burst=100, total_burst=100)
    with caplog.at_level(logging.WARNING, logger="pitlink.pits.status"):
        for i in range(10):
            gate.check("10.0.0.9", f"11223{i}", now=0.1 * i)
        gate.check("10.0.0.9", "998877", now=1.5)
    lines = [r for r in caplog.records if r.getMessage() == "wrong status page PIN"]
    assert [(r.peer, r.held_back) for r in lines] == [("10.0.0.9", 0), ("10.0.0.9", 9)]  # type: ignore[attr-defined]
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert not re.search(r"11223\d|998877|428571", text)


def test_made_pins_are_six_digits_and_not_alike() -> None:
    pins = {make_pin() for _ in range(200)}
    assert all(re.fullmatch(r"[0-9]{6}", p) for p in pins)
    assert len(pins) > 190
