"""The open event's id and name, read from FPVTrackside's own files."""

from __future__ import annotations

import json
from pathlib import Path

from wire.event import MAX_NAME, event_id_from_page, event_name


def test_event_id_from_fpvtrackside_page() -> None:
    page = b'<script>var eventManager = new EventManager("events/3a96b1b6-7b6b");</script>'
    assert event_id_from_page(page) == "3a96b1b6-7b6b"
    assert event_id_from_page(b'new EventManager("%eventDirectory%")') is None
    assert event_id_from_page(b"<html>no event</html>") is None
    assert event_id_from_page(b'new EventManager("events/' + b"a" * 65 + b'")') is None


def test_event_name_of_the_real_event(fixtures_root: Path) -> None:
    event = next((fixtures_root / "events").iterdir()) / "Event.json"
    assert event_name(event.read_bytes()) == "New Event (Jan 29)"


def test_event_name_is_cleaned_and_bounded() -> None:
    assert event_name(json.dumps([{"Name": "Club\u202e night\x07\n"}]).encode()) == "Club night"
    long = event_name(json.dumps([{"Name": "x" * 500}]).encode())
    assert long is not None and len(long) == MAX_NAME
    for body in (b"", b"[]", b"<html>", b'[{"Name": 5}]', b'{"Name": "x"}', b"[1]"):
        assert event_name(body) is None
