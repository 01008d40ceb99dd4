"""The push frames (feature `push`): each round-trips, only its sender may send it, and every
bound is crossed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wire import messages as m
from wire.canonical import etag_of
from wire.errors import ProtocolError
from wire.push import MAX_WATCHED, Change, FpvtEvent, Still, Watch, Watching

BODY = b'[{"ID":"r1"}]'
DETECTION = {
    "type": "DetectionExt",
    "ts": "2026-05-03T12:34:56.789Z",
    "seq": 99,
    "detectionId": "1f8a2c3d",
    "round": 3,
    "race": 2,
    "pilotName": "John Doe",
    "lapNumber": 2,
    "isLapEnd": True,
    "raceTime": 38.421,
    "position": 2,
    "valid": True,
    "positionSnapshot": [{"pilotName": "John Doe", "position": 2, "raceSector": 200}],
}


def frame(payload: dict[str, Any], kind: str, sender: m.Sender = "pits") -> Any:
    doc = {"id": "x", "type": kind, "ts": 0, "payload": payload}
    return m.decode(json.dumps(doc), sender=sender).message


@pytest.mark.parametrize(
    ("message", "sender"),
    [
        (Watch(paths=("/events/e/Results.json", "/"), interval_ms=1000), "cloud"),
        (Watching(paths=("/events/e/r/Race.json",), interval_ms=200), "pits"),
        (
            Watching(
                paths=("/events/e/r/Race.json",), interval_ms=200, race="/events/e/r/Race.json"
            ),
            "pits",
        ),
        (Change(path="/events/e/r/Race.json", etag=etag_of(BODY), body=BODY), "pits"),
        (
            Change(path="/x.js", etag=etag_of(b"x"), body=b"x", content_type="text/javascript"),
            "pits",
        ),
        (Still(), "pits"),
        (FpvtEvent(event=DETECTION), "pits"),
    ],
)
def test_each_frame_round_trips_from_its_sender_only(message: Any, sender: m.Sender) -> None:
    text = m.encode(message, now_ms=0)
    assert m.decode(text, sender=sender).message == message
    other: m.Sender = "pits" if sender == "cloud" else "cloud"
    with pytest.raises(ProtocolError, match="unexpected frame type"):
        m.decode(text, sender=other)


def test_paths_are_bounded_and_kept_once() -> None:
    many = [f"/events/e/{i}.json" for i in range(MAX_WATCHED + 1)]
    with pytest.raises(ProtocolError, match="longer than"):
        frame({"paths": many, "intervalMs": 1000}, "watch", "cloud")
    with pytest.raises(ProtocolError, match="paths must be strings"):
        frame({"paths": ["/" + "x" * 2048], "intervalMs": 1000}, "watching")
    with pytest.raises(ProtocolError, match="paths must be strings"):
        frame({"paths": [""], "intervalMs": 1000}, "watching")
    got = frame({"paths": ["/a", "/a"], "intervalMs": 1000}, "watching")
    assert got.paths == ("/a",)


@pytest.mark.parametrize("interval", [0, 49, 60_001, -1])
def test_the_interval_is_bounded(interval: int) -> None:
    with pytest.raises(ProtocolError, match="intervalMs must be"):
        frame({"paths": ["/a"], "intervalMs": interval}, "watch", "cloud")


@pytest.mark.parametrize(
    "payload",
    [
        {"path": "/a", "status": 304, "headers": {"ETag": '"sha256:00"'}},
        {"path": "/a", "status": 200, "headers": {}, "bodyB64": "W10="},
        {"path": "/a", "status": 200, "headers": {"ETag": '"x"'}},
        {"path": "/a", "status": 404, "headers": {"ETag": '"x"'}, "bodyB64": ""},
        {"status": 200, "headers": {"ETag": '"x"'}, "bodyB64": ""},
    ],
)
def test_a_change_is_a_200_with_its_etag_and_body(payload: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        frame(payload, "change")


def test_an_event_is_cleaned_on_receipt_too() -> None:
    """A box is not trusted to have cleaned it: the relay's decoder does it again."""
    hello = {
        "type": "Hello",
        "ts": "t",
        "seq": 1,
        "fpvtVersion": "2.77",
        "platform": "Windows",
        "paths": {"workingDirectory": "C:\\Users\\ops\\fpvt\\"},
    }
    got = frame({"event": hello}, "fpvtrackside-event")
    assert "paths" not in got.event and got.event["fpvtVersion"] == "2.77"
    with pytest.raises(ProtocolError, match="event refused"):
        frame({"event": {**DETECTION, "type": "Unknown"}}, "fpvtrackside-event")


def test_the_race_running_now_is_one_of_the_paths_watched() -> None:
    with pytest.raises(ProtocolError, match="race must be one of the paths watched"):
        frame({"paths": ["/a"], "intervalMs": 200, "race": "/b"}, "watching")


def test_a_text_body_goes_as_text_and_comes_back_byte_for_byte() -> None:
    body = '[{"ID":"r1","Name":"Zoë \\u2603 ☃"}]\n'.encode()
    change = Change(path="/events/e/r/Race.json", etag=etag_of(body), body=body)
    text = m.encode(change, now_ms=0)
    assert '"bodyText"' in text and '"bodyB64"' not in text
    got = m.decode(text, sender="pits").message
    assert got == change and got.body == body
    binary = Change(path="/photo.jpg", etag=etag_of(b"\xff\xd8\xff"), body=b"\xff\xd8\xff")
    assert '"bodyB64"' in m.encode(binary, now_ms=0)
    assert m.decode(m.encode(binary, now_ms=0), sender="pits").message == binary


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (
            {"path": "/a", "status": 200, "headers": {"ETag": '"x"'}, "bodyText": "[]",
             "bodyB64": "W10="},
            "not both",
        ),
        ({"path": "/a", "status": 200, "headers": {"ETag": '"x"'}, "bodyText": "\ud800"},
         "not UTF-8"),
        ({"path": "/a", "status": 200, "headers": {"ETag": '"x"'}, "bodyText": 5}, "bodyText"),
    ],
)  # fmt: skip
def test_a_text_body_is_checked(payload: dict[str, Any], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        frame(payload, "change")
