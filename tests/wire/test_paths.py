"""Path normalization and allowlist matching: the LAN's last line of defence.

FPVTrackside URL-decodes each segment and joins them with `\\` on Windows without stopping `..`,
so every spelling of a parent reference must be refused before it could reach the origin.
"""

from __future__ import annotations

import pytest

from wire.errors import ErrorCode, PathError, ProtocolError
from wire.paths import (
    ALLOWED_METHODS,
    DEFAULT_ALLOWLIST,
    Allowlist,
    check_method,
    encode_path,
    normalize_path,
)


def refused(raw: str) -> PathError:
    with pytest.raises(PathError) as info:
        normalize_path(raw)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value


# Accepted paths and their normalized form.


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/", "/"),
        ("/events/3a96b1b6/Race.json", "/events/3a96b1b6/Race.json"),
        ("/events/", "/events/"),
        ("/httpfiles/Channels.json", "/httpfiles/Channels.json"),
        # Repeated slashes collapse, wherever they are.
        ("//", "/"),
        ("///", "/"),
        ("//events//e///Race.json", "/events/e/Race.json"),
        ("/events///", "/events/"),
        ("/events/%2F%2Fe", "/events/e"),
        ("/events%2fe", "/events/e"),
        # The query string and fragment are dropped.
        ("/events/e/Race.json?cache=123", "/events/e/Race.json"),
        ("/events/e/Race.json?a=../../etc&b=%00", "/events/e/Race.json"),
        ("/events/e/Race.json?", "/events/e/Race.json"),
        ("/?x=1", "/"),
        ("/events/e/Race.json#top", "/events/e/Race.json"),
        ("/events/e/Race.json?x#y", "/events/e/Race.json"),
        # Percent-decoding happens exactly once; non-ASCII is kept as text.
        ("/events/%E2%82%AC", "/events/\u20ac"),
        ("/events/%e2%82%ac", "/events/\u20ac"),
        ("/events/\u20ac", "/events/\u20ac"),
        ("/events/Zo%C3%AB.json", "/events/Zo\u00eb.json"),
        ("/events/%F0%9F%9A%81", "/events/\U0001f681"),
        ("/events/a%20b", "/events/a b"),
        ("/events/a b", "/events/a b"),
        ("/events/a+b", "/events/a+b"),
        # Encoded ? and # are part of a name, not a query or a fragment.
        ("/events/%3F", "/events/?"),
        ("/events/%23x", "/events/#x"),
        # Segments with dots that are not only dots are ordinary names.
        ("/events/..a", "/events/..a"),
        ("/events/a..", "/events/a.."),
        ("/events/a..b/c", "/events/a..b/c"),
        ("/events/.hidden", "/events/.hidden"),
        ("/events/Race.json.", "/events/Race.json."),
        ("/events/%2e%2ea", "/events/..a"),
        ("/events/-._~!$&'()*+,;=:@", "/events/-._~!$&'()*+,;=:@"),
    ],
)
def test_normalized(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


# Every spelling of `..` (and of `.`).

DOT_SEGMENTS = [
    "/..",
    "/../",
    "/../events/x",
    "/events/..",
    "/events/../",
    "/events/../x",
    "/events/../../Windows/win.ini",
    "/events/e/../../x",
    "/events/%2e%2e/x",
    "/events/%2E%2E/x",
    "/events/.%2e/x",
    "/events/%2e./x",
    "/events/.%2E/x",
    "/events/%2e%2e",
    "/events/..%2fx",
    "/events/..%2Fx",
    "/events/x%2f..",
    "/events/x%2F..%2Fy",
    "/events/%2f..%2f",
    "/events//..//x",
    "/events/...",
    "/events/..../x",
    "/events/%2e%2e%2e",
    "/.",
    "/./",
    "/events/./x",
    "/events/.",
    "/events/%2e/x",
    "/events/%2E",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/events/..?x=1",
    "/events/..#frag",
]


@pytest.mark.parametrize("raw", DOT_SEGMENTS)
def test_dot_segments_refused(raw: str) -> None:
    exc = refused(raw)
    assert exc.details == {"path": raw}
    assert "path refused" in exc.message


@pytest.mark.parametrize(
    "raw",
    [
        "/events/%252e%252e/x",
        "/events/%252E%252E/x",
        "/events/%252f",
        "/events/%25",
        "/events/%2500",
        "/events/%255c",
        "/events/%%32%65%%32%65/x",
        "/events/%u002e%u002e/x",
        "/events/%",
        "/events/%2",
        "/events/%zz",
        "/events/100%",
        "/events/a%g0",
    ],
)
def test_percent_left_after_one_decoding_refused(raw: str) -> None:
    assert "encoded twice" in refused(raw).message


@pytest.mark.parametrize(
    "raw",
    [
        "/events\\..\\x",
        "/events/a\\b",
        "/events/%5c",
        "/events/%5C",
        "/events/..%5cx",
        "/events/..%5C..%5Cwindows",
        "/events/%5c%2e%2e",
        "\\",
        "/\\events",
    ],
)
def test_backslash_refused(raw: str) -> None:
    exc = refused(raw)
    if raw.startswith("/"):
        # Refused for the backslash, whatever else is wrong with it.
        assert exc.message in {"path refused: backslash", "path refused: dot segment"}


@pytest.mark.parametrize(
    "raw",
    [
        "/events/%00",
        "/events/a%00.json",
        "/events/Race.json%00.html",
        "/events/\x00",
        "/events/%01",
        "/events/%07",
        "/events/%08",
        "/events/%09",
        "/events/%0a",
        "/events/%0A",
        "/events/%0d%0aSet-Cookie:x",
        "/events/%1b[31m",
        "/events/%1f",
        "/events/%7f",
        "/events/%7F",
        "/events/a\tb",
        "/events/a\nb",
        "/events/a\rb",
        "/events/\x7f",
    ],
)
def test_control_characters_refused(raw: str) -> None:
    assert refused(raw).message == "path refused: control character"


@pytest.mark.parametrize("raw", ["/events/%C2%85", "/events/%C2%9B2J", "/events/\x85"])
def test_c1_control_characters_refused(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/events/%ff",
        "/events/%FF",
        "/events/%c3",
        "/events/%C3",
        "/events/%c3%28",
        "/events/%e2%82",
        "/events/%80",
        "/events/%fe%ff",
        # Overlong encodings of `.` and `/`: the classic bypass of naive decoders.
        "/events/%c0%ae%c0%ae/x",
        "/events/%e0%80%ae",
        "/events/%c0%af",
        "/events/%c1%9c",
        # A UTF-8 encoded surrogate is not valid UTF-8.
        "/events/%ed%a0%80",
        "/events/%f4%90%80%80",
    ],
)
def test_invalid_utf8_refused(raw: str) -> None:
    assert refused(raw).message == "path refused: not valid UTF-8"


