"""Frames of protocol version 1: round trips, and every malformed frame refused as BAD_REQUEST."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from wire.errors import ErrorCode, ProtocolError
from wire.messages import (
    MAX_FEATURE,
    MAX_FEATURES,
    MAX_ID_LENGTH,
    MAX_LIMITS,
    MAX_MESSAGE,
    MAX_PITS_ID,
    MAX_SW_VERSION,
    MAX_TOKEN,
    CloudHello,
    Error,
    Fetch,
    Frame,
    Message,
    Ping,
    PitsHello,
    Pong,
    Response,
    Sender,
    Token,
    decode,
    encode,
    new_id,
    peek_id,
)

NOW_MS = 1_738_177_869_494
FRAME_ID = "5f0c6a0e8a2b4c0f9d3e1a2b3c4d5e6f"
ETAG = '"sha256:75f431c40c8677ecaff426d5dc0af32989b8fd7fb5721a1436f0b8a6d8bbb998"'

CLOUD_MESSAGES: list[Any] = [
    pytest.param(
        CloudHello(protocol_version=1, server_time_ms=NOW_MS, limits={"maxBody": 8388608}),
        "hello",
        id="hello",
    ),
    pytest.param(CloudHello(protocol_version=1, server_time_ms=0), "hello", id="hello-no-limits"),
    pytest.param(
        Fetch(method="GET", path="/events/e/Race.json", timeout_ms=5000), "fetch", id="fetch"
    ),
    pytest.param(
        Fetch(method="HEAD", path="/events/\u20ac a/", timeout_ms=1, if_none_match=ETAG),
        "fetch",
        id="fetch-if-none-match",
    ),
    pytest.param(
        Error(code=ErrorCode.UNAVAILABLE, message="no pits", details={"id": "x", "n": [1]}),
        "error",
        id="error",
    ),
    pytest.param(Error(code=ErrorCode.INTERNAL, message=""), "error", id="error-bare"),
    pytest.param(Ping(), "ping", id="ping"),
    pytest.param(Pong(), "pong", id="pong"),
    pytest.param(Token(token="eyJhbGciOiJIUzI1NiJ9.e30.sig"), "token", id="token"),
]

PITS_MESSAGES: list[Any] = [
    pytest.param(
        PitsHello(protocol_version=1, pits_id="pits-7", sw_version="1.2.3", features=("a", "b")),
        "hello",
        id="hello",
    ),
    pytest.param(
        PitsHello(protocol_version=2, pits_id="p", sw_version=""), "hello", id="hello-bare"
    ),
    pytest.param(
        Response(status=200, etag=ETAG, content_type="text/json", body=b'[{"a":1}]'),
        "response",
        id="response",
    ),
    pytest.param(Response(status=200, etag=ETAG, body=b""), "response", id="response-empty"),
    pytest.param(
        Response(status=200, body=bytes(range(256)) * 3), "response", id="response-binary"
    ),
    pytest.param(Response(status=304, etag=ETAG), "response", id="response-304"),
    pytest.param(Response(status=200, etag=ETAG), "response", id="response-head"),
    pytest.param(Response(status=404), "response", id="response-bare"),
    pytest.param(
        Error(code=ErrorCode.BAD_CONTENT, message="body is not JSON"), "error", id="error"
    ),
    pytest.param(
        Error(code=ErrorCode.BUSY, message="8 in flight", details={"inFlight": 8}),
        "error",
        id="error-details",
    ),
    pytest.param(Ping(), "ping", id="ping"),
    pytest.param(Pong(), "pong", id="pong"),
]


def roundtrip(message: Message, sender: Sender, kind: str) -> None:
    text = encode(message, frame_id=FRAME_ID, now_ms=NOW_MS)
    assert isinstance(text, str)
    for data in (text, text.encode("utf-8")):
        frame = decode(data, sender=sender)
        assert frame == Frame(FRAME_ID, kind, NOW_MS, message)
        assert type(frame.message) is type(message)
    envelope = json.loads(text)
    assert set(envelope) == {"id", "type", "ts", "payload"}
    assert (envelope["id"], envelope["type"], envelope["ts"]) == (FRAME_ID, kind, NOW_MS)
    assert envelope["payload"] == message.payload()


@pytest.mark.parametrize(("message", "kind"), CLOUD_MESSAGES)
def test_cloud_round_trip(message: Message, kind: str) -> None:
    roundtrip(message, "cloud", kind)


@pytest.mark.parametrize(("message", "kind"), PITS_MESSAGES)
def test_pits_round_trip(message: Message, kind: str) -> None:
    roundtrip(message, "pits", kind)


# The payloads on the wire, as docs/protocol.md names their fields.


def test_cloud_hello_payload() -> None:
    hello = CloudHello(protocol_version=1, server_time_ms=NOW_MS, limits={"a": 1})
    assert hello.payload() == {
        "protocolVersion": 1,
        "serverTimeMs": NOW_MS,
        "limits": {"a": 1},
        "features": [],
    }


def test_pits_hello_payload() -> None:
    hello = PitsHello(protocol_version=1, pits_id="p1", sw_version="0.1", features=("x",))
    assert hello.payload() == {
        "protocolVersion": 1,
        "pitsId": "p1",
        "swVersion": "0.1",
        "features": ["x"],
    }


def test_fetch_payload() -> None:
    assert Fetch(method="GET", path="/", timeout_ms=5000).payload() == {
        "method": "GET",
        "path": "/",
        "timeoutMs": 5000,
    }
    assert Fetch(method="GET", path="/", timeout_ms=1, if_none_match=ETAG).payload() == {
        "method": "GET",
        "path": "/",
        "timeoutMs": 1,
        "ifNoneMatch": ETAG,
    }


def test_response_payload_with_body() -> None:
    body = b"\x00\xff[]"
    payload = Response(status=200, etag=ETAG, content_type="text/json", body=body).payload()
    assert payload == {
        "status": 200,
        "headers": {"ETag": ETAG, "Content-Type": "text/json"},
        "bodyB64": "AP9bXQ==",
    }
    assert base64.b64decode(payload["bodyB64"]) == body


def test_response_empty_body_is_present_and_empty() -> None:
    payload = Response(status=200, body=b"").payload()
    assert payload == {"status": 200, "headers": {}, "bodyB64": ""}


def test_response_304_has_no_body() -> None:
    payload = Response(status=304, etag=ETAG).payload()
    assert payload == {"status": 304, "headers": {"ETag": ETAG}}
    frame = decode(encode(Response(status=304, etag=ETAG), now_ms=1), sender="pits")
    assert isinstance(frame.message, Response)
    assert frame.message.body is None
    assert frame.message.status == 304
    assert frame.message.etag == ETAG


def test_error_payload() -> None:
    assert Error(code=ErrorCode.DENIED, message="m").payload() == {
        "code": "DENIED",
        "message": "m",
    }
    assert Error(code=ErrorCode.DENIED, message="m", details={"path": "/x"}).payload() == {
        "code": "DENIED",
        "message": "m",
        "details": {"path": "/x"},
    }


def test_ping_pong_token_payloads() -> None:
    assert Ping().payload() == {}
    assert Pong().payload() == {}
    assert Token(token="t").payload() == {"token": "t"}


def test_encode_is_ascii_and_does_not_escape_slash() -> None:
    """Frames are ASCII so that a lone surrogate a peer sent can always be sent back."""
    text = encode(Fetch(method="GET", path="/events/\u20ac", timeout_ms=1), now_ms=1)
    assert text.isascii()
    assert "/events/\\u20ac" in text
    assert "\\/" not in text
    assert decode(text, sender="cloud").message.path == "/events/\u20ac"


def test_encode_gives_a_fresh_id_by_default() -> None:
    first = json.loads(encode(Ping(), now_ms=1))["id"]
    second = json.loads(encode(Ping(), now_ms=1))["id"]
    assert first != second
    assert len(first) == 32
    int(first, 16)
    # An empty frame_id is no id: a fresh one is used.
    assert json.loads(encode(Ping(), frame_id="", now_ms=1))["id"] != ""


def test_new_id_is_unique_uuid4_hex() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for frame_id in list(ids)[:20]:
        assert len(frame_id) == 32
        assert frame_id[12] == "4"
        assert 0 < len(frame_id) <= MAX_ID_LENGTH


def test_response_headers_read_case_insensitively() -> None:
    frame = decode(
        frame_text(
            "response",
            {"status": 200, "headers": {"etag": ETAG, "CONTENT-TYPE": "text/json", "X-A": "b"}},
        ),
        sender="pits",
    )
    assert frame.message == Response(status=200, etag=ETAG, content_type="text/json")


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            "fetch",
            {"method": "GET", "path": "/", "timeoutMs": 5, "ifNoneMatch": None},
            Fetch(method="GET", path="/", timeout_ms=5),
        ),
        (
            "hello",
            {"protocolVersion": 1, "serverTimeMs": 5, "limits": None},
            CloudHello(protocol_version=1, server_time_ms=5),
        ),
        (
            "error",
            {"code": "TIMEOUT", "message": "m", "details": None},
            Error(code=ErrorCode.TIMEOUT, message="m"),
        ),
    ],
)
def test_optional_fields_may_be_null(kind: str, payload: dict[str, Any], expected: Any) -> None:
    assert decode(frame_text(kind, payload), sender="cloud").message == expected


def test_pits_hello_optional_features() -> None:
    variants: list[dict[str, Any]] = [{}, {"features": None}, {"features": []}]
    for features in variants:
        payload = {"protocolVersion": 1, "pitsId": "p", "swVersion": "1", **features}
        message = decode(frame_text("hello", payload), sender="pits").message
        assert message == PitsHello(protocol_version=1, pits_id="p", sw_version="1")


def test_response_status_bounds() -> None:
    for status in (200, 304, 400, 404, 500, 599):
        message = decode(frame_text("response", {"status": status}), sender="pits").message
        assert message == Response(status=status)


@pytest.mark.parametrize("status", [100, 101, 201, 204, 206, 301, 302, 303, 307, 308, 399])
def test_response_status_a_relay_cannot_serve_as_data_is_refused(status: int) -> None:
    exc = assert_bad(frame_text("response", {"status": status}), "pits", "f1")
    assert exc.message == f"status {status} is not one a response may carry"


@pytest.mark.parametrize(
    "content_type",
    ["text", "text/html\r\nSet-Cookie: a=b", "<script>", "a/b; c", "text/html; x=" + "a" * 300],
)
def test_malformed_content_type_is_refused(content_type: str) -> None:
    payload = {"status": 200, "headers": {"Content-Type": content_type}}
    exc = assert_bad(frame_text("response", payload), "pits", "f1")
    assert exc.message == "Content-Type is malformed"


@pytest.mark.parametrize("etag", ["sha256:abc", '"a"b"', '"' + "a" * 300 + '"', '"\u00e9"'])
def test_malformed_etag_is_refused(etag: str) -> None:
    payload = {"status": 304, "headers": {"ETag": etag}}
    exc = assert_bad(frame_text("response", payload), "pits", "f1")
    assert exc.message == "ETag is malformed"


HELLO_PAST_ITS_BOUNDS = [
    pytest.param({"swVersion": "x" * (MAX_SW_VERSION + 1)}, "swVersion", id="sw-version"),
    pytest.param({"swVersion": "x" * (8 * 1024 * 1024)}, "swVersion", id="sw-version-8mib"),
    pytest.param({"pitsId": "p" * (MAX_PITS_ID + 1)}, "pitsId", id="pits-id"),
    pytest.param({"features": ["f"] * (MAX_FEATURES + 1)}, "features", id="feature-count"),
    pytest.param({"features": ["f" * (MAX_FEATURE + 1)]}, "features", id="feature-length"),
]


@pytest.mark.parametrize(("change", "field"), HELLO_PAST_ITS_BOUNDS)
def test_hello_fields_past_their_bounds_are_refused(change: dict[str, Any], field: str) -> None:
    payload = {"protocolVersion": 1, "pitsId": "p", "swVersion": "1", **change}
    exc = assert_bad(frame_text("hello", payload), "pits", "f1")
    assert field in exc.message


def test_hello_fields_at_their_bounds_are_accepted() -> None:
    payload = {
        "protocolVersion": 1,
        "pitsId": "p" * MAX_PITS_ID,
        "swVersion": "v" * MAX_SW_VERSION,
        "features": ["f" * MAX_FEATURE] * MAX_FEATURES,
    }
    message = decode(frame_text("hello", payload), sender="pits").message
    assert isinstance(message, PitsHello)
    assert len(message.features) == MAX_FEATURES


def test_cloud_hello_limits_are_bounded() -> None:
    many = {f"k{i}": i for i in range(MAX_LIMITS + 1)}
    payload = {"protocolVersion": 1, "serverTimeMs": 0, "limits": many}
    assert_bad(frame_text("hello", payload), "cloud", "f1")
    nested = {"protocolVersion": 1, "serverTimeMs": 0, "limits": {"a": {"b": 1}}}
    assert_bad(frame_text("hello", nested), "cloud", "f1")


def test_error_message_and_token_are_bounded() -> None:
    error = {"code": "BUSY", "message": "m" * (MAX_MESSAGE + 1)}
    assert_bad(frame_text("error", error), "pits", "f1")
    assert_bad(frame_text("token", {"token": "t" * (MAX_TOKEN + 1)}), "cloud", "f1")


def test_id_of_max_length_accepted() -> None:
    frame_id = "x" * MAX_ID_LENGTH
    assert decode(frame_text("ping", {}, frame_id=frame_id), sender="cloud").id == frame_id


def test_ts_may_be_any_integer() -> None:
    for ts in (0, -1, 2**70):
        assert decode(frame_text("ping", {}, ts=ts), sender="pits").ts == ts


def test_hello_is_typed_by_its_sender() -> None:
    cloud = decode(frame_text("hello", {"protocolVersion": 1, "serverTimeMs": 2}), sender="cloud")
    assert isinstance(cloud.message, CloudHello)
    pits = decode(
        frame_text("hello", {"protocolVersion": 1, "pitsId": "p", "swVersion": "s"}),
        sender="pits",
    )
    assert isinstance(pits.message, PitsHello)


# Malformed frames.

MISSING = object()


def frame_text(
    kind: Any = "ping",
    payload: Any = MISSING,
    *,
    frame_id: Any = "f1",
    ts: Any = NOW_MS,
    drop: tuple[str, ...] = (),
) -> str:
    obj: dict[str, Any] = {
        "id": frame_id,
        "type": kind,
        "ts": ts,
        "payload": {} if payload is MISSING else payload,
    }
    for key in drop:
        del obj[key]
    return json.dumps(obj)


def assert_bad(data: str | bytes, sender: Sender, frame_id: str | None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, sender=sender)
    exc = info.value
    assert type(exc) is ProtocolError
    assert exc.code is ErrorCode.BAD_REQUEST
    if frame_id is None:
        assert exc.details is None
        assert "details" not in exc.payload()
    else:
        assert exc.details == {"id": frame_id}
        assert exc.payload()["details"] == {"id": frame_id}
    assert peek_id(data) == frame_id
    return exc


NOT_A_FRAME: list[Any] = [
    pytest.param("", id="empty"),
    pytest.param(" ", id="blank"),
    pytest.param("not json", id="text"),
    pytest.param("{", id="open-brace"),
    pytest.param('{"id": "f1", "type": "ping"', id="truncated"),
    pytest.param("{'id': 'f1'}", id="single-quotes"),
    pytest.param(frame_text() + " x", id="trailing-garbage"),
    pytest.param(frame_text() + frame_text(), id="two-frames"),
    pytest.param(b"\xff\xfe\x00", id="invalid-utf8"),
    pytest.param(b'{"id": "f\xff1", "type": "ping", "ts": 1, "payload": {}}', id="invalid-utf8-id"),
    pytest.param(b'{"id": "f1", "type": "\xc3", "ts": 1, "payload": {}}', id="truncated-utf8"),
    pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting"),
    pytest.param("[]", id="array"),
    pytest.param('[{"id": "f1", "type": "ping", "ts": 1, "payload": {}}]', id="array-of-frame"),
    pytest.param("1", id="number"),
    pytest.param("1.5", id="float"),
    pytest.param('"f1"', id="string"),
    pytest.param("null", id="null"),
    pytest.param("true", id="true"),
    pytest.param(frame_text(drop=("id",)), id="missing-id"),
    pytest.param(frame_text(frame_id=""), id="empty-id"),
    pytest.param(frame_text(frame_id="x" * (MAX_ID_LENGTH + 1)), id="long-id"),
    pytest.param(frame_text(frame_id="x" * 10_000), id="very-long-id"),
    pytest.param(frame_text(frame_id=7), id="int-id"),
    pytest.param(frame_text(frame_id=None), id="null-id"),
    pytest.param(frame_text(frame_id=["f1"]), id="list-id"),
    pytest.param(frame_text(frame_id=True), id="bool-id"),
]


@pytest.mark.parametrize("sender", ["cloud", "pits"])
@pytest.mark.parametrize("data", NOT_A_FRAME)
def test_unreadable_frames_refused_without_id(data: str | bytes, sender: Sender) -> None:
    assert_bad(data, sender, None)


BAD_ENVELOPE: list[Any] = [
    pytest.param(frame_text(drop=("type",)), id="missing-type"),
    pytest.param(frame_text(kind=None), id="null-type"),
    pytest.param(frame_text(kind=1), id="int-type"),
    pytest.param(frame_text(kind=["ping"]), id="list-type"),
    pytest.param(frame_text(drop=("ts",)), id="missing-ts"),
    pytest.param(frame_text(ts=None), id="null-ts"),
    pytest.param(frame_text(ts="1738177869494"), id="string-ts"),
    pytest.param(frame_text(ts=1.5), id="float-ts"),
    pytest.param(frame_text(ts=1.0), id="integral-float-ts"),
    pytest.param(frame_text(ts=True), id="bool-ts"),
    pytest.param(frame_text(ts=False), id="false-ts"),
    pytest.param(frame_text(ts=[1]), id="list-ts"),
    pytest.param(frame_text(drop=("payload",)), id="missing-payload"),
    pytest.param(frame_text(payload=None), id="null-payload"),
    pytest.param(frame_text(payload=[]), id="list-payload"),
    pytest.param(frame_text(payload="{}"), id="string-payload"),
    pytest.param(frame_text(payload=0), id="number-payload"),
    pytest.param(frame_text(kind="bogus"), id="unknown-type"),
    pytest.param(frame_text(kind=""), id="empty-type"),
    pytest.param(frame_text(kind="PING"), id="uppercase-type"),
    pytest.param(frame_text(kind=" ping"), id="padded-type"),
    pytest.param(frame_text(kind="__class__"), id="dunder-type"),
    pytest.param(frame_text(kind="x" * 5000), id="huge-type"),
]


@pytest.mark.parametrize("sender", ["cloud", "pits"])
@pytest.mark.parametrize("data", BAD_ENVELOPE)
def test_bad_envelope_refused_with_id(data: str, sender: Sender) -> None:
    exc = assert_bad(data, sender, "f1")
    assert len(exc.message) < 200


FETCH = {"method": "GET", "path": "/events/e/Race.json", "timeoutMs": 5000}
RESPONSE = {"status": 200, "headers": {"ETag": ETAG}, "bodyB64": "W10="}
CLOUD_HELLO = {"protocolVersion": 1, "serverTimeMs": NOW_MS, "limits": {}}
PITS_HELLO = {"protocolVersion": 1, "pitsId": "p", "swVersion": "1", "features": []}
ERROR = {"code": "TIMEOUT", "message": "slow"}


def without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def but(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**payload, **changes}


def test_valid_payloads_decode() -> None:
    # The baselines the malformed cases below start from are themselves good.
    for kind, payload in [("fetch", FETCH), ("hello", CLOUD_HELLO), ("error", ERROR)]:
        decode(frame_text(kind, payload), sender="cloud")
    decode(frame_text("token", {"token": "t"}), sender="cloud")
    for kind, payload in [("response", RESPONSE), ("hello", PITS_HELLO), ("error", ERROR)]:
        decode(frame_text(kind, payload), sender="pits")


BAD_FROM_CLOUD: list[Any] = [
    # A type the cloud may not send.
    pytest.param("response", RESPONSE, id="cloud-sends-response"),
    # Pits hello from the cloud lacks serverTimeMs.
    pytest.param("hello", PITS_HELLO, id="pits-hello-from-cloud"),
    pytest.param("fetch", {}, id="fetch-empty"),
    pytest.param("fetch", without(FETCH, "method"), id="fetch-no-method"),
    pytest.param("fetch", without(FETCH, "path"), id="fetch-no-path"),
    pytest.param("fetch", without(FETCH, "timeoutMs"), id="fetch-no-timeout"),
    pytest.param("fetch", but(FETCH, method=None), id="fetch-null-method"),
    pytest.param("fetch", but(FETCH, method=1), id="fetch-int-method"),
    pytest.param("fetch", but(FETCH, path=["/"]), id="fetch-list-path"),
    pytest.param("fetch", but(FETCH, timeoutMs=True), id="fetch-bool-timeout"),
    pytest.param("fetch", but(FETCH, timeoutMs="5000"), id="fetch-string-timeout"),
    pytest.param("fetch", but(FETCH, timeoutMs=5000.0), id="fetch-float-timeout"),
    pytest.param("fetch", but(FETCH, timeoutMs=-1), id="fetch-negative-timeout"),
    pytest.param("fetch", but(FETCH, timeoutMs=-5000), id="fetch-very-negative-timeout"),
    pytest.param("fetch", but(FETCH, timeoutMs=0), id="fetch-zero-timeout"),
    pytest.param("fetch", but(FETCH, ifNoneMatch=1), id="fetch-int-inm"),
    pytest.param("fetch", but(FETCH, ifNoneMatch=[ETAG]), id="fetch-list-inm"),
    pytest.param("hello", without(CLOUD_HELLO, "protocolVersion"), id="hello-no-version"),
    pytest.param("hello", without(CLOUD_HELLO, "serverTimeMs"), id="hello-no-time"),
    pytest.param("hello", but(CLOUD_HELLO, protocolVersion=True), id="hello-bool-version"),
    pytest.param("hello", but(CLOUD_HELLO, protocolVersion="1"), id="hello-string-version"),
    pytest.param("hello", but(CLOUD_HELLO, serverTimeMs=1.5), id="hello-float-time"),
    pytest.param("hello", but(CLOUD_HELLO, limits=[]), id="hello-list-limits"),
    pytest.param("hello", but(CLOUD_HELLO, limits="x"), id="hello-string-limits"),
    pytest.param("error", {}, id="error-empty"),
    pytest.param("error", without(ERROR, "code"), id="error-no-code"),
    pytest.param("error", without(ERROR, "message"), id="error-no-message"),
    pytest.param("error", but(ERROR, code="NOPE"), id="error-unknown-code"),
    pytest.param("error", but(ERROR, code="timeout"), id="error-lowercase-code"),
    pytest.param("error", but(ERROR, code=""), id="error-empty-code"),
    pytest.param("error", but(ERROR, code="X" * 5000), id="error-huge-code"),
    pytest.param("error", but(ERROR, code=504), id="error-int-code"),
    pytest.param("error", but(ERROR, message=1), id="error-int-message"),
    pytest.param("error", but(ERROR, details="x"), id="error-string-details"),
    pytest.param("error", but(ERROR, details=[1]), id="error-list-details"),
    pytest.param("token", {}, id="token-missing"),
    pytest.param("token", {"token": 1}, id="token-int"),
    pytest.param("token", {"token": None}, id="token-null"),
]


@pytest.mark.parametrize(("kind", "payload"), BAD_FROM_CLOUD)
def test_bad_cloud_payloads(kind: str, payload: dict[str, Any]) -> None:
    exc = assert_bad(frame_text(kind, payload), "cloud", "f1")
    assert len(exc.message) < 200


BAD_FROM_PITS: list[Any] = [
    # Types the pits may not send.
    pytest.param("fetch", FETCH, id="pits-sends-fetch"),
    pytest.param("token", {"token": "t"}, id="pits-sends-token"),
    # Cloud hello from the pits lacks pitsId and swVersion.
    pytest.param("hello", CLOUD_HELLO, id="cloud-hello-from-pits"),
    pytest.param("hello", without(PITS_HELLO, "pitsId"), id="hello-no-pits-id"),
    pytest.param("hello", without(PITS_HELLO, "swVersion"), id="hello-no-sw-version"),
    pytest.param("hello", without(PITS_HELLO, "protocolVersion"), id="hello-no-version"),
    pytest.param("hello", but(PITS_HELLO, protocolVersion=True), id="hello-bool-version"),
    pytest.param("hello", but(PITS_HELLO, protocolVersion=1.0), id="hello-float-version"),
    pytest.param("hello", but(PITS_HELLO, pitsId=7), id="hello-int-pits-id"),
    pytest.param("hello", but(PITS_HELLO, features="gzip"), id="hello-string-features"),
    pytest.param("hello", but(PITS_HELLO, features=[1]), id="hello-int-feature"),
    pytest.param("hello", but(PITS_HELLO, features=["a", None]), id="hello-null-feature"),
    pytest.param("hello", but(PITS_HELLO, features={"a": 1}), id="hello-dict-features"),
    pytest.param("response", {}, id="response-empty"),
    pytest.param("response", without(RESPONSE, "status"), id="response-no-status"),
    pytest.param("response", but(RESPONSE, status=True), id="response-bool-status"),
    pytest.param("response", but(RESPONSE, status="200"), id="response-string-status"),
    pytest.param("response", but(RESPONSE, status=200.0), id="response-float-status"),
    pytest.param("response", but(RESPONSE, status=99), id="response-status-99"),
    pytest.param("response", but(RESPONSE, status=600), id="response-status-600"),
    pytest.param("response", but(RESPONSE, status=0), id="response-status-0"),
    pytest.param("response", but(RESPONSE, status=-200), id="response-status-negative"),
    pytest.param("response", but(RESPONSE, status=2**70), id="response-status-huge"),
    pytest.param("response", but(RESPONSE, headers=[]), id="response-list-headers"),
    pytest.param("response", but(RESPONSE, headers="ETag: x"), id="response-string-headers"),
    pytest.param("response", but(RESPONSE, headers={"ETag": 1}), id="response-int-header"),
    pytest.param("response", but(RESPONSE, headers={"ETag": None}), id="response-null-header"),
    pytest.param("response", but(RESPONSE, headers={"ETag": [ETAG]}), id="response-list-header"),
    pytest.param("response", but(RESPONSE, bodyB64=1), id="response-int-body"),
    pytest.param("response", but(RESPONSE, bodyB64=["W10="]), id="response-list-body"),
    pytest.param("response", but(RESPONSE, bodyB64="W10"), id="b64-no-padding"),
    pytest.param("response", but(RESPONSE, bodyB64="W"), id="b64-one-char"),
    pytest.param("response", but(RESPONSE, bodyB64="W1 0="), id="b64-space"),
    pytest.param("response", but(RESPONSE, bodyB64="W10=\n"), id="b64-newline"),
    pytest.param("response", but(RESPONSE, bodyB64="!!!!"), id="b64-punctuation"),
    pytest.param("response", but(RESPONSE, bodyB64="W1-_"), id="b64-urlsafe-alphabet"),
    pytest.param("response", but(RESPONSE, bodyB64="\u00e9\u00e9\u00e9\u00e9"), id="b64-non-ascii"),
    pytest.param("response", but(RESPONSE, bodyB64="===="), id="b64-only-padding"),
    pytest.param("error", but(ERROR, code="NOT_A_CODE"), id="error-unknown-code"),
    pytest.param("error", but(ERROR, code=None), id="error-null-code"),
    pytest.param("error", but(ERROR, message=None), id="error-null-message"),
]


@pytest.mark.parametrize(("kind", "payload"), BAD_FROM_PITS)
def test_bad_pits_payloads(kind: str, payload: dict[str, Any]) -> None:
    exc = assert_bad(frame_text(kind, payload), "pits", "f1")
    assert len(exc.message) < 200


def test_refusal_messages_say_what_is_wrong() -> None:
    cases: list[tuple[str, Sender, str]] = [
        (frame_text("fetch", FETCH), "pits", "unexpected frame type 'fetch' from pits"),
        (frame_text("fetch", but(FETCH, timeoutMs=-1)), "cloud", "timeoutMs must be positive"),
        (frame_text("fetch", without(FETCH, "path")), "cloud", "payload lacks path"),
        (frame_text("response", but(RESPONSE, status=600)), "pits", "status out of range"),
        (frame_text("response", but(RESPONSE, bodyB64="W")), "pits", "bodyB64 is not base64"),
        (frame_text("error", but(ERROR, code="NOPE")), "pits", "unknown error code 'NOPE'"),
        (frame_text(ts="1"), "pits", "frame ts must be an integer"),
        ("[]", "pits", "frame is not a JSON object"),
        ("{", "pits", "frame is not JSON"),
    ]
    for data, sender, message in cases:
        with pytest.raises(ProtocolError) as info:
            decode(data, sender=sender)
        assert info.value.message == message


def test_peek_id() -> None:
    assert peek_id(frame_text("fetch", FETCH, frame_id="abc")) == "abc"
    assert peek_id(frame_text("fetch", FETCH, frame_id="abc").encode()) == "abc"
    assert peek_id(frame_text(kind="bogus", frame_id="abc")) == "abc"
    assert peek_id('{"id": "abc"}') == "abc"
    assert peek_id("{") is None
    assert peek_id(b"\xff") is None
    assert peek_id('["abc"]') is None
    assert peek_id("null") is None
    assert peek_id('{"id": 5}') is None
    assert peek_id('{"id": ""}') is None
    assert peek_id(json.dumps({"id": "x" * (MAX_ID_LENGTH + 1)})) is None
    assert peek_id(json.dumps({"id": "x" * MAX_ID_LENGTH})) == "x" * MAX_ID_LENGTH


def test_error_exception() -> None:
    error = Error(code=ErrorCode.TIMEOUT, message="origin slow", details={"id": "f1"})
    exc = error.exception()
    assert type(exc) is ProtocolError
    assert exc.code is ErrorCode.TIMEOUT
    assert exc.message == "origin slow"
    assert exc.details == {"id": "f1"}
    assert exc.payload() == error.payload()


def test_decoded_error_exception() -> None:
    text = encode(Error(code=ErrorCode.DENIED, message="no"), frame_id="f9", now_ms=1)
    frame = decode(text, sender="pits")
    assert isinstance(frame.message, Error)
    exc = frame.message.exception()
    assert exc.code is ErrorCode.DENIED
    assert exc.message == "no"
    assert exc.details is None


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips(code: ErrorCode) -> None:
    senders: tuple[Sender, ...] = ("cloud", "pits")
    for sender in senders:
        message = Error(code=code, message=str(code))
        frame = decode(encode(message, now_ms=1), sender=sender)
        assert frame.message == message
        assert isinstance(frame.message, Error)
        assert frame.message.code is code


def test_protocol_error_payload_becomes_an_error_frame() -> None:
    # What a side does with a refused frame: answer it with an error addressed to its id.
    bad = frame_text("fetch", FETCH, frame_id="f42")
    with pytest.raises(ProtocolError) as info:
        decode(bad, sender="pits")
    exc = info.value
    reply = Error(code=exc.code, message=exc.message, details=exc.details)
    frame = decode(encode(reply, frame_id=peek_id(bad), now_ms=1), sender="cloud")
    assert frame.id == "f42"
    assert frame.message == reply


def test_lone_surrogate_id_is_refused_or_answerable() -> None:
    data = '{"id": "f\\ud800", "type": "ping", "ts": 1, "payload": {}}'
    try:
        frame = decode(data, sender="pits")
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        return
    encode(Pong(), frame_id=frame.id, now_ms=1).encode("utf-8")


@pytest.mark.parametrize(
    "text",
    [
        '{"id":"f1","type":"ping","ts":1,"payload":{"x":NaN}}',
        '{"id":"f1","type":"ping","ts":1,"payload":{"x":Infinity}}',
        '{"id":"f1","type":"ping","ts":1,"payload":{"x":-Infinity}}',
        '{"id":"f1","type":"ping","ts":007,"payload":{}}',
        '{"id":"f\\u0001","type":"ping","ts":1,"payload":{"x":"a\x01b"}}',
    ],
)
def test_frames_must_be_strict_json(text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(text, sender="pits")
    assert caught.value.code is ErrorCode.BAD_REQUEST
