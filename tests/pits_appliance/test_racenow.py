"""Which race runs now: from GET /current on 2.76 and later, else from the event's files, in
bounded looks; with injected time, against the real fixture event's files and hostile answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pits_appliance.racenow import (
    RUNNING_FACTOR,
    UNSET,
    RaceNow,
    current_race,
    event_races,
    race_file,
    when,
)

pytestmark = pytest.mark.timeout(60)

EVENT = "3a96b1b6-7b6b-43a8-b93e-d918f43607d2"  # the fixture's event (tests/fixtures/README.md)
LAST_ENDED = "d3ade44c-4cde-4c57-8bf9-3cb4613badf2"  # of its races, the one that ended last
NOT_STARTED = "058aa540-f664-4d12-808d-231baa1e8551"


class Files:
    """The fixture event's files as FPVTrackside would answer them, changeable by the test."""

    def __init__(self, root: Path):
        self.dir = root / "events" / EVENT
        self.bodies: dict[str, bytes] = {}
        self.asked: list[str] = []

    def body(self, path: str) -> bytes:
        self.asked.append(path)
        if path in self.bodies:
            return self.bodies[path]
        name = path.removeprefix(f"/events/{EVENT}/")
        file = self.dir / name
        return file.read_bytes() if file.is_file() else b""  # a missing file: an empty 200

    def start(self, race: str, start: str = "2025/02/01 10:00:00.5") -> None:
        """That race starts now."""
        doc = json.loads((self.dir / race / "Race.json").read_bytes())
        doc[0]["Start"] = start
        self.bodies[race_path(race)] = json.dumps(doc).encode()

    def end(self, race: str) -> None:
        doc = json.loads(self.bodies[race_path(race)])
        doc[0]["End"] = "2025/02/01 10:03:00"
        self.bodies[race_path(race)] = json.dumps(doc).encode()


def race_path(race: str) -> str:
    return f"/events/{EVENT}/{race}/Race.json"


@pytest.fixture
def files(fixtures_root: Path) -> Files:
    return Files(fixtures_root)


def look(finder: RaceNow, files: Files, now: float) -> tuple[bool, int]:
    """Run one whole look at `now`: (the race now changed, requests it took)."""
    changed, requests = False, 0
    while (path := finder.next_read(now)) is not None:
        requests += 1
        changed = finder.answer(path, 200, files.body(path), now) or changed
        if requests > 100:
            raise AssertionError("a look that does not end")
    return changed, requests


def test_dates_as_fpvtrackside_writes_them() -> None:
    assert when("2025/01/29 19:11:09.494") == (2025, 1, 29, 19, 11, 9, 4940000)
    assert when("2025/01/29 9:01:02") == (2025, 1, 29, 9, 1, 2, 0)
    assert when("2025/01/30 16:00:57.85") > when("2025/01/30 16:00:57.849")  # type: ignore[operator]
    assert when("0001/01/01 0:00:00") == UNSET  # .NET's MinValue: not set
    assert when("0001-01-01T00:00:00") == UNSET
    for junk in ("", "soon", 42, None, "9" * 100, ["2025/01/01 0:00:00"]):
        assert when(junk) is None


def test_a_race_file_says_whether_it_runs() -> None:
    running = race_file(b'[{"Start": "2025/01/29 19:11:09.494", "End": "0001/01/01 0:00:00"}]')
    assert running is not None and running.running and not running.ended
    ended = race_file(b'[{"Start": "2025/01/29 19:11:09", "End": "2025/01/29 19:21:36.557"}]')
    assert ended is not None and ended.ended and not ended.running
    waiting = race_file(b'[{"Start": "0001/01/01 0:00:00", "End": "0001/01/01 0:00:00"}]')
    assert waiting is not None and not waiting.running and not waiting.ended
    for junk in (b"", b"<html>", b'[{"Start": ', b"[1]", b"[" * 100 + b"]" * 100):
        got = race_file(junk)
        assert got is None or not (got.running or got.ended)


def test_hostile_ids_never_become_paths() -> None:
    body = json.dumps([{"Races": ["ok-1", "../../x", "a/b", "", 7, "x" * 65, "OK-2"]}])
    assert event_races(body.encode()) == ["ok-1", "OK-2"]
    assert event_races(b"") == []
    assert event_races(b"[{}]") is None
    assert current_race(b'{"CurrentRace": "../../Event.json"}') == (False, None)
    assert current_race(b'{"CurrentRace": null}') == (True, None)
    assert current_race(b'{"CurrentRace": "abc-1"}') == (True, "abc-1")
    assert current_race(b"<html>the page</html>") == (False, None)


