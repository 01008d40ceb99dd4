"""The order of image versions (wire/versions.py). `CASES` is the table the image's RAUC
pre-install handler is tested against too, so both orders agree."""

from __future__ import annotations

import pytest

from wire.versions import MAX_VERSION, compare, is_version, newer, parse

# (a, b, compare(a, b)); None: one of them is not a version (refused, never installed).
CASES: list[tuple[str, str, int | None]] = [
    ("0.1.0", "0.1.0", 0),
    ("0.1.0", "0.2.0", -1),
    ("0.2.0", "0.1.0", 1),
    ("0.1.1", "0.1.0", 1),
    ("1.0.0", "0.99.99", 1),
    ("0.10.0", "0.9.0", 1),  # numbers, not text
    ("0.1.10", "0.1.9", 1),
    ("10.0.0", "9.9.9", 1),
    ("0.1.0+20261129T161203", "0.1.0+20261129T161203", 0),
    ("0.1.0+20261129T161204", "0.1.0+20261129T161203", 1),  # a later build time is newer
    ("0.1.0+20261130T000000", "0.1.0+20261129T235959", 1),
    ("0.1.0+20261101T1200", "0.2.0+20261129T1612", -1),
    ("0.2.0+20200101T000000", "0.1.0+20261129T161203", 1),  # the numbers come first
    ("0.1.0", "0.1.0+20261129T161203", -1),  # no build sorts before any build
    ("0.1.0+20261129T161203", "0.1.0", 1),
    ("0.1.0+20261129T161203Z", "0.1.0+20261129T161203", 1),  # as text: longer is later
    ("0.1.0+a", "0.1.0+B", 1),  # as text, byte by byte (ASCII)
    ("0.1.0+1", "0.1.0+10", -1),
    ("0.1.0+9", "0.1.0+10", 1),  # the build is text, not a number
    ("0.1", "0.1.0", None),
    ("0.1.0.0", "0.1.0", None),
    ("v0.1.0", "0.1.0", None),
    ("0.01.0", "0.1.0", None),  # no leading zeros
    ("0.1.0+", "0.1.0", None),
    ("0.1.0+a+b", "0.1.0", None),
    ("0.1.0+a b", "0.1.0", None),
    ("0.1.0-rc1", "0.1.0", None),
    ("", "0.1.0", None),
    ("0.1.0 ", "0.1.0", None),
    ("0.1.0\n", "0.1.0", None),
    ("1234567890.0.0", "0.1.0", None),  # at most 9 digits a number
    ("0.1.0+" + "9" * (MAX_VERSION - 5), "0.1.0", None),  # one over the 64 characters
    ("0.1.0+" + "9" * (MAX_VERSION - 6), "0.1.0", 1),  # exactly 64
    ("\uff10.1.0", "0.1.0", None),  # no digits but ASCII ones (a fullwidth zero)
]


@pytest.mark.parametrize(("a", "b", "expected"), CASES)
def test_the_order(a: str, b: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="not a version"):
            compare(a, b)
        assert not (is_version(a) and is_version(b))
        return
    assert compare(a, b) == expected
    assert compare(b, a) == -expected  # the order is antisymmetric
    assert newer(a, b) == (expected > 0)


def test_the_error_names_the_text_and_is_bounded() -> None:
    with pytest.raises(ValueError, match=r"'0\.1' \(expected MAJOR\.MINOR\.PATCH"):
        parse("0.1")
    with pytest.raises(ValueError) as caught:
        parse("x" * 10_000)
    assert len(str(caught.value)) < 100


def test_a_non_string_is_not_a_version() -> None:
    with pytest.raises(ValueError):
        parse(None)  # type: ignore[arg-type]
