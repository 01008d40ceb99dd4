"""The order of the box's image versions, so updates only go forward.

A version is `<major>.<minor>.<patch>`, optionally followed by `+<build>`, where the build is
the image build's time (`20261129T161203`, as scripts/build-image writes it; a trailing `Z`
or other letters, digits, `.`, `_`, `~`, `-` are allowed). The numbers are compared first, as
numbers; then the build, as text (a later build time is newer); no build sorts before any
build of the same numbers. Anything else is not a version: `parse` raises ValueError, and an
update whose version cannot be ordered is refused, never installed.

The RAUC pre-install handler on the image (image/) implements the same order in shell and is
tested against the same table of cases (tests/wire/test_versions.py, `CASES`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_VERSION = 64  # characters, as image/make-bundle allows
_VERSION = re.compile(
    r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(?:\+([0-9A-Za-z._~-]+))?"
)


class Version(NamedTuple):
    """A parsed version; tuples of these sort in version order."""

    numbers: tuple[int, int, int]
    has_build: bool
    build: str


def parse(text: str) -> Version:
    """The version `text` names; ValueError (with the text, bounded) for anything else."""
    if not isinstance(text, str) or len(text) > MAX_VERSION:
        raise ValueError(f"not a version: {str(text)[:MAX_VERSION]!r}")
    match = _VERSION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a version: {text!r} (expected MAJOR.MINOR.PATCH, optionally +BUILD)")
    major, minor, patch, build = match.groups()
    return Version((int(major), int(minor), int(patch)), build is not None, build or "")


def compare(a: str, b: str) -> int:
    """-1 when `a` is older than `b`, 0 when the same, 1 when newer; ValueError if either is
    not a version."""
    pa, pb = parse(a), parse(b)
    return (pa > pb) - (pa < pb)


def newer(a: str, b: str) -> bool:
    """Whether `a` is newer than `b` (ValueError if either is not a version)."""
    return compare(a, b) > 0


def is_version(text: str) -> bool:
    """Whether `text` is a version this order knows."""
    try:
        parse(text)
    except ValueError:
        return False
    return True