def test_from_current_on_2_76() -> None:
    finder = RaceNow(look_interval=2.0, now=0.0)
    finder.set_current(True)
    finder.set_event(EVENT, 0.0)
    assert finder.next_read(0.0) == "/current"
    assert finder.answer("/current", 200, b'{"CurrentRace": "race-1"}', 0.0)
    assert finder.path == f"/events/{EVENT}/race-1/Race.json"
    assert finder.next_read(1.9) is None  # the next look in 2 s
    assert finder.next_read(2.0) == "/current"
    # Between races FPVTrackside has no race selected: the one before stays, for its result.
    assert not finder.answer("/current", 200, b'{"CurrentRace": null}', 2.0)
    assert finder.race == "race-1"
    assert finder.next_read(4.0) == "/current"
    assert finder.answer("/current", 200, b'{"CurrentRace": "race-2"}', 4.0)
    assert finder.race == "race-2"


def test_a_downgrade_from_current_looks_the_old_way() -> None:
    """FPVTrackside answers /current with its page (an older one started in its place)."""
    finder = RaceNow(look_interval=2.0, now=0.0)
    finder.set_current(True)
    finder.set_event(EVENT, 0.0)
    assert finder.next_read(0.0) == "/current"
    assert not finder.answer("/current", 200, b"<html>FPVTrackside</html>", 0.0)
    assert not finder.use_current
    assert finder.next_read(2.0) == f"/events/{EVENT}/Event.json"


def test_from_the_event_files_in_bounded_looks(files: Files) -> None:
    finder = RaceNow(look_interval=2.0, reads_per_look=4, now=0.0)
    finder.set_event(EVENT, 0.0)
    now = 0.0
    # 14 races, none running: four race files a look, Event.json each time.
    for _ in range(4):
        _, requests = look(finder, files, now)
        assert requests == 5 or requests == 3  # the last look: the two races left
        now += 2.0
    # Nothing runs: the race that ended last is the race now, for its result.
    assert finder.race == LAST_ENDED and not finder.running
    reads = [p for p in files.asked if p.endswith("/Race.json")]
    assert len(set(reads)) == 14  # every race read
    # Ended races are never read again; races not started are, in turn.
    files.asked.clear()
    for _ in range(3):
        look(finder, files, now)
        now += 2.0
    again = {p.split("/")[3] for p in files.asked if p.endswith("/Race.json")}
    ended = {"04724197-f478-4580-b12b-3713c3bfa4f1", "6e46456c-bdb1-4e4a-9c79-e69dea809e5e"}
    ended |= {LAST_ENDED, "d3e05282-b1c0-4620-ba75-10ffa9a1f8f2"}
    assert again and not again & ended
    assert len(again) == 10  # the ten not started, all of them within three looks


def test_a_race_that_starts_becomes_the_race_now_and_stays_after_it_ends(files: Files) -> None:
    finder = RaceNow(look_interval=2.0, reads_per_look=4, now=0.0)
    finder.set_event(EVENT, 0.0)
    now = 0.0
    for _ in range(4):
        look(finder, files, now)
        now += 2.0
    assert finder.race == LAST_ENDED
    files.start(NOT_STARTED)
    for _ in range(3):  # within three looks every waiting race is read again
        look(finder, files, now)
        now += 2.0
        if finder.race == NOT_STARTED:
            break
    assert finder.race == NOT_STARTED and finder.running
    # While it runs, looks are rarer: the watcher reads its file and says when it ends.
    at = finder.next_look()
    assert at is not None and at - (now - 2.0) == pytest.approx(2.0 * RUNNING_FACTOR)
    files.end(NOT_STARTED)
    finder.race_read(files.body(race_path(NOT_STARTED)), now)
    assert not finder.running
    assert finder.next_look() == pytest.approx(now + 2.0)  # brought forward: no race runs
    look(finder, files, now + 2.0)
    assert finder.race == NOT_STARTED  # ended, it stays until another starts


def test_of_two_races_running_the_one_started_last(files: Files) -> None:
    finder = RaceNow(look_interval=1.0, reads_per_look=20, now=0.0)
    finder.set_event(EVENT, 0.0)
    files.start(NOT_STARTED, "2025/02/01 10:00:00")
    files.start("b9e533e8-fd41-466e-8d5f-1862222b2303", "2025/02/01 10:05:00")
    assert look(finder, files, 0.0)[0]
    assert finder.race == "b9e533e8-fd41-466e-8d5f-1862222b2303"


