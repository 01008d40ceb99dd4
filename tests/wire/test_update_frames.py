"""The update frames' bounds: what a relay may offer a box, and what a box may report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wire import messages as m
from wire.errors import ProtocolError

SHA = "ab" * 32
OFFER = {
    "bundle": "0123abcd",
    "version": "1.2.3",
    "compatible": "pitlink-amd64",
    "size": 5,
    "sha256": SHA,
}


def offer(**changes: Any) -> m.Offer:
    """An offer frame with these fields changed (`...` leaves a field out), decoded."""
    payload = {k: v for k, v in {**OFFER, **changes}.items() if v is not ...}
    doc = {"id": "x", "type": "offer", "ts": 0, "payload": payload}
    decoded = m.decode(json.dumps(doc), sender="cloud").message
    assert isinstance(decoded, m.Offer)
    return decoded


def report(**payload: Any) -> m.UpdateReport:
    doc = {"id": "x", "type": "update", "ts": 0, "payload": payload}
    decoded = m.decode(json.dumps(doc), sender="pits").message
    assert isinstance(decoded, m.UpdateReport)
    return decoded


def test_an_offer_and_a_withdrawal_round_trip() -> None:
    assert offer() == m.Offer(**OFFER)
    assert offer(bundle=None) == m.Offer(bundle=None)


@pytest.mark.parametrize(
    "changes",
    [
        {"bundle": "../../etc/passwd"},  # the id names a file on the box
        {"bundle": "ABCD"},
        {"bundle": "a" * 65},
        {"size": 0},
        {"size": m.MAX_BUNDLE_SIZE + 1},
        {"sha256": "AB" * 32},
        {"sha256": "ab" * 31},
        {"version": "v" * (m.MAX_SW_VERSION + 1)},
        {"compatible": "c" * (m.MAX_FEATURE + 1)},
        {"size": ...},
    ],
)
def test_an_offer_past_a_bound_is_malformed(changes: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        offer(**changes)


def test_a_report_carries_its_state_and_progress() -> None:
    got = report(state="downloading", version="1.2.3", done=10, total=20, message="x", atMs=5)
    assert got == m.UpdateReport(
        state="downloading", version="1.2.3", done=10, total=20, message="x", at_ms=5
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"state": "hacked"},
        {"state": "good", "done": -1},
        {"state": "good", "total": m.MAX_BUNDLE_SIZE + 1},
        {"state": "good", "message": "m" * (m.MAX_MESSAGE + 1)},
        {"state": "good", "version": "v" * (m.MAX_SW_VERSION + 1)},
    ],
)
def test_a_report_past_a_bound_is_malformed(payload: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        report(**payload)


def test_a_hello_with_a_long_slot_or_a_bad_update_is_malformed() -> None:
    base = {"protocolVersion": 1, "pitsId": "p", "swVersion": "1"}
    for extra in ({"slot": "S" * (m.MAX_SLOT + 1)}, {"update": {"state": "nope"}}):
        doc = {"id": "x", "type": "hello", "ts": 0, "payload": {**base, **extra}}
        with pytest.raises(ProtocolError):
            m.decode(json.dumps(doc), sender="pits")
