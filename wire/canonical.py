"""Canonical JSON, ETags and the lenient decoding of FPVTrackside's files.

The canonical form is part of the protocol: changing it changes every ETag, so it has tests
with fixed expected hashes. Canonical means keys sorted, no whitespace between tokens, UTF-8,
strings escaped only where JSON requires it, numbers as parsed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ujson

from wire.errors import ContentError

_BOM = b"\xef\xbb\xbf"


def is_json_path(path: str) -> bool:
    """Whether the body of this path must be JSON (FPVTrackside's data files all end `.json`)."""
    return path.lower().endswith(".json")


def decode_lenient(body: bytes) -> Any:
    """Decode an FPVTrackside JSON body.

    An empty or all-whitespace body is `[]`: every FPVTrackside JSON file is an array, and the
    server answers a missing file with an empty 200. Anything that does not decode (an HTML
    fallback page, a half-written file) raises ContentError, never a value.
    """
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if not body.strip():
        return []
    try:
        return ujson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContentError(f"body is not JSON: {exc}") from None


def check_json(body: bytes) -> None:
    """Raise ContentError unless the body is one JSON value (strictly: empty is not JSON).

    The relay judges a `.json` body from the body itself, never from a label the pits put on it.
    """
    try:
        ujson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContentError(f"body is not JSON: {exc}") from None


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a decoded JSON value; NaN and infinities are not JSON."""
    try:
        text = ujson.dumps(
            value,
            sort_keys=True,
            ensure_ascii=False,
            escape_forward_slashes=False,
            allow_nan=False,
        )
    except OverflowError as exc:
        raise ContentError(f"body holds a number JSON cannot carry: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ContentError("body holds a lone surrogate escape, which is not Unicode") from None


def etag_of(data: bytes) -> str:
    """The strong ETag of the bytes sent: `"sha256:<hex>"` (quotes included)."""
    return '"sha256:' + hashlib.sha256(data).hexdigest() + '"'


def prepare_body(path: str, body: bytes) -> tuple[bytes, str]:
    """What the pits sends for a body fetched from `path`: (bytes to send, their ETag).

    `.json` paths are decoded leniently and re-encoded canonically, so that rewriting a file
    with the same data (or different indentation) keeps its ETag; other paths are sent as is.
    """
    if is_json_path(path):
        body = canonical_json(decode_lenient(body))
    return body, etag_of(body)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match header value against one ETag."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False