@pytest.mark.parametrize("raw", ["/events/\ud800", "/events/x\udcff.json"])
def test_lone_surrogate_refused(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "events/e/Race.json",
        "Race.json",
        ".",
        "..",
        "../x",
        "%2fevents",
        "%2F",
        "?/events",
        "#/events",
        "http://evil/events",
        "*",
        " /events",
    ],
)
def test_must_start_with_slash(raw: str) -> None:
    assert refused(raw).message == "path refused: must start with /"


def test_refusal_details_truncate_long_paths() -> None:
    raw = "/events/" + "a" * 500 + "/../x"
    exc = refused(raw)
    assert exc.details == {"path": raw[:200]}
    assert isinstance(exc, ProtocolError)
    assert exc.payload()["code"] == "BAD_REQUEST"


def test_normalized_path_is_a_fixed_point() -> None:
    for raw in ["/", "/events/e/Race.json", "//events//a%20b/%E2%82%AC?q"]:
        once = normalize_path(raw)
        assert normalize_path(encode_path(once)) == once


# encode_path: what the pits puts on FPVTrackside's request line.


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        ("/", "/"),
        ("/events/e/Race.json", "/events/e/Race.json"),
        ("/events/a b/\u20ac.json", "/events/a%20b/%E2%82%AC.json"),
        ("/events/a#b?c", "/events/a%23b%3Fc"),
        ("/events/50%", "/events/50%25"),
        ("/events/\U0001f681", "/events/%F0%9F%9A%81"),
        ('/events/"<>`{}|^', "/events/%22%3C%3E%60%7B%7D%7C%5E"),
        ("/events/-._~!$&'()*+,;=:@", "/events/-._~!$&'()*+,;=:@"),
    ],
)
def test_encode_path(path: str, encoded: str) -> None:
    assert encode_path(path) == encoded


