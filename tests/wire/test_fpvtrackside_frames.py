"""Which FPVTrackside a box sees: the `fpvtrackside` frame, its place in the pits' hello, the
relay's `features`, and every bound crossed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wire import messages as m
from wire.errors import ProtocolError

SEEN = {
    "version": "2.76 or later",
    "server": "Microsoft-HTTPAPI/2.0",
    "traits": ["current", "json-typed"],
}


def frame(payload: dict[str, Any], sender: m.Sender = "pits", kind: str = "fpvtrackside") -> Any:
    doc = {"id": "x", "type": kind, "ts": 0, "payload": payload}
    return m.decode(json.dumps(doc), sender=sender).message


def hello(**extra: Any) -> m.PitsHello:
    payload = {"protocolVersion": 1, "pitsId": "club-7", "swVersion": "1.0", **extra}
    got = frame(payload, kind="hello")
    assert isinstance(got, m.PitsHello)
    return got


def test_the_frame_round_trips() -> None:
    seen = m.FpvTrackside(
        version="2.76 or later", server="Microsoft-HTTPAPI/2.0", traits=("current", "json-typed")
    )
    assert frame(SEEN) == seen
    text = m.encode(seen, now_ms=0)
    assert json.loads(text)["type"] == "fpvtrackside"
    assert m.decode(text, sender="pits").message == seen


def test_every_field_may_be_left_out() -> None:
    assert frame({}) == m.FpvTrackside()
    assert m.FpvTrackside().payload() == {"traits": []}


def test_only_a_pits_sends_it() -> None:
    with pytest.raises(ProtocolError, match="unexpected frame type"):
        frame(SEEN, sender="cloud")


def test_the_hello_carries_it_and_an_older_hello_has_none() -> None:
    assert hello(fpvtrackside=SEEN).fpvtrackside == frame(SEEN)
    assert hello().fpvtrackside is None
    again = hello(fpvtrackside=SEEN)
    assert m.PitsHello.parse(again.payload()) == again


@pytest.mark.parametrize(
    "change",
    [
        {"version": "v" * (m.MAX_UPSTREAM_VERSION + 1)},
        {"server": "s" * (m.MAX_SERVER + 1)},
        {"server": "Microsoft\r\nSet-Cookie: x"},  # a header split, kept out of every log line
        {"server": "<script>\x00"},
        {"version": "2.76\u202e"},  # bidirectional override: printable ASCII only
        {"traits": ["t"] * (m.MAX_TRAITS + 1)},
        {"traits": ["t" * (m.MAX_FEATURE + 1)]},
        {"traits": [1]},
        {"traits": "current"},
        {"version": 2.76},
    ],
)
def test_past_a_bound_it_is_malformed(change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        frame({**SEEN, **change})
    with pytest.raises(ProtocolError):
        hello(fpvtrackside={**SEEN, **change})


def test_at_its_bounds_it_is_taken() -> None:
    got = frame(
        {
            "version": "v" * m.MAX_UPSTREAM_VERSION,
            "server": "~" * m.MAX_SERVER,
            "traits": ["t" * m.MAX_FEATURE] * m.MAX_TRAITS,
        }
    )
    assert isinstance(got, m.FpvTrackside)
    assert len(got.traits) == m.MAX_TRAITS


def test_a_hello_with_too_many_fields_in_it_is_malformed() -> None:
    many = {f"k{i}": "" for i in range(m.MAX_DETAILS + 1)}
    with pytest.raises(ProtocolError):
        hello(fpvtrackside=many)


def test_the_relay_names_its_features_and_an_older_relay_names_none() -> None:
    cloud = m.CloudHello(protocol_version=1, server_time_ms=0, features=(m.FEATURE_FPVTRACKSIDE,))
    got = frame(cloud.payload(), sender="cloud", kind="hello")
    assert got.features == ("fpvtrackside",)
    older = {"protocolVersion": 1, "serverTimeMs": 0, "limits": {}}
    assert frame(older, sender="cloud", kind="hello").features == ()


@pytest.mark.parametrize(
    "features",
    [
        ["f"] * (m.MAX_FEATURES + 1),
        ["f" * (m.MAX_FEATURE + 1)],
        [7],
        "fpvtrackside",
    ],
)
def test_the_relays_features_past_their_bounds_are_malformed(features: Any) -> None:
    with pytest.raises(ProtocolError):
        frame(
            {"protocolVersion": 1, "serverTimeMs": 0, "features": features},
            sender="cloud",
            kind="hello",
        )
