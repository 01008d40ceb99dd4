"""Properties of the wire package over generated inputs (Hypothesis).

Lone surrogates are left out of generated text; they have tests of their own in
test_canonical.py, test_paths.py and test_messages.py.
"""

from __future__ import annotations

import base64
import json
import random
import re
from typing import Any
from urllib.parse import quote

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.canonical import prepare_body
from wire.errors import ErrorCode, PathError, ProtocolError
from wire.messages import MAX_ID_LENGTH, Frame, Sender, decode, encode, peek_id
from wire.paths import Allowlist, encode_path, normalize_path

# No example database: running the tests must not write into the source tree.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Fewer examples where each one encodes a whole document several ways.
SLOW_PROPERTY = settings(PROPERTY, max_examples=100)

TEXT = st.characters(codec="utf-8")
# C0 controls and DEL; the C1 controls the code lets through are pinned in test_paths.py.
ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1

# Pieces that make interesting paths: every spelling of dots, slashes and escapes.
PATH_PIECES = [
    "/", "//", ".", "..", "...", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%00", "\x00",
    "%0a", "\t", "%7f", "%25", "%252e", "%", "%2", "%zz", "%c3", "%a9", "%c3%a9", "%ff",
    "%e2%82%ac", "\u20ac", "%20", " ", "?", "#", "%3f", "%23", "+", ";", "a", "b.json",
    "events", "httpfiles", "%c0%ae", "%C2%85",
]  # fmt: skip

RAW_PATHS = st.one_of(
    st.lists(st.sampled_from(PATH_PIECES), max_size=12).map(lambda ps: "/" + "".join(ps)),
    st.lists(st.one_of(st.sampled_from(PATH_PIECES), st.text(TEXT, max_size=3)), max_size=10).map(
        lambda ps: "/" + "".join(ps)
    ),
    st.binary(max_size=30).map(lambda b: "/" + quote(b, safe="/.%")),
    st.text(TEXT, max_size=30),
)


def check_normalized(out: str) -> None:
    assert out.startswith("/")
    assert "//" not in out
    assert "\\" not in out
    assert "%" not in out
    assert not ASCII_CONTROL.search(out)
    for segment in out.split("/"):
        assert not (segment and set(segment) == {"."}), out


@PROPERTY
@given(RAW_PATHS)
def test_normalize_path_output_is_safe_and_a_fixed_point(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except PathError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        assert exc.details == {"path": raw[:200]}
        return
    check_normalized(out)
    # Sent on to the origin (or back through the other side), it means the same path.
    assert normalize_path(encode_path(out)) == out
    assert encode_path(out).isascii()


@PROPERTY
@given(RAW_PATHS)
def test_default_allowlist_admits_only_its_trees(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except PathError:
        return
    segments = [s for s in out.split("/") if s]
    expected = not segments or segments[0] in ("events", "httpfiles")
    assert Allowlist().allows(out) is expected


SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=6)


@PROPERTY
@given(st.lists(SEGMENT, max_size=6))
def test_encode_path_round_trips_names(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    # DESIGN.md refuses names made only of dots, or holding a backslash, `%` or a control char.
    refusable = any(
        set(s) == {"."} or "\\" in s or "%" in s or ASCII_CONTROL.search(s) for s in segments
    )
    try:
        normalized = normalize_path(encode_path(path))
    except PathError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        assert refusable, path
        return
    assert not refusable, path
    assert normalized == path


# decode never raises anything but ProtocolError(BAD_REQUEST).

SENDERS: st.SearchStrategy[Sender] = st.sampled_from(["cloud", "pits"])


def check_decode(data: str | bytes, sender: Sender) -> Frame | None:
    try:
        frame = decode(data, sender=sender)
    except ProtocolError as exc:
        assert type(exc) is ProtocolError
        assert exc.code is ErrorCode.BAD_REQUEST
        assert exc.details is None or set(exc.details) == {"id"}
        frame = None
    frame_id = peek_id(data)
    assert frame_id is None or (isinstance(frame_id, str) and 0 < len(frame_id) <= MAX_ID_LENGTH)
    return frame


@PROPERTY
@given(st.one_of(st.text(), st.binary()), SENDERS)
def test_decode_arbitrary_data(data: str | bytes, sender: Sender) -> None:
    check_decode(data, sender)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT, max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(TEXT, max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)

PAYLOAD_KEYS = [
    "method", "path", "timeoutMs", "ifNoneMatch", "status", "headers", "bodyB64", "code",
    "message", "details", "protocolVersion", "serverTimeMs", "limits", "pitsId", "swVersion",
    "features", "token",
]  # fmt: skip

PAYLOAD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["GET", "/events/x.json", "W10=", "W10", "TIMEOUT", "NOPE", "ETag"]),
    st.integers(min_value=-10, max_value=1000),
    st.dictionaries(st.sampled_from(["ETag", "etag", "Content-Type", "X"]), JSON_VALUES),
    st.lists(st.text(TEXT, max_size=3), max_size=3),
)

B64 = st.one_of(st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()), st.text())