@pytest.mark.parametrize(
    "path",
    [
        "/events/a b/Race.json",
        "/events/\u20ac/x",
        "/events/a#b",
        "/events/a?b",
        "/events/?",
        "/events/#",
        "/events/\U0001f681 \u00e9/",
        "/events/a;b=c&d+e",
        "/events/'quoted'",
        '/events/"dq"',
        "/events/[x]{y}",
        "/events/..a/b..",
        "/",
    ],
)
def test_encode_path_round_trips(path: str) -> None:
    encoded = encode_path(path)
    assert encoded.isascii()
    assert not any(c in encoded for c in ' #?"<>\\')
    assert normalize_path(encoded) == path


def test_percent_in_a_name_cannot_round_trip() -> None:
    # docs/protocol.md refuses any `%` left after one decoding, so a name holding `%` is unreachable:
    # encoding it gives `%25`, which decodes back to a `%` and is refused as double encoding.
    assert encode_path("/events/50%.json") == "/events/50%25.json"
    assert "encoded twice" in refused(encode_path("/events/50%.json")).message


# Allowlist.


def test_default_allowlist() -> None:
    assert DEFAULT_ALLOWLIST == ("/", "/events/**", "/httpfiles/**")
    assert Allowlist().patterns == DEFAULT_ALLOWLIST


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/events",
        "/events/",
        "/events/3a96b1b6",
        "/events/3a96b1b6/Event.json",
        "/events/3a96b1b6/6e46456c/Race.json",
        "/events/a/b/c/d/e/f.json",
        "/httpfiles",
        "/httpfiles/",
        "/httpfiles/Channels.json",
        "/httpfiles/css/site.css",
    ],
)
def test_default_allows(path: str) -> None:
    allowlist = Allowlist()
    assert allowlist.allows(path)
    allowlist.check(path)  # does not raise


@pytest.mark.parametrize(
    "path",
    [
        "/index.html",
        "/favicon.ico",
        "/eventsX",
        "/eventsX/",
        "/eventsX/a",
        "/eventsX/..",
        "/events-old/a",
        "/event",
        "/Events/a",
        "/EVENTS/a",
        "/httpfilesX/a",
        "/httpfile/a",
        "/x/events/a",
        "/x/httpfiles/a",
        "/admin",
        "/etc/passwd",
        "/C:/Windows/win.ini",
    ],
)
def test_default_denies(path: str) -> None:
    allowlist = Allowlist()
    assert not allowlist.allows(path)
    with pytest.raises(PathError) as info:
        allowlist.check(path)
    assert info.value.code is ErrorCode.DENIED
    assert info.value.details == {"path": path}


def test_check_details_truncated() -> None:
    path = "/nope/" + "a" * 400
    with pytest.raises(PathError) as info:
        Allowlist().check(path)
    assert info.value.details == {"path": path[:200]}


def test_root_pattern_matches_root_only() -> None:
    root = Allowlist(["/"])
    assert root.allows("/")
    assert not root.allows("/x")
    assert not root.allows("/events/")
    assert not root.allows("/index.html")


def test_single_star_is_exactly_one_segment() -> None:
    allowlist = Allowlist(["/events/*/Event.json"])
    assert allowlist.allows("/events/abc/Event.json")
    assert allowlist.allows("/events/*/Event.json")
    assert not allowlist.allows("/events/Event.json")
    assert not allowlist.allows("/events/a/b/Event.json")
    assert not allowlist.allows("/events/abc/Pilots.json")
    assert not allowlist.allows("/events/abc/Event.json/x")


