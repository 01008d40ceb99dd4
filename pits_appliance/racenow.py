"""Which race runs now at FPVTrackside: the race whose file the box re-reads most often.

FPVTrackside 2.76 and later answer `GET /current` with `{"CurrentRace": <race id or null>}`, the
race the operator has selected. Before 2.76 the box works it out from the open event's files:
`Event.json` lists the event's races by id (`Races`), and each race's `Race.json` has `Start`
and `End` (`0001/01/01 0:00:00`, .NET's smallest date, while not set). The race running now
is one started and not ended; of several, the one started last.

A look costs requests to FPVTrackside, so it is bounded: `Event.json` and at most
`reads_per_look` race files, the newest in the list first, then those read longest ago. A
race seen ended is remembered and never read again (ended races stay ended); one not started
yet is read again at later looks, in turn. Looks come every `look_interval` while no race
runs, and `RUNNING_FACTOR` times less often while one does (without `/current` a new race
can only start after the one running ends, and the watcher reads that one's file anyway and
says when it ends). `poke()` asks for a look at once (FPVTrackside's ExtensionMode says a race
was loaded, started or ended).

Between races the race that ended stays the race now until another starts: spectators want
its result. With nothing else known, the race that ended last is the race now. With `/current`
(one small answer), looks come every `quick_interval` for `QUICK_AFTER_END` seconds after the
race now ended: the next race is loaded in that time, and its first lap should not wait for a
look.

Pure: the watcher makes the requests, one at a time within its LAN budget, and hands the
answers here; time is passed in. Everything read came from the venue LAN: ids are checked
before they become a path, and no answer can raise out of here.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pits_appliance.upstream import CURRENT_PATH, MAX_CURRENT_BYTES
from wire.errors import DamagedError
from wire.untrusted import load_json

log = logging.getLogger("pitlink.pits.racenow")

RACE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
EVENT_ID = re.compile(r"[a-z0-9-]{1,64}")  # as wire.event reads it from FPVTrackside's page
READS_PER_LOOK = 4
RUNNING_FACTOR = 5.0  # looks while a race runs (and FPVTrackside has no /current): this much rarer
QUICK_AFTER_END = 180.0  # seconds of quick looks at /current after the race now ended
MAX_RACES = 1024  # races of one event remembered; the newest in Event.json's list are kept
MAX_FILE_BYTES = 8 * 1024 * 1024
# `2025/01/29 19:11:09.494`, as FPVTrackside writes its dates; any separators.
_DATE = re.compile(
    r"(\d{1,4})\D(\d{1,2})\D(\d{1,2})\D+(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,](\d{1,7}))?"
)
When = tuple[int, ...]
UNSET: When = ()


def when(value: Any) -> When | None:
    """A date of FPVTrackside's as a tuple that sorts as time does; UNSET for year 1 (.NET's
    DateTime.MinValue: not set), None when it is no date at all."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    match = _DATE.match(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    if int(year) <= 1:
        return UNSET
    return (
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        int((fraction or "0").ljust(7, "0")),
    )


@dataclass(frozen=True)
class RaceFile:
    """What a Race.json said: when it started and ended (UNSET: not yet; None: unreadable)."""

    start: When | None
    end: When | None

    @property
    def ended(self) -> bool:
        return bool(self.end)

    @property
    def running(self) -> bool:
        return bool(self.start) and self.end == UNSET


def race_file(body: bytes, limit: int = MAX_FILE_BYTES) -> RaceFile | None:
    """Start and End of a Race.json (`[{"Start": ..., "End": ..., ...}]`); None if it is not one."""
    try:
        doc = load_json(body, limit=limit)
    except DamagedError:
        return None
    race = doc[0] if isinstance(doc, list) and doc else doc
    if not isinstance(race, dict):
        return None
    return RaceFile(start=when(race.get("Start")), end=when(race.get("End")))


