"""What each read of a watched file comes to for the relay: a change, nothing, or no news."""

from __future__ import annotations

import pytest

from pits_appliance.changes import Changes, Read
from pits_appliance.executor import KnownBodies
from wire.canonical import prepare_body

pytestmark = pytest.mark.timeout(60)

RACE = "/events/e/r/Race.json"
RESULTS = "/events/e/Results.json"
BODY = b'[\r\n  {\r\n    "Laps": [],\r\n    "Start": "2025/01/29 19:11:09.494"\r\n  }\r\n]'
LAP = b'[{"Laps": [{"LapNumber": 1}], "Start": "2025/01/29 19:11:09.494"}]'


@pytest.fixture
def changes() -> Changes:
    c = Changes(KnownBodies())
    c.watch([RACE, RESULTS])
    return c


def push(changes: Changes, path: str, raw: bytes) -> Read:
    outcome, change = changes.read(path, 200, raw)
    if change is not None:
        changes.pushed(change)
    return outcome


def test_a_new_body_is_a_change_as_a_fetch_would_answer_it(changes: Changes) -> None:
    outcome, change = changes.read(RACE, 200, BODY)
    assert outcome is Read.CHANGED and change is not None
    body, etag = prepare_body(RACE, BODY)
    assert (change.path, change.body, change.etag) == (RACE, body, etag)
    assert change.content_type == "application/json; charset=utf-8"
    changes.pushed(change)
    assert changes.read(RACE, 200, BODY) == (Read.SAME, None)
    # Rewritten with other whitespace: the same data, the same ETag, no change.
    assert changes.read(RACE, 200, body) == (Read.SAME, None)
    assert changes.read(RACE, 200, LAP)[0] is Read.CHANGED


def test_an_unchanged_file_is_not_decoded_again(changes: Changes) -> None:
    """The executor's digest cache tells the ETag of bytes seen before."""
    push(changes, RACE, BODY)
    etag = changes.known.etag(RACE, changes.known.digest(BODY))
    assert etag == prepare_body(RACE, BODY)[1]
    # A cache that says LAP's bytes have BODY's ETag: decoded, LAP would be a change.
    changes.known.remember(RACE, changes.known.digest(LAP), etag)
    assert changes.read(RACE, 200, LAP) == (Read.SAME, None)


@pytest.mark.parametrize(
    "raw",
    [BODY[: len(BODY) // 2], b"<html>FPVTrackside</html>", b'[{"a": NaN}]'],
    ids=["half-written", "a page", "not JSON"],
)
def test_a_bad_body_is_no_news_and_the_last_good_one_stands(changes: Changes, raw: bytes) -> None:
    push(changes, RACE, BODY)
    assert changes.read(RACE, 200, raw) == (Read.BAD, None)
    assert changes.read(RACE, 200, BODY) == (Read.SAME, None)


def test_an_empty_file_counts_only_when_it_stays_empty(changes: Changes) -> None:
    """FPVTrackside truncates then writes: a read in between sees an empty file."""
    push(changes, RACE, BODY)
    assert changes.read(RACE, 200, b"") == (Read.BAD, None)
    assert push(changes, RACE, BODY) is Read.SAME
    assert changes.read(RACE, 200, b"") == (Read.BAD, None)
    outcome, change = changes.read(RACE, 200, b"  ")  # empty twice in a row: it is empty
    assert outcome is Read.CHANGED and change is not None and change.body == b"[]"


def test_only_a_200_is_news(changes: Changes) -> None:
    assert changes.read(RACE, 404, BODY) == (Read.BAD, None)
    assert changes.read(RACE, 500, b"") == (Read.BAD, None)


def test_a_still_after_a_quiet_round_at_most_once_an_interval(changes: Changes) -> None:
    push(changes, RACE, BODY)
    assert not changes.still(0.0, 1.0)  # Results.json not read yet
    push(changes, RESULTS, b"[]")
    assert not changes.still(0.1, 1.0)  # complete, but both changed in it
    push(changes, RACE, BODY)
    assert not changes.still(0.2, 1.0)
    push(changes, RESULTS, b"[]")
    assert changes.still(0.3, 1.0)  # every path read, none changed
    push(changes, RACE, BODY)
    push(changes, RESULTS, b"[]")
    assert not changes.still(0.5, 1.0)  # within the interval of the last
    push(changes, RACE, BODY)
    push(changes, RESULTS, b"[]")
    assert changes.still(1.3, 1.0)


def test_a_change_not_sent_keeps_its_round_open(changes: Changes) -> None:
    push(changes, RACE, BODY)
    push(changes, RESULTS, b"[]")
    changes.still(0.0, 1.0)
    assert changes.read(RACE, 200, LAP)[0] is Read.CHANGED  # held back (a slow uplink)
    push(changes, RESULTS, b"[]")
    assert not changes.still(5.0, 1.0)
    outcome, change = changes.read(RACE, 200, LAP)  # the next read pushes it
    assert outcome is Read.CHANGED and change is not None


def test_a_new_link_pushes_everything_again(changes: Changes) -> None:
    push(changes, RACE, BODY)
    changes.forget()
    assert changes.read(RACE, 200, BODY)[0] is Read.CHANGED


def test_a_path_no_longer_watched_is_forgotten(changes: Changes) -> None:
    push(changes, RACE, BODY)
    changes.watch([RESULTS])
    changes.watch([RACE, RESULTS])
    assert changes.read(RACE, 200, BODY)[0] is Read.CHANGED