def test_a_poke_looks_at_once_even_during_a_look(files: Files) -> None:
    finder = RaceNow(look_interval=10.0, reads_per_look=2, now=0.0)
    finder.set_event(EVENT, 0.0)
    look(finder, files, 0.0)
    assert finder.next_read(5.0) is None
    finder.poke(5.0)
    assert finder.next_read(5.0) == f"/events/{EVENT}/Event.json"
    finder.poke(5.0)  # during the look: another right after it
    files.asked.clear()
    look(finder, files, 5.0)
    assert files.asked.count(f"/events/{EVENT}/Event.json") == 2
    assert finder.next_read(5.0) is None and finder.next_look() == 15.0


def test_failures_end_the_look_and_the_next_comes_at_its_time(files: Files) -> None:
    finder = RaceNow(look_interval=2.0, now=0.0)
    finder.set_event(EVENT, 0.0)
    path = finder.next_read(0.0)
    assert path is not None
    finder.failed(path, 0.0)
    assert finder.next_read(1.0) is None and finder.next_read(2.0) == path
    assert not finder.answer(path, 200, b"<html>not json</html>", 2.0)
    assert finder.next_read(3.0) is None
    assert not finder.answer(path, 200, b"{}", 4.0)  # not what was asked: ignored
    assert finder.race is None


def test_another_event_forgets_everything(files: Files) -> None:
    finder = RaceNow(look_interval=2.0, now=0.0)
    finder.set_event(EVENT, 0.0)
    for i in range(4):
        look(finder, files, i * 2.0)
    assert finder.race is not None
    assert finder.set_event("another-event", 10.0)
    assert finder.race is None and finder.path is None
    assert finder.next_read(10.0) == "/events/another-event/Event.json"
    assert not finder.set_event("../../etc", 11.0)  # not an event id: as none open
    assert finder.event is None and finder.next_read(11.0) is None and finder.next_look() is None


def race_body(start: str, end: str) -> bytes:
    return json.dumps([{"ID": "race-1", "Start": start, "End": end}]).encode()


def test_after_the_race_now_ends_current_is_asked_quickly_for_a_while() -> None:
    """With /current a look is one small answer: after the race now ended, the next race's
    first lap should not wait for a look, so looks come at the quick interval, then slow
    down again."""
    finder = RaceNow(look_interval=2.0, quick_interval=0.2, now=0.0)
    finder.set_current(True)
    finder.set_event(EVENT, 0.0)
    assert finder.next_read(0.0) == "/current"
    assert finder.answer("/current", 200, b'{"CurrentRace": "race-1"}', 0.0)
    finder.race_read(race_body("2025/01/01 18:00:00", "0001/01/01 0:00:00"), 1.0)
    assert finder.running and finder.next_look() == 2.0  # running: the usual pace
    finder.race_read(race_body("2025/01/01 18:00:00", "2025/01/01 18:02:00"), 3.0)
    assert not finder.running
    assert finder.next_look() == pytest.approx(2.0)  # already due sooner than 3.2
    assert finder.next_read(2.0) == "/current"
    assert not finder.answer("/current", 200, b'{"CurrentRace": "race-1"}', 3.1)
    assert finder.next_look() == pytest.approx(3.3)  # quick while the next race is awaited
    assert finder.next_read(3.31) == "/current"
    assert finder.answer("/current", 200, b'{"CurrentRace": "race-2"}', 3.31)
    assert finder.race == "race-2" and finder.next_look() == pytest.approx(5.31)  # found: usual
    # Long after an end with no next race, the usual pace again.
    finder2 = RaceNow(look_interval=2.0, quick_interval=0.2, now=0.0)
    finder2.set_current(True)
    finder2.set_event(EVENT, 0.0)
    finder2.next_read(0.0)
    finder2.answer("/current", 200, b'{"CurrentRace": "race-1"}', 0.0)
    finder2.race_read(race_body("2025/01/01 18:00:00", "0001/01/01 0:00:00"), 1.0)
    finder2.race_read(race_body("2025/01/01 18:00:00", "2025/01/01 18:02:00"), 1.5)
    finder2.next_read(500.0)
    finder2.answer("/current", 200, b'{"CurrentRace": "race-1"}', 500.0)
    assert finder2.next_look() == pytest.approx(502.0)


def test_without_current_the_quick_interval_changes_nothing() -> None:
    finder = RaceNow(look_interval=2.0, quick_interval=0.2, now=0.0)
    finder.set_event(EVENT, 0.0)
    assert finder.next_read(0.0) == f"/events/{EVENT}/Event.json"
    finder.failed(f"/events/{EVENT}/Event.json", 0.0)
    assert finder.next_look() == 2.0
