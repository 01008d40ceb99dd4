"""Path normalization and allowlist matching.

FPVTrackside does not stop `..` from leaving its web root, so whatever sits in front of it
must. Both sides normalize with the same function before they look at a cache, an allowlist
or the origin: percent-decode once, refuse what could name something else than it seems,
collapse repeated slashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote_to_bytes

from wire.errors import ErrorCode, PathError

DEFAULT_ALLOWLIST = ("/", "/events/**", "/httpfiles/**")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_SLASHES = re.compile(r"/{2,}")


def _refuse(path: str, why: str) -> PathError:
    return PathError(ErrorCode.BAD_REQUEST, f"path refused: {why}", {"path": path[:200]})


def normalize_path(raw: str) -> str:
    """Return the decoded, normalized form of a request path, or raise PathError.

    The query string, if any, is dropped: FPVTrackside serves files and ignores it, and
    cache-busting parameters must not defeat the cache. Refused: invalid UTF-8, any segment
    made only of dots, backslashes, NUL and other control characters, and any `%` left after
    one round of decoding (double encoding).
    """
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise _refuse(raw, "must start with /")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise _refuse(raw, "not valid UTF-8") from None
    if "%" in decoded:
        raise _refuse(raw, "encoded twice")
    if "\\" in decoded:
        raise _refuse(raw, "backslash")
    if _CONTROL.search(decoded):
        raise _refuse(raw, "control character")
    decoded = _SLASHES.sub("/", decoded)
    for segment in decoded.split("/"):
        # Windows drops trailing dots and spaces from a name, so ".. " is ".." to FPVTrackside.
        if segment and segment.strip(". ") == "":
            raise _refuse(raw, "dot segment")
    return decoded


def encode_path(path: str) -> str:
    """Percent-encode a normalized path for an HTTP request line, keeping `/` as is."""
    return quote(path, safe="/!$&'()*+,;=:@-._~")


def _match_segments(pattern: list[str], segments: list[str]) -> bool:
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_segments(rest, segments[i:]) for i in range(len(segments) + 1))
    if not segments:
        return False
    if head == "*" or head == segments[0]:
        return _match_segments(rest, segments[1:])
    return False


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


class Allowlist:
    """Glob patterns over normalized paths: `*` is one segment, `**` any number of them.

    `/` matches the root alone; `/events/**` matches `/events/` and everything below it.
    """

    def __init__(self, patterns: Iterable[str] = DEFAULT_ALLOWLIST):
        self.patterns: tuple[str, ...] = tuple(patterns)
        for pattern in self.patterns:
            if not pattern.startswith("/"):
                raise ValueError(f"allowlist pattern must start with /: {pattern!r}")
        self._compiled = [(p, _segments(p)) for p in self.patterns]

    def allows(self, path: str) -> bool:
        """Whether a normalized path is allowed."""
        segments = _segments(path)
        return any(_match_segments(pattern, segments) for _, pattern in self._compiled)

    def check(self, path: str) -> None:
        """Raise DENIED unless the normalized path is allowed."""
        if not self.allows(path):
            raise PathError(ErrorCode.DENIED, "path not allowed", {"path": path[:200]})

    def __repr__(self) -> str:
        return f"Allowlist({list(self.patterns)!r})"


ALLOWED_METHODS = frozenset({"GET", "HEAD"})


def check_method(method: str) -> str:
    """Only GET and HEAD ever reach FPVTrackside."""
    upper = method.upper()
    if upper not in ALLOWED_METHODS:
        raise PathError(ErrorCode.DENIED, f"method {method[:16]} not allowed")
    return upper
