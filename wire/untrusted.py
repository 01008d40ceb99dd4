"""Reading JSON nobody vouches for: a file on disk, a portal's answer, a value from Redis.

One function decides whether such bytes are JSON we will look at, `load_json`. Every way the
input can fail (over its size, not UTF-8, not JSON, nested deeper than anything we write or
read, a number too long to convert) is one exception, DamagedError, whose message says why
in plain words and never quotes the input. Nothing else escapes: a caller needs one except
clause, and none can forget RecursionError (a deep value that decodes can still break the
code that looks at it, a `str()` or a schema check, so depth is refused here, before that).

`DamageNotes` keeps a damaged input from filling the log: each is said once, and again only
when it changes (a file's stamp: inode, modification time, size).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ujson

from wire.errors import DamagedError

MAX_DEPTH = 32  # what Pitlink writes or reads is at most 6 deep; FPVTrackside's files too
_BOM = b"\xef\xbb\xbf"
_REASON = 200  # characters of a decoder's message kept in the reason


def load_json(data: bytes | str, *, limit: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `data`, or DamagedError saying why there is none.

    At most `limit` bytes (characters, for text) and `max_depth` levels of arrays and objects;
    a leading UTF-8 byte order mark is skipped (Windows editors write one).
    """
    if len(data) > limit:
        raise DamagedError(f"over {limit} bytes")
    if isinstance(data, bytes) and data.startswith(_BOM):
        data = data[len(_BOM) :]
    elif isinstance(data, str) and data.startswith("\ufeff"):
        data = data[1:]
    try:
        value = ujson.loads(data)
    except (ValueError, RecursionError, OverflowError, MemoryError) as exc:
        # ujson's messages name what it expected, not the bytes it read.
        reason = str(exc).splitlines()[0][:_REASON] if str(exc) else type(exc).__name__
        raise DamagedError(f"not JSON: {reason}") from None
    if not within_depth(value, max_depth):
        raise DamagedError(f"nested more than {max_depth} levels deep")
    return value


def within_depth(value: Any, max_depth: int) -> bool:
    """Whether a decoded value nests at most `max_depth` arrays and objects (without recursing)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > max_depth:
                    return False
                stack.append((child, depth + 1))
    return True


def read_bounded(path: Path, limit: int) -> bytes:
    """A file's bytes, refused (DamagedError) past `limit` without reading the rest.

    OSError (FileNotFoundError, a folder in its place) goes to the caller: that is the disk's
    trouble, not the content's.
    """
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DamagedError(f"over {limit} bytes")
    return data


def read_json(path: Path, *, limit: int, max_depth: int = MAX_DEPTH) -> Any:
    """`load_json` of a file read with `read_bounded`."""
    return load_json(read_bounded(path, limit), limit=limit, max_depth=max_depth)


Stamp = tuple[int, int, int]


def stamp_of(path: Path) -> Stamp | None:
    """Which version of a file this is (inode, modification time, size); None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class DamageNotes:
    """Which damaged inputs were said in the log already: each once, again once it changed.

    `first(name, version)` is True when the caller should log: `name` was not noted as damaged
    before, or was noted as another `version` (a file's stamp_of, say). `good(name)` forgets it,
    so that damage after a repair is said again. At most `max_kept` names are remembered.
    """

    def __init__(self, max_kept: int = 1024):
        self.max_kept = max_kept
        self._noted: OrderedDict[str, object] = OrderedDict()

    def first(self, name: str, version: object) -> bool:
        if name in self._noted and self._noted[name] == version:
            self._noted.move_to_end(name)
            return False
        self._noted[name] = version
        self._noted.move_to_end(name)
        while len(self._noted) > self.max_kept:
            self._noted.popitem(last=False)
        return True

    def good(self, name: str) -> None:
        self._noted.pop(name, None)
