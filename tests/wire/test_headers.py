"""Which headers may cross the relay: no hop-by-hop header, and only ETag and Content-Type."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wire.headers import HOP_BY_HOP, RELAYED, filter_headers, hop_by_hop, relayed_headers

FIXED_HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
]


def test_fixed_hop_by_hop_set() -> None:
    assert {name.lower() for name in FIXED_HOP_BY_HOP} == HOP_BY_HOP
    assert all(name == name.lower() for name in HOP_BY_HOP)


@pytest.mark.parametrize("name", FIXED_HOP_BY_HOP)
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper])
def test_hop_by_hop_dropped_in_any_case(name: str, spelling: Callable[[str], str]) -> None:
    spelled = spelling(name)
    headers = [("ETag", '"sha256:00"'), (spelled, "x"), ("Content-Type", "text/json")]
    assert filter_headers(headers) == [("ETag", '"sha256:00"'), ("Content-Type", "text/json")]


def test_connection_listed_names_dropped() -> None:
    headers = [
        ("Connection", "keep-alive, X-Secret , x-other"),
        ("X-Secret", "s"),
        ("X-Other", "o"),
        ("X-Kept", "k"),
        ("Keep-Alive", "timeout=5"),
        ("Access-Control-Allow-Origin", "*"),
    ]
    assert filter_headers(headers) == [("X-Kept", "k"), ("Access-Control-Allow-Origin", "*")]


def test_connection_header_name_and_tokens_case_insensitive() -> None:
    headers = [("cOnNeCtIoN", "X-FOO"), ("x-foo", "1"), ("X-Foo", "2"), ("X-Bar", "3")]
    assert filter_headers(headers) == [("X-Bar", "3")]


def test_several_connection_headers_all_count() -> None:
    headers = [
        ("Connection", "X-A"),
        ("Connection", "X-B"),
        ("X-A", "a"),
        ("X-B", "b"),
        ("X-C", "c"),
    ]
    assert filter_headers(headers) == [("X-C", "c")]


def test_connection_listed_header_before_connection_still_dropped() -> None:
    headers = [("X-A", "a"), ("Date", "d"), ("Connection", "x-a")]
    assert filter_headers(headers) == [("Date", "d")]


@pytest.mark.parametrize("value", ["", " ", ",", " , ,", "close"])
def test_connection_without_extra_names(value: str) -> None:
    headers = [("Connection", value), ("ETag", "e"), ("Date", "d")]
    assert filter_headers(headers) == [("ETag", "e"), ("Date", "d")]
    assert hop_by_hop(headers) - HOP_BY_HOP <= {"close"}
    assert "" not in hop_by_hop(headers)


def test_hop_by_hop_names() -> None:
    names = hop_by_hop([("Connection", "Close, X-Trace-Id"), ("X-Trace-Id", "t")])
    assert names == HOP_BY_HOP | {"close", "x-trace-id"}


def test_end_to_end_headers_kept_in_order_with_values() -> None:
    headers = [
        ("Content-Type", "text/json"),
        ("ETag", '"a"'),
        ("Access-Control-Allow-Origin", "*"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Date", "Tue, 01 Jan 2025 00:00:00 GMT"),
    ]
    assert filter_headers(headers) == headers
    assert filter_headers(iter(headers)) == headers


def test_filter_headers_on_empty() -> None:
    assert filter_headers([]) == []


def test_relayed_is_etag_and_content_type() -> None:
    assert RELAYED == ("ETag", "Content-Type")


def test_relayed_headers_keep_only_etag_and_content_type() -> None:
    headers = {
        "ETag": '"sha256:00"',
        "Content-Type": "text/json",
        "Access-Control-Allow-Origin": "*",
        "Authorization": "Bearer secret",
        "Set-Cookie": "a=1",
        "Connection": "keep-alive",
        "Server": "Microsoft-HTTPAPI/2.0",
    }
    assert relayed_headers(headers) == {"ETag": '"sha256:00"', "Content-Type": "text/json"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"etag": "e", "content-type": "t"}, {"ETag": "e", "Content-Type": "t"}),
        ({"ETAG": "e", "CONTENT-TYPE": "t"}, {"ETag": "e", "Content-Type": "t"}),
        ({"Etag": "e", "Content-type": "t"}, {"ETag": "e", "Content-Type": "t"}),
        ({"eTaG": "e"}, {"ETag": "e"}),
        ({"content-type": "text/html"}, {"Content-Type": "text/html"}),
        # FPVTrackside sends no Content-Type on event files and no ETag at all.
        ({"Access-Control-Allow-Origin": "*"}, {}),
        ({}, {}),
        ({"ETag": ""}, {"ETag": ""}),
    ],
)
def test_relayed_headers_canonical_names(headers: dict[str, str], expected: dict[str, str]) -> None:
    result = relayed_headers(headers)
    assert result == expected
    assert list(result) == [name for name in RELAYED if name in expected]


def test_relayed_headers_key_order_is_fixed() -> None:
    result = relayed_headers({"content-type": "t", "etag": "e"})
    assert list(result) == ["ETag", "Content-Type"]


def test_relayed_headers_do_not_touch_input() -> None:
    headers = {"etag": "e", "X-Other": "o"}
    relayed_headers(headers)
    assert headers == {"etag": "e", "X-Other": "o"}