# Payloads that are good or nearly so for each type, from either side.
PAYLOADS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "fetch": st.fixed_dictionaries(
        {
            "method": st.sampled_from(["GET", "HEAD", "POST", ""]),
            "path": st.text(TEXT, max_size=20),
            "timeoutMs": st.integers(min_value=-5, max_value=10**6),
        },
        optional={"ifNoneMatch": st.none() | st.text(TEXT, max_size=10)},
    ),
    "response": st.fixed_dictionaries(
        {"status": st.integers(min_value=0, max_value=700)},
        optional={
            "headers": st.dictionaries(
                st.sampled_from(["ETag", "etag", "Content-Type", "CONTENT-TYPE", "X"]),
                st.text(TEXT, max_size=10),
            ),
            "bodyB64": B64,
        },
    ),
    "hello": st.one_of(
        st.fixed_dictionaries(
            {"protocolVersion": st.integers(0, 3), "serverTimeMs": st.integers()},
            optional={"limits": st.dictionaries(st.text(TEXT, max_size=5), JSON_VALUES)},
        ),
        st.fixed_dictionaries(
            {
                "protocolVersion": st.integers(0, 3),
                "pitsId": st.text(TEXT, max_size=8),
                "swVersion": st.text(TEXT, max_size=8),
            },
            optional={"features": st.lists(st.text(TEXT, max_size=4), max_size=3)},
        ),
    ),
    "error": st.fixed_dictionaries(
        {
            "code": st.sampled_from([*(c.value for c in ErrorCode), "NOPE"]),
            "message": st.text(TEXT, max_size=10),
        },
        optional={"details": st.dictionaries(st.text(TEXT, max_size=5), JSON_VALUES)},
    ),
    "ping": st.just({}),
    "pong": st.just({}),
    "token": st.fixed_dictionaries({"token": st.text(TEXT, max_size=20)}),
}


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    """A frame that is valid or one mutation away from it."""
    kind = draw(st.sampled_from(sorted(PAYLOADS)))
    payload = dict(draw(PAYLOADS[kind]))
    if draw(st.booleans()):
        key = draw(st.sampled_from(PAYLOAD_KEYS))
        if draw(st.booleans()):
            payload.pop(key, None)
        else:
            payload[key] = draw(PAYLOAD_VALUES)
    obj: dict[str, Any] = {
        "id": draw(st.text(TEXT, min_size=1, max_size=12)),
        "type": kind,
        "ts": draw(st.integers()),
        "payload": payload,
    }
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        key = draw(st.sampled_from(sorted(obj)))
        if draw(st.booleans()):
            del obj[key]
        else:
            obj[key] = draw(JSON_VALUES)
    return obj


@PROPERTY
@given(st.one_of(frames(), frames(), JSON_VALUES), SENDERS, st.booleans())
def test_decode_frame_shaped_data(obj: Any, sender: Sender, as_bytes: bool) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    data: str | bytes = text.encode("utf-8") if as_bytes else text
    frame = check_decode(data, sender)
    if frame is None:
        return
    # What decodes re-encodes to a frame that decodes to the same thing.
    again = decode(encode(frame.message, frame_id=frame.id, now_ms=frame.ts), sender=sender)
    assert (again.id, again.type, again.ts) == (frame.id, frame.type, frame.ts)
    assert again.message.payload() == frame.message.payload()


# Canonical JSON is stable under key order, indentation, line endings and escaping.

DOCUMENTS = st.one_of(
    st.lists(JSON_VALUES, max_size=5),
    st.dictionaries(st.text(TEXT, max_size=6), JSON_VALUES, max_size=5),
)


def shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@SLOW_PROPERTY
@given(
    DOCUMENTS,
    st.randoms(use_true_random=False),
    st.sampled_from([None, 0, 1, 2, 4, "\t"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_canonical_form_is_stable(
    value: Any, rnd: random.Random, indent: Any, ensure_ascii: bool, crlf: bool, bom: bool
) -> None:
    reference = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    variant = json.dumps(shuffled(value, rnd), indent=indent, ensure_ascii=ensure_ascii)
    if crlf:
        # json.dumps escapes newlines inside strings, so only the layout changes.
        variant = variant.replace("\n", "\r\n")
    raw = (b"\xef\xbb\xbf" if bom else b"") + variant.encode("utf-8")
    sent, tag = prepare_body("/events/e/Race.json", raw)
    assert (sent, tag) == prepare_body("/events/e/Race.json", reference.encode("utf-8"))
    assert prepare_body("/events/e/Race.json", sent) == (sent, tag)
    assert ujson.loads(sent) == value
    assert json.loads(sent) == value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


@SLOW_PROPERTY
@given(DOCUMENTS)
def test_canonical_form_matches_stdlib_without_floats(value: Any) -> None:
    # Float formatting differs between encoders (1e-07 vs 1e-7); everything else must not.
    if _has_float(value):
        return
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert prepare_body("/x.json", json.dumps(value).encode())[0] == expected.encode("utf-8")
