"""wire.untrusted: one function decides whether JSON from outside is usable; nothing else escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.errors import DamagedError, WireError
from wire.untrusted import (
    MAX_DEPTH,
    DamageNotes,
    load_json,
    read_bounded,
    read_json,
    stamp_of,
    within_depth,
)


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"a": [1, 2.5, "x", null, true]}', {"a": [1, 2.5, "x", None, True]}),
        ('{"a": "\u00e9"}', {"a": "\u00e9"}),
        (b'\xef\xbb\xbf{"bom": 1}', {"bom": 1}),
        ("\ufeff[]", []),
        (nested(MAX_DEPTH), json.loads(nested(MAX_DEPTH))),
        (b"7", 7),
    ],
)
def test_usable_json_decodes(data: bytes | str, value: object) -> None:
    assert load_json(data, limit=1000) == value


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[" * 100_000, "nested more than|not JSON"),  # the attack on offers.json
        (nested(4096), "not JSON"),  # deeper than the decoder goes: its own refusal
        (nested(MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),
        (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nested more than"),
        (b"[" + nested(MAX_DEPTH) + b"]", "nested more than"),
        (b"\xff\xfe[]", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2", "not JSON"),
        (b"[] trailing", "not JSON"),
        (b"1" * 5000, "not JSON"),  # Python refuses to convert so long an integer
        (b"<html>secret-looking page</html>", "not JSON"),
    ],
)
def test_damaged_json_is_one_exception(data: bytes, reason: str) -> None:
    with pytest.raises(DamagedError, match=reason) as caught:
        load_json(data, limit=len(data) + 1)
    assert isinstance(caught.value, WireError)
    assert "secret" not in str(caught.value)  # the reason never quotes the input


def test_limit_is_crossed_by_one_byte() -> None:
    data = b'["' + b"x" * 96 + b'"]'
    assert len(data) == 100
    assert load_json(data, limit=100) == ["x" * 96]
    with pytest.raises(DamagedError, match="over 99 bytes"):
        load_json(data, limit=99)


def test_depth_bound_is_exact() -> None:
    value = load_json(nested(5), limit=100, max_depth=5)
    assert within_depth(value, 5) and not within_depth(value, 4)
    with pytest.raises(DamagedError, match="more than 4 levels"):
        load_json(nested(5), limit=100, max_depth=4)
    assert within_depth("scalar", 0)
    assert within_depth({"a": [1, {"b": 2}]}, 3) and not within_depth({"a": [1, {"b": 2}]}, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_nothing_but_damaged_escapes(data: bytes) -> None:
    try:
        value = load_json(data, limit=200)
    except DamagedError:
        return
    assert within_depth(value, MAX_DEPTH)


def test_read_bounded_refuses_a_large_file_and_passes_disk_errors(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"[" + b" " * 98 + b"]")
    assert read_json(path, limit=100) == []
    with pytest.raises(DamagedError, match="over 99 bytes"):
        read_bounded(path, 99)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", limit=100)
    with pytest.raises(IsADirectoryError):
        read_json(tmp_path, limit=100)


def test_stamp_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert stamp_of(path) is None
    path.write_bytes(b"1")
    first = stamp_of(path)
    path.write_bytes(b"22")
    assert stamp_of(path) != first
    os.replace(path, tmp_path / "g")
    assert stamp_of(path) is None


def test_damage_is_noted_once_per_version() -> None:
    notes = DamageNotes(max_kept=2)
    assert notes.first("offers.json", (1, 1, 1))
    assert not notes.first("offers.json", (1, 1, 1))
    assert notes.first("offers.json", (1, 2, 1))  # the file changed: said again
    notes.good("offers.json")
    assert notes.first("offers.json", (1, 2, 1))  # repaired, then damaged again: said again
    assert notes.first("a", 1) and notes.first("b", 1)  # offers.json is the oldest: forgotten
    assert notes.first("offers.json", (1, 2, 1))
    assert not notes.first("b", 1)
