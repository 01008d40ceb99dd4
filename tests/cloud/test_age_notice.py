"""The age notice's tag on a pits' HTML page (cloud.age_notice): where it goes, what it names,
the changed body's ETag, and what is left alone."""

from __future__ import annotations

import re

import pytest

from cloud.age_notice import AgeNotice, pits_base
from cloud.cache import Served
from cloud.hosts import HostRouting
from wire.canonical import etag_of

TAG = b'<script src="/pits/p1/pitlink/age.js" defer></script>'
PAGE = b"<!DOCTYPE html><html><body><p>hello</p></body></html>"


def served(body: bytes, **overrides: object) -> Served:
    values: dict[str, object] = {
        "status": 200,
        "body": body,
        "etag": etag_of(body),
        "fetched_at": 0.0,
        "cache": "MISS",
        "ttl": 1.0,
    }
    values.update(overrides)
    return Served(**values)  # type: ignore[arg-type]


def test_the_tag_goes_before_the_last_body_end() -> None:
    body, etag = AgeNotice().mark(PAGE, "/pits/p1/") or (b"", "")
    assert body == b"<!DOCTYPE html><html><body><p>hello</p>" + TAG + b"</body></html>"
    assert len(body) == len(PAGE) + len(TAG)
    assert re.fullmatch(r'"sha256:[0-9a-f]{64}"', etag)
    assert etag == etag_of(body) != etag_of(PAGE)  # the changed body's own, as for every body


def test_a_page_without_a_body_end_gets_it_at_its_end() -> None:
    page = b"<p>no end tag"
    body, _ = AgeNotice().mark(page, "/pits/p1/") or (b"", "")
    assert body == page + TAG


def test_many_body_ends_in_scripts_and_comments_and_any_case() -> None:
    """The last `</BODY` as HTML reads it, in any case; what comes before stays byte for byte,
    and a script on the page that writes `</body>` or the relay's own address changes nothing."""
    page = (
        b"<html><body><script>document.write('</body>' + \"</body>\");"
        b"var fake = '<script src=\"/pits/p1/pitlink/age.js\"></script>';</script>"
        b"<!-- </body> -->" + b"</body>" * 500 + b"<p>after</p></BODY>\n</html>"
    )
    body, _ = AgeNotice().mark(page, "/pits/p1/") or (b"", "")
    at = page.rfind(b"</BODY>")
    assert body == page[:at] + TAG + page[at:]
    assert body.count(TAG) == 1


def test_the_etag_follows_the_page_and_the_base() -> None:
    notice = AgeNotice()
    other = PAGE.replace(b"hello", b"hello again")
    a = notice.mark(PAGE, "/pits/p1/")
    again = AgeNotice().mark(PAGE, "/pits/p1/")
    changed = notice.mark(other, "/pits/p1/")
    on_host = notice.mark(PAGE, "/")
    assert a is not None and again is not None and changed is not None and on_host is not None
    assert a[1] == again[1]  # the same on every replica, every time
    assert len({a[1], changed[1], on_host[1]}) == 3
    assert b'<script src="/pitlink/age.js" defer></script>' in on_host[0]


def test_a_page_past_the_bound_is_left_as_it_is() -> None:
    notice = AgeNotice(max_bytes=1000)
    assert notice.mark(b"x" * 1000, "/pits/p1/") is not None
    assert notice.mark(b"x" * 1001, "/pits/p1/") is None
    big = served(b"<body>" + b"x" * 1001)
    assert notice.served(big, "/", "/pits/p1/") is big


@pytest.mark.parametrize(
    "path",
    ["/events/e/Race.json", "/httpfiles/EventManager.js", "/httpfiles/style.css", "/a.svg", "/f"],
)
def test_only_html_is_touched(path: str) -> None:
    answer = served(PAGE)
    assert AgeNotice().served(answer, path, "/pits/p1/") is answer


@pytest.mark.parametrize("path", ["/", "/httpfiles/index.html", "/x/page.HTM"])
def test_pages_are_marked(path: str) -> None:
    answer = served(PAGE, cache="STALE")
    marked = AgeNotice().served(answer, path, "/pits/p1/")
    assert TAG in marked.body and marked.etag != answer.etag
    assert (marked.status, marked.cache, marked.fetched_at) == (200, "STALE", 0.0)


def test_an_answer_that_is_not_a_200_is_left_alone() -> None:
    answer = served(b"<body>nope</body>", status=404, etag=None)
    assert AgeNotice().served(answer, "/", "/pits/p1/") is answer


def test_the_base_is_the_pits_host_or_its_path() -> None:
    hosts = HostRouting("relay.example", None)
    assert pits_base("club-1", "club-1.relay.example:8443", hosts) == "/"
    assert pits_base("club-1", "relay.example", hosts) == "/pits/club-1/"
    assert pits_base("club-1", "club-2.relay.example", hosts) == "/pits/club-1/"
    assert pits_base("club-1", "club-1.relay.example", None) == "/pits/club-1/"


@pytest.mark.parametrize(
    "base", ["", "pits/p1/", "/pits/p1", '/pits/"><script>/', "/pits/a/b/", "//evil.example/"]
)
def test_nothing_but_the_relays_paths_is_written_into_a_page(base: str) -> None:
    assert AgeNotice().mark(PAGE, base) is None