def test_trailing_single_star() -> None:
    allowlist = Allowlist(["/httpfiles/*"])
    assert allowlist.allows("/httpfiles/Channels.json")
    assert not allowlist.allows("/httpfiles")
    assert not allowlist.allows("/httpfiles/")
    assert not allowlist.allows("/httpfiles/css/site.css")


def test_double_star_any_depth_including_zero() -> None:
    allowlist = Allowlist(["/a/**/z"])
    assert allowlist.allows("/a/z")
    assert allowlist.allows("/a/b/z")
    assert allowlist.allows("/a/b/c/d/z")
    assert allowlist.allows("/a/z/z")
    assert not allowlist.allows("/a")
    assert not allowlist.allows("/a/b")
    assert not allowlist.allows("/a/z/b")
    assert not allowlist.allows("/b/z")


def test_double_star_alone_matches_everything() -> None:
    everything = Allowlist(["/**"])
    for path in ["/", "/a", "/a/b/c"]:
        assert everything.allows(path)


def test_star_is_not_a_substring_glob() -> None:
    allowlist = Allowlist(["/events/Race*.json"])
    assert allowlist.allows("/events/Race*.json")
    assert not allowlist.allows("/events/Race1.json")


def test_exact_pattern() -> None:
    allowlist = Allowlist(["/httpfiles/Channels.json"])
    assert allowlist.allows("/httpfiles/Channels.json")
    assert not allowlist.allows("/httpfiles/channels.json")
    assert not allowlist.allows("/httpfiles/Channels.json/x")
    assert not allowlist.allows("/httpfiles")


def test_empty_allowlist_denies_everything() -> None:
    nothing = Allowlist([])
    for path in ["/", "/events/", "/events/x"]:
        assert not nothing.allows(path)


@pytest.mark.parametrize("patterns", [["events/**"], ["/", "httpfiles/**"], [""], ["*"]])
def test_pattern_must_start_with_slash(patterns: list[str]) -> None:
    with pytest.raises(ValueError, match="must start with /"):
        Allowlist(patterns)


def test_allowlist_takes_any_iterable() -> None:
    allowlist = Allowlist(p for p in ["/events/**"])
    assert allowlist.patterns == ("/events/**",)
    assert allowlist.allows("/events/x")
    assert repr(allowlist) == "Allowlist(['/events/**'])"


@pytest.mark.parametrize("raw", DOT_SEGMENTS)
def test_traversal_never_reaches_the_allowlist(raw: str) -> None:
    # Normalization comes first and refuses; there is no normalized form to match.
    with pytest.raises(PathError) as info:
        Allowlist().check(normalize_path(raw))
    assert info.value.code is ErrorCode.BAD_REQUEST


# Methods.


@pytest.mark.parametrize(
    ("method", "upper"),
    [("GET", "GET"), ("get", "GET"), ("Get", "GET"), ("HEAD", "HEAD"), ("head", "HEAD")],
)
def test_get_and_head_allowed(method: str, upper: str) -> None:
    assert check_method(method) == upper


@pytest.mark.parametrize(
    "method",
    [
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "OPTIONS",
        "TRACE",
        "CONNECT",
        "post",
        "",
        " GET",
        "GET ",
        "G ET",
        "GET\x00",
        "GETS",
        "HEADER",
    ],
)
def test_other_methods_denied(method: str) -> None:
    with pytest.raises(PathError) as info:
        check_method(method)
    assert info.value.code is ErrorCode.DENIED


def test_denied_method_message_is_bounded() -> None:
    with pytest.raises(PathError) as info:
        check_method("X" * 1000)
    assert info.value.message == f"method {'X' * 16} not allowed"


def test_allowed_methods() -> None:
    assert frozenset({"GET", "HEAD"}) == ALLOWED_METHODS


@pytest.mark.parametrize(
    "raw", ["/events/..%20/x", "/events/.%20./x", "/events/%20../x", "/events/. /x"]
)
def test_dot_segments_padded_with_spaces_are_refused(raw: str) -> None:
    """Windows drops trailing dots and spaces from names: ".. " would climb out of the root."""
    with pytest.raises(PathError) as caught:
        normalize_path(raw)
    assert caught.value.code is ErrorCode.BAD_REQUEST
