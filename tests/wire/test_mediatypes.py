"""The Content-Type of a path comes from a small table, never from what a peer says."""

from __future__ import annotations

import pytest

from wire.mediatypes import HTML, JSON, OCTET_STREAM, content_type_for_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", HTML),
        ("/events/", HTML),
        ("/events/e1/Race.json", JSON),
        ("/events/e1/RACE.JSON", JSON),
        ("/httpfiles/index.html", HTML),
        ("/httpfiles/Accessor.js", "text/javascript; charset=utf-8"),
        ("/httpfiles/style.css", "text/css; charset=utf-8"),
        ("/httpfiles/logo.png", "image/png"),
        ("/httpfiles/font.woff2", "font/woff2"),
        ("/httpfiles/evil.svg", "image/svg+xml"),
        ("/httpfiles/page.xhtml", OCTET_STREAM),
        ("/httpfiles/run.exe", OCTET_STREAM),
        ("/Rounds", OCTET_STREAM),
        ("/httpfiles/.json", JSON),  # as is_json_path judges it
        ("/httpfiles/x.json/", HTML),
        ("/a.b/c", OCTET_STREAM),  # a dot in a folder name is not an extension
    ],
)
def test_content_type_by_extension(path: str, expected: str) -> None:
    assert content_type_for_path(path) == expected
