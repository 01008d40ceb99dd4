"""Canonical JSON and ETags: part of the protocol, pinned with fixed expected bytes and hashes.

If one of the literal hashes below changes, every ETag every deployed pits box sends changes
with it: that is a protocol change, not a test to update.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import ujson

from wire.canonical import (
    canonical_json,
    check_json,
    decode_lenient,
    etag_matches,
    etag_of,
    is_json_path,
    prepare_body,
)
from wire.errors import ContentError, ErrorCode, ProtocolError

JSON_PATH = "/events/3a96b1b6/Race.json"

# (raw body as FPVTrackside might serve it, canonical bytes, ETag of the canonical bytes)
PINNED = [
    pytest.param(
        b'[\r\n  {\r\n    "b": 1,\r\n    "a": "x/y \\u00e9"\r\n  }\r\n]',
        b'[{"a":"x/y \xc3\xa9","b":1}]',
        '"sha256:75f431c40c8677ecaff426d5dc0af32989b8fd7fb5721a1436f0b8a6d8bbb998"',
        id="crlf-indented",
    ),
    pytest.param(
        b"",
        b"[]",
        '"sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"',
        id="empty",
    ),
    pytest.param(
        b" \r\n\t ",
        b"[]",
        '"sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"',
        id="whitespace",
    ),
    pytest.param(
        b"[580.8522942, 123456789012345678901234567890, -7, -0.5, 1.0, 0, 1E2, 2.5e-8]",
        b"[580.8522942,123456789012345678901234567890,-7,-0.5,1.0,0,100.0,2.5e-8]",
        '"sha256:b8b2b95492af021fc8850e03d6a882d305d223de1c778f876b0718c535bafbcf"',
        id="numbers",
    ),
    pytest.param(
        b'["a\\u0000b\\u001f\\t\\n\\r\\b\\f\\"\\\\ \\u007f \\u2028 <&> \\/"]',
        b'["a\\u0000b\\u001f\\t\\n\\r\\b\\f\\"\\\\ \x7f \xe2\x80\xa8 <&> /"]',
        '"sha256:37516d252499bf01a17b6b8ff1019a75149b532c7875d81bea3e7585c1ff1130"',
        id="escapes",
    ),
    pytest.param(
        b'{"z": {"y": [{"b": 2, "a": 1}], "x": null}, "a": true, "m": false}',
        b'{"a":true,"m":false,"z":{"x":null,"y":[{"a":1,"b":2}]}}',
        '"sha256:d44141aa6a6635f3fec2a14acebe2359add47647613e736725b8e24f9b79e6b3"',
        id="nested",
    ),
    pytest.param(
        b'[\r\n  {\r\n    "Time": "2025/01/29 19:11:09.494",\r\n'
        b'    "Name": "\xe2\x82\xac \xf0\x9f\x9a\x81"\r\n  }\r\n]',
        b'[{"Name":"\xe2\x82\xac \xf0\x9f\x9a\x81","Time":"2025/01/29 19:11:09.494"}]',
        '"sha256:7c71eb7c5bee1d7eb7e4d060679799a965ef6f22bafa11e4e482fc6bba992e50"',
        id="raw-utf8-and-date",
    ),
    pytest.param(
        b"\xef\xbb\xbf[1]",
        b"[1]",
        '"sha256:080a9ed428559ef602668b4c00f114f1a11c3f6b02a435f0bdc154578e4d7f22"',
        id="bom",
    ),
]


@pytest.mark.parametrize(("raw", "canonical", "etag"), PINNED)
def test_pinned_canonical_bytes_and_etag(raw: bytes, canonical: bytes, etag: str) -> None:
    sent, tag = prepare_body(JSON_PATH, raw)
    assert sent == canonical
    assert tag == etag


@pytest.mark.parametrize(("raw", "canonical", "etag"), PINNED)
def test_pinned_etags_agree_with_hashlib(raw: bytes, canonical: bytes, etag: str) -> None:
    # The literals above are checked against an independent sha256 of the literal bytes.
    assert etag == '"sha256:' + hashlib.sha256(canonical).hexdigest() + '"'
    assert etag_of(canonical) == etag


@pytest.mark.parametrize(("raw", "canonical", "etag"), PINNED)
def test_pinned_canonical_bytes_decode_to_the_same_value(
    raw: bytes, canonical: bytes, etag: str
) -> None:
    assert json.loads(canonical) == decode_lenient(raw)
    # Canonical bytes are a fixed point.
    assert prepare_body(JSON_PATH, canonical) == (canonical, etag)


def test_etag_format() -> None:
    tag = etag_of(b"abc")
    assert tag == '"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"'
    assert tag.startswith('"sha256:') and tag.endswith('"')
    hexpart = tag[len('"sha256:') : -1]
    assert len(hexpart) == 64
    assert hexpart == hexpart.lower()
    int(hexpart, 16)


def test_empty_body_on_json_path_is_the_etag_of_empty_array() -> None:
    assert prepare_body("/events/e/Results.json", b"") == (
        b"[]",
        '"sha256:' + hashlib.sha256(b"[]").hexdigest() + '"',
    )


@pytest.mark.parametrize(
    "body", [b"", b" ", b"\r\n", b"\t\r\n  \r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \r\n"]
)
def test_blank_bodies_decode_to_empty_array(body: bytes) -> None:
    assert decode_lenient(body) == []
    assert canonical_json(decode_lenient(body)) == b"[]"


def test_bom_is_tolerated_and_dropped() -> None:
    with_bom = b'\xef\xbb\xbf[\r\n  {\r\n    "a": 1\r\n  }\r\n]'
    assert prepare_body(JSON_PATH, with_bom) == prepare_body(JSON_PATH, with_bom[3:])


def test_keys_sorted_at_every_level() -> None:
    value = {"b": {"d": 1, "c": {"f": 2, "e": 3}}, "a": [{"z": 1, "y": 2}]}
    assert canonical_json(value) == b'{"a":[{"y":2,"z":1}],"b":{"c":{"e":3,"f":2},"d":1}}'


def test_key_order_is_by_code_point() -> None:
    value = {"b": 1, "B": 2, "a": 3, "\u00e9": 4, "\u20ac": 5, "10": 6, "9": 7, "": 8}
    assert canonical_json(value) == (
        b'{"":8,"10":6,"9":7,"B":2,"a":3,"b":1,"\xc3\xa9":4,"\xe2\x82\xac":5}'
    )


def test_no_whitespace_between_tokens() -> None:
    out = canonical_json({"a": [1, 2, {"b": None}], "c": "d e"})
    assert out == b'{"a":[1,2,{"b":null}],"c":"d e"}'


def test_slash_and_non_ascii_not_escaped() -> None:
    out = canonical_json(["/events/x/Race.json", "Zo\u00eb", "\u20ac", "\U0001f681"])
    assert out == b'["/events/x/Race.json","Zo\xc3\xab","\xe2\x82\xac","\xf0\x9f\x9a\x81"]'
    assert b"\\/" not in out
    assert b"\\u" not in out


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\x00", b'"\\u0000"'),
        ("\x01", b'"\\u0001"'),
        ("\x1f", b'"\\u001f"'),
        ("\n", b'"\\n"'),
        ("\r", b'"\\r"'),
        ("\t", b'"\\t"'),
        ('"', b'"\\""'),
        ("\\", b'"\\\\"'),
    ],
)
def test_json_required_escapes(char: str, escaped: bytes) -> None:
    assert canonical_json(char) == escaped


def test_fpvtrackside_nul_channel_prefix_survives() -> None:
    # Channels.json really holds "ChannelPrefix": "\u0000".
    raw = b'[\r\n  {\r\n    "ChannelPrefix": "\\u0000",\r\n    "Number": 1\r\n  }\r\n]'
    sent, _ = prepare_body("/httpfiles/Channels.json", raw)
    assert sent == b'[{"ChannelPrefix":"\\u0000","Number":1}]'
    assert json.loads(sent) == [{"ChannelPrefix": "\x00", "Number": 1}]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"[580.8522942]", b"[580.8522942]"),
        (b"[0.1]", b"[0.1]"),
        (b"[-0.0]", b"[-0.0]"),
        (b"[1.5e300]", b"[1.5e+300]"),
        (b"[12345678901234567890]", b"[12345678901234567890]"),
        (b"[-98765432109876543210987654321]", b"[-98765432109876543210987654321]"),
        (b"[18446744073709551616]", b"[18446744073709551616]"),
        (b"[true, false, null]", b"[true,false,null]"),
    ],
)
def test_numbers_as_parsed(raw: bytes, canonical: bytes) -> None:
    sent, _ = prepare_body(JSON_PATH, raw)
    assert sent == canonical
    assert json.loads(sent) == json.loads(raw)


def test_big_int_kept_exactly() -> None:
    big = 2**100 + 1
    assert decode_lenient(str([big]).encode()) == [big]
    assert canonical_json([big]) == f"[{big}]".encode()


def test_duplicate_keys_keep_one_value() -> None:
    sent, _ = prepare_body(JSON_PATH, b'{"a": 1, "a": 2}')
    assert sent in (b'{"a":1}', b'{"a":2}')


HALF_WRITTEN_RACE = (
    b'[\r\n  {\r\n    "ID": "6e46456c-bdb1-4e4a-9c79-e69dea809e5e",\r\n'
    b'    "Laps": [\r\n      {\r\n        "LapNumber": 1,\r\n        "Length'
)
HTML_FALLBACK = (
    b"<!DOCTYPE html>\r\n<html>\r\n<head><title>FPVTrackside</title></head>\r\n"
    b'<body><script>new EventManager("events/3a96b1b6");</script></body>\r\n</html>\r\n'
)

NOT_JSON = [
    pytest.param(HALF_WRITTEN_RACE, id="half-written"),
    pytest.param(b'[{"a": 1},', id="half-written-short"),
    pytest.param(b"[", id="open-bracket"),
    pytest.param(b'{"a"', id="open-object"),
    pytest.param(HTML_FALLBACK, id="html-page"),
    pytest.param(b"[1] x", id="trailing-garbage"),
    pytest.param(b"[1][2]", id="two-values"),
    pytest.param(b"[1]\x00", id="trailing-nul"),
    pytest.param(b'["\xff"]', id="invalid-utf8-ff"),
    pytest.param(b'["\xc3"]', id="invalid-utf8-truncated"),
    pytest.param(b'["\xc3\x28"]', id="invalid-utf8-continuation"),
    pytest.param(b"\xff\xfe[\x001\x00]\x00", id="utf16"),
    pytest.param(b"[NaN]", id="nan"),
    pytest.param(b"[Infinity]", id="infinity"),
    pytest.param(b"[-Infinity]", id="minus-infinity"),
    pytest.param(b'{"a": NaN}', id="nan-in-object"),
    pytest.param(b"[1e400]", id="overflowing-float"),
    pytest.param(b"['a']", id="single-quotes"),
    pytest.param(b"[1,]", id="trailing-comma"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"undefined", id="word"),
]


@pytest.mark.parametrize("raw", NOT_JSON)
def test_bad_json_is_bad_content(raw: bytes) -> None:
    with pytest.raises(ContentError) as info:
        prepare_body(JSON_PATH, raw)
    assert info.value.code is ErrorCode.BAD_CONTENT
    assert isinstance(info.value, ProtocolError)
    assert info.value.payload()["code"] == "BAD_CONTENT"


@pytest.mark.parametrize("raw", NOT_JSON)
def test_bad_json_bodies_pass_unchanged_on_other_paths(raw: bytes) -> None:
    sent, tag = prepare_body("/httpfiles/index.html", raw)
    assert sent == raw
    assert tag == '"sha256:' + hashlib.sha256(raw).hexdigest() + '"'


@pytest.mark.parametrize(
    "value", [[float("nan")], [float("inf")], {"a": float("-inf")}, [[[float("nan")]]]]
)
def test_canonical_refuses_non_finite_numbers(value: object) -> None:
    with pytest.raises(ContentError) as info:
        canonical_json(value)
    assert info.value.code is ErrorCode.BAD_CONTENT


@pytest.mark.parametrize("raw", [b'["\\ud800"]', b'{"a": "x\\udc00y"}', b'["\\udc00\\ud800"]'])
def test_lone_surrogate_is_bad_content(raw: bytes) -> None:
    with pytest.raises(ContentError):
        prepare_body(JSON_PATH, raw)


def test_paired_surrogate_escape_is_one_character() -> None:
    sent, _ = prepare_body(JSON_PATH, b'["\\ud83d\\ude81"]')
    assert sent == b'["\xf0\x9f\x9a\x81"]'


def test_deep_nesting_is_bad_content_not_a_crash() -> None:
    with pytest.raises(ContentError):
        prepare_body(JSON_PATH, b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/events/e/Race.json", True),
        ("/httpfiles/Channels.json", True),
        ("/events/e/RACE.JSON", True),
        ("/events/e/Race.Json", True),
        ("/x.json", True),
        ("/", False),
        ("/httpfiles/index.html", False),
        ("/events/e/Race.json.bak", False),
        ("/events/e/Race.jsonx", False),
        ("/events/e/json", False),
        ("/events/e.json/", False),
    ],
)
def test_is_json_path(path: str, expected: bool) -> None:
    assert is_json_path(path) is expected


def test_uppercase_json_path_is_canonicalized() -> None:
    assert prepare_body("/E/X.JSON", b'{ "b":1, "a":2 }')[0] == b'{"a":2,"b":1}'


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" ",
        b'{ "b": 1, "a": 2 }',
        b"\xef\xbb\xbf[1]",
        HTML_FALLBACK,
        bytes(range(256)),
        b"[\r\n  1\r\n]",
    ],
)
@pytest.mark.parametrize("path", ["/", "/httpfiles/index.html", "/httpfiles/app.js", "/a.txt"])
def test_non_json_paths_hashed_raw(path: str, raw: bytes) -> None:
    sent, tag = prepare_body(path, raw)
    assert sent == raw
    assert tag == '"sha256:' + hashlib.sha256(raw).hexdigest() + '"'


def test_empty_body_on_non_json_path_is_the_etag_of_nothing() -> None:
    assert prepare_body("/", b"") == (
        b"",
        '"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"',
    )


# The same data written several ways: key order, indentation, CRLF vs LF, escapes vs raw UTF-8.
SAME_DATA = [
    b'[{"a":"\xc3\xa9/x","b":[1,2.5,{"d":null,"c":true}]}]',
    b'[\r\n  {\r\n    "b": [\r\n      1,\r\n      2.5,\r\n      {\r\n        "c": true,\r\n'
    b'        "d": null\r\n      }\r\n    ],\r\n    "a": "\\u00e9\\/x"\r\n  }\r\n]',
    b'[\n  {\n    "b": [\n      1,\n      2.5,\n      {\n        "c": true,\n'
    b'        "d": null\n      }\n    ],\n    "a": "\\u00e9\\/x"\n  }\n]\n',
    b'\xef\xbb\xbf[ { "b" : [ 1 , 2.5 , { "d" : null , "c" : true } ] , "a" : "\xc3\xa9/x" } ]',
    b'\t[{"b":[1,25e-1,{"c":true,"d":null}],"a":"\\u00E9/x"}]\r\n',
]


def test_same_data_same_etag() -> None:
    results = {prepare_body(JSON_PATH, raw) for raw in SAME_DATA}
    assert results == {
        (
            b'[{"a":"\xc3\xa9/x","b":[1,2.5,{"c":true,"d":null}]}]',
            etag_of(b'[{"a":"\xc3\xa9/x","b":[1,2.5,{"c":true,"d":null}]}]'),
        )
    }


def test_different_data_different_etag() -> None:
    tags = {
        prepare_body(JSON_PATH, raw)[1]
        for raw in [b"[]", b"{}", b"[1]", b"[1.0]", b'["1"]', b"[null]", b"[[]]", b"[{}]"]
    }
    assert len(tags) == 8


def test_fixture_style_pretty_dump_is_stable() -> None:
    value = [{"ID": "0000-1", "Laps": [{"LapNumber": 1, "LengthSeconds": 580.8522942}]}]
    crlf = json.dumps(value, indent=2).replace("\n", "\r\n").encode()
    compact = json.dumps(value, separators=(",", ":")).encode()
    assert prepare_body(JSON_PATH, crlf) == prepare_body(JSON_PATH, compact)
    assert prepare_body(JSON_PATH, crlf)[0] == (
        b'[{"ID":"0000-1","Laps":[{"LapNumber":1,"LengthSeconds":580.8522942}]}]'
    )


# RFC 9110 weak comparison for If-None-Match.
TAG = '"sha256:75f431c40c8677ecaff426d5dc0af32989b8fd7fb5721a1436f0b8a6d8bbb998"'
OTHER = '"sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TAG, True),
        (f"W/{TAG}", True),
        (f"  {TAG}  ", True),
        (f"{OTHER}, {TAG}", True),
        (f"{OTHER},{TAG}", True),
        (f"{OTHER}, W/{TAG}", True),
        (f"{TAG}, {OTHER}", True),
        ("*", True),
        (" * ", True),
        (None, False),
        ("", False),
        ("   ", False),
        (OTHER, False),
        (f"W/{OTHER}", False),
        (f"{OTHER}, W/{OTHER}", False),
        (TAG.strip('"'), False),
        (TAG.upper(), False),
        (f'"{TAG}"', False),
        (",", False),
    ],
)
def test_etag_matches(header: str | None, expected: bool) -> None:
    assert etag_matches(header, TAG) is expected


# The real event: every .json file canonicalizes and re-decodes to the same value.


def _fixture_json_files(root: Path) -> list[Path]:
    files = sorted(root.rglob("*.json"))
    assert files, f"no .json files under {root}"
    return files


def test_fixtures_canonicalize_and_redecode(fixtures_root: Path) -> None:
    for file in _fixture_json_files(fixtures_root):
        raw = file.read_bytes()
        rel = "/" + file.relative_to(fixtures_root).as_posix()
        sent, tag = prepare_body(rel, raw)
        original = json.loads(raw.decode("utf-8-sig")) if raw.strip() else []
        assert json.loads(sent) == original, rel
        assert ujson.loads(sent) == original, rel
        assert tag == '"sha256:' + hashlib.sha256(sent).hexdigest() + '"', rel
        # A fixed point: canonicalizing the canonical bytes changes nothing.
        assert prepare_body(rel, sent) == (sent, tag), rel
        # No whitespace left between tokens, and the form FPVTrackside writes is gone.
        assert b"\r\n" not in sent, rel
        assert b'": ' not in sent, rel


def test_fixtures_match_an_independent_canonical_encoder(fixtures_root: Path) -> None:
    # The stdlib writes the same canonical form for data without floats whose repr differs.
    for file in _fixture_json_files(fixtures_root):
        raw = file.read_bytes()
        value = json.loads(raw.decode("utf-8-sig")) if raw.strip() else []
        expected = json.dumps(
            value, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        assert prepare_body("/" + file.name, raw)[0] == expected, file


def test_fixtures_reindented_keep_their_etag(fixtures_root: Path) -> None:
    for file in _fixture_json_files(fixtures_root):
        raw = file.read_bytes()
        value = json.loads(raw.decode("utf-8-sig")) if raw.strip() else []
        lf = json.dumps(value, indent=4, ensure_ascii=True).encode()
        assert prepare_body("/x.json", lf) == prepare_body("/x.json", raw), file


@pytest.mark.parametrize("body", [b"", b"  ", b"<html>", b'[{"a": 1}', b"\xff"])
def test_check_json_refuses_what_is_not_one_json_value(body: bytes) -> None:
    with pytest.raises(ContentError):
        check_json(body)


def test_check_json_accepts_canonical_bodies() -> None:
    check_json(b"[]")
    check_json(b'[{"a":1}]')
