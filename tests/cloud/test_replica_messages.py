"""What replicas say to each other (cloud.replica_messages): typed, and a malformed one is None."""

from __future__ import annotations

import pytest

from cloud.replica_messages import (
    ActiveChoice,
    AdminAction,
    FeedEvent,
    FetchReply,
    FetchRequest,
    Takeover,
    decode,
    encode,
)
from wire import ErrorCode

MESSAGES = [
    FetchRequest(id="r1", sender="A", pits="p1", path="/", if_none_match=None, timeout=5.0),
    FetchReply(id="r1", status=200, etag='"sha256:00"', body=b"\x00\xff[]", age=1.5),
    FetchReply(id="r2", error=ErrorCode.BUSY, message="busy", retry_after=2.0),
    Takeover(pits="p1", node="B"),
    AdminAction(action="pause", pits="p1", who="alice"),
    ActiveChoice(pits=None, how=None),
    FeedEvent(node="A", pits="p1", epoch="18f3a", n=7, kind="change", data={"path": "/r.json"}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]
    assert decode(encode(message).encode()) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"t": "takeover", "pits": ' + b"[" * 900 + b"]" * 900 + b', "node": "B"}',
        b'{"t": "reply", "id": "r", "body": "!!"}',
        b'{"t": "reply", "id": "r", "status": "200"}',
        b'{"t": "admin", "action": "reboot", "pits": "p", "who": "x"}',
        b'{"t": "nope"}',
        b'{"t": "feed", "node": "A", "pits": "p", "epoch": "XY", "n": 1, "kind": "k", "data": {}}',
        b'{"t": "feed", "node": "A", "pits": "p", "epoch": "ab", "n": -1, "kind": "k", "data": {}}',
        b'{"t": "feed", "node": "A", "pits": "p", "epoch": "ab", "n": true, "kind": "k", "data": {}}',
        b'{"t": "feed", "node": "A", "pits": "p", "epoch": "ab", "n": 1, "kind": "k", "data": []}',
        b'{"t": "takeover", "pits": "p", "node": "B", "extra": 1}',
        b"[]",
        b"\xff\xfe",
        b"",
    ],
)
def test_a_malformed_message_is_none(data: bytes) -> None:
    assert decode(data) is None