def event_races(body: bytes, limit: int = MAX_FILE_BYTES) -> list[str] | None:
    """The race ids an Event.json lists, in its order (ids that could not be a path left out);
    None if it is not an Event.json."""
    if not body.strip():
        return []  # FPVTrackside answers a file that is not there with an empty 200
    try:
        doc = load_json(body, limit=limit)
    except DamagedError:
        return None
    if isinstance(doc, list) and not doc:
        return []
    event = doc[0] if isinstance(doc, list) else doc
    races = event.get("Races") if isinstance(event, dict) else None
    if not isinstance(races, list):
        return None
    return [r for r in races if isinstance(r, str) and RACE_ID.fullmatch(r)]


def current_race(body: bytes) -> tuple[bool, str | None]:
    """(answered, race id) from GET /current; answered False when it was no such answer."""
    try:
        doc = load_json(body, limit=MAX_CURRENT_BYTES)
    except DamagedError:
        return False, None
    if not isinstance(doc, dict) or "CurrentRace" not in doc:
        return False, None
    race = doc["CurrentRace"]
    if race is None:
        return True, None
    if isinstance(race, str) and RACE_ID.fullmatch(race):
        return True, race
    return False, None


@dataclass
class _Seen:
    file: RaceFile
    read_at: float


class RaceNow:
    """Knows the race running now, and which request a look needs next."""

    def __init__(
        self,
        *,
        look_interval: float = 2.0,
        quick_interval: float | None = None,
        reads_per_look: int = READS_PER_LOOK,
        max_races: int = MAX_RACES,
        now: float = 0.0,
    ):
        self.look_interval = look_interval
        self.quick_interval = min(look_interval, quick_interval or look_interval)
        self.reads_per_look = reads_per_look
        self.max_races = max_races
        self.event: str | None = None
        self.race: str | None = None  # the race now's id
        self.use_current = False  # FPVTrackside answers GET /current
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._listed: list[str] = []  # Event.json's races, as last read
        self._queue: list[str] = []  # what the look under way reads next
        self._next_look = now
        self._again = False  # poked while a look was under way: another at once after it
        self._ended_at: float | None = None  # when the race now was seen to end

    # -- what the agent tells it ----------------------------------------------------------------

    def set_event(self, event: str | None, now: float) -> bool:
        """The event FPVTrackside has open (from its page); True when that changed the race now."""
        if event is not None and not EVENT_ID.fullmatch(event):
            event = None
        if event == self.event:
            return False
        had = self.race
        self.event, self.race = event, None
        self._ended_at = None
        self._seen.clear()
        self._listed = []
        self._queue = []
        self._next_look = now
        return had is not None

    def set_current(self, answers_current: bool) -> None:
        """Whether FPVTrackside answers GET /current (pits_appliance.upstream's trait)."""
        self.use_current = answers_current

    def poke(self, now: float) -> None:
        """Look at once (or right after the look under way)."""
        if self._queue:
            self._again = True
        self._next_look = min(self._next_look, now)

    # -- what the race now is -------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The race now's Race.json, or None."""
        if self.event is None or self.race is None:
            return None
        return f"/events/{self.event}/{self.race}/Race.json"

    def event_file(self, name: str) -> str | None:
        """A file of the open event (`Results.json`), or None with no event open."""
        return None if self.event is None else f"/events/{self.event}/{name}"

    @property
    def running(self) -> bool:
        """The race now has started and not ended, as its file said when last read."""
        seen = self._seen.get(self.race) if self.race is not None else None
        return seen is not None and seen.file.running

    # -- looks ----------------------------------------------------------------------------------

    def next_look(self) -> float | None:
        """When the next request of a look is due (None with no event open)."""
        if self.event is None:
            return None
        return self._next_look

    def next_read(self, now: float) -> str | None:
        """The path a look reads next, starting a look when one is due; None when none is."""
        if self.event is None:
            return None
        if not self._queue:
            if now < self._next_look:
                return None
            self._queue = [CURRENT_PATH if self.use_current else f"/events/{self.event}/Event.json"]
        return self._queue[0]

    def answer(self, path: str, status: int, body: bytes, now: float) -> bool:
        """FPVTrackside's answer to a look's request; True when the race now changed."""
        if not self._queue or self._queue[0] != path:
            return False  # not what the look asked (the event changed meanwhile)
        self._queue.pop(0)
        if status != 200:
            return self._end_look(now, failed=True)
        if path == CURRENT_PATH:
            answered, race = current_race(body)
            if not answered:
                self.use_current = False  # FPVTrackside's page: a downgrade; look the old way
                return self._end_look(now, failed=True)
            changed = race is not None and race != self.race
            if race is not None and changed:
                self._choose(race)
            self._end_look(now)
            return changed
        if path.endswith("/Event.json"):
            listed = event_races(body)
            if listed is None:
                return self._end_look(now, failed=True)
            self._listed = listed[-self.max_races :]
            self._queue = self._reads()
        else:
            race = path.rsplit("/", 2)[-2]
            self._note(race, body, now)
        return self._end_look(now) if not self._queue else False

    def failed(self, path: str, now: float) -> None:
        """A look's request got no answer: the look ends, the next comes at its time."""
        if self._queue and self._queue[0] == path:
            self._queue = []
            self._end_look(now, failed=True)

    def race_read(self, body: bytes, now: float) -> None:
        """The watcher read the race now's file: it may have ended, or been reset."""
        if self.race is None:
            return
        was_running = self.running
        self._note(self.race, body, now)
        if was_running and not self.running:
            # It ended (or was reset): the next race is looked for at the pace of no race, or
            # quickly where a look is one small request.
            self._ended_at = now
            self._next_look = min(self._next_look, now + self._interval(now))

    # -- inside ---------------------------------------------------------------------------------

    def _note(self, race: str, body: bytes, now: float) -> None:
        got = race_file(body)
        if got is None or got.start is None or got.end is None:
            return  # unreadable, or half-written: what was known stands
        self._seen[race] = _Seen(got, now)
        self._seen.move_to_end(race)
        while len(self._seen) > self.max_races:
            self._seen.popitem(last=False)

    def _reads(self) -> list[str]:
        """The race files this look reads: never read first, newest first; then those not
        ended, read longest ago first. The race now is left out (the watcher reads it)."""
        fresh = [r for r in reversed(self._listed) if r not in self._seen and r != self.race]
        waiting = sorted(
            (s.read_at, r)
            for r, s in self._seen.items()
            if not s.file.ended and r != self.race and r in self._listed
        )
        picked = (fresh + [r for _, r in waiting])[: self.reads_per_look]
        return [f"/events/{self.event}/{r}/Race.json" for r in picked]

    def _end_look(self, now: float, *, failed: bool = False) -> bool:
        """The look is over: choose the race now from what is known; True if it changed."""
        self._queue = []
        changed = False
        if not failed and not self.use_current:
            changed = self._decide()
        self._next_look = now if self._again else now + self._interval(now)
        self._again = False
        return changed

    def _interval(self, now: float) -> float:
        """Seconds to the next look: rarer while a race runs without /current, quick with it
        for a while after the race now ended."""
        if not self.use_current:
            return self.look_interval * (RUNNING_FACTOR if self.running else 1.0)
        ended = self._ended_at
        if ended is not None and not self.running and now - ended < QUICK_AFTER_END:
            return self.quick_interval
        return self.look_interval

    def _decide(self) -> bool:
        running = [(s.file.start, r) for r, s in self._seen.items() if s.file.running]
        if running:
            race = max(running)[1]
        elif self.race is None:
            ended = [(s.file.end, r) for r, s in self._seen.items() if s.file.ended]
            if not ended:
                return False
            race = max(ended)[1]  # nothing runs: the race that ended last, for its result
        else:
            return False  # nothing else runs: the race now stays, ended or not
        if race == self.race:
            return False
        self._choose(race)
        return True

    def _choose(self, race: str) -> None:
        log.info("the race now", extra={"event_id": self.event, "race": race, "before": self.race})
        self.race = race
        self._ended_at = None
