"""A generated FPVTrackside event on disk whose race runs, one lap detection at a time.

What FPVTrackside writes while a race runs: ``Event.json``, ``Pilots.json``, ``Rounds.json``,
one ``Race.json`` per race and ``Results.json`` under ``events/<id>/``, and ``httpfiles/``,
rewritten in place, indented with CRLF, dates in its own format. A listener (the simulator's
ExtensionMode notifier) is told of each moment FPVTrackside raises an event for: a race loaded,
scheduled and started, a detection, the results, the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pitlink_testkit.fpvtrackside_pages import EVENT_MANAGER_JS, INDEX_HTML, STYLE_CSS

Json = dict[str, Any]

NULL_DATE = "0001/01/01 0:00:00"  # .NET DateTime.MinValue in FPVTrackside's date format
NO_ID = "00000000-0000-0000-0000-000000000000"
PILOT_NAMES = (
    "Ace", "Blaze", "Comet", "Dash", "Echo", "Flux", "Glide", "Hex",
    "Ion", "Jolt", "Kite", "Lumen", "Mako", "Nova", "Orbit", "Pike",
)  # fmt: skip
# Standard 5.8 GHz video bands, in FPVTrackside's order: (band, short name, MHz by channel).
BANDS = (
    ("Fatshark", "F", (5740, 5760, 5780, 5800, 5820, 5840, 5860, 5880)),
    ("Raceband", "R", (5658, 5695, 5732, 5769, 5806, 5843, 5880, 5917)),
    ("A", "A", (5865, 5845, 5825, 5805, 5785, 5765, 5745, 5725)),
    ("B", "B", (5733, 5752, 5771, 5790, 5809, 5828, 5847, 5866)),
)
CHANNEL_COLORS = ("#FF0000", "#0000FF", "#FFFF00", "#FF00FF", "#32F000", "#FFFFFF", "#00F0F0")
POINTS = (10, 7, 5, 3, 2, 1, 0, 0)
MAX_HEAT = 4
MIN_LAP_SECONDS = 5.0
_DATE = re.compile(r"(\d{4})/(\d{2})/(\d{2}) (\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")


def format_date(when: dt.datetime) -> str:
    """Format like FPVTrackside's ``yyyy/MM/dd H:mm:ss.FFF``: unpadded hour, trimmed millis."""
    # Spelled out: strftime's %Y drops the zero padding of year 1 (DateTime.MinValue) on glibc.
    text = f"{when.year:04d}/{when.month:02d}/{when.day:02d} {when.hour}:{when:%M:%S}"
    millis = when.microsecond // 1000  # .NET's F specifiers truncate, they do not round
    return f"{text}.{millis:03d}".rstrip("0") if millis else text


def parse_date(text: str) -> dt.datetime:
    """The moment a date FPVTrackside wrote (``format_date``'s inverse) names, to the millisecond."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a date as FPVTrackside writes one: {text!r}")
    year, month, day, hour, minute, second, millis = match.groups()
    when = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    return when + dt.timedelta(milliseconds=int((millis or "0").ljust(3, "0")))


def dump_json(objs: list[Json]) -> bytes:
    """Serialize like Newtonsoft's indented output on Windows: 2 spaces, CRLF, no final newline."""
    return json.dumps(objs, indent=2, ensure_ascii=False).replace("\n", "\r\n").encode("utf-8")


def _channel_table() -> list[Json]:
    table: list[Json] = []
    for band, short, frequencies in BANDS:
        for number, mhz in enumerate(frequencies, 1):
            table.append(
                {
                    "Number": number,
                    "Band": band,
                    "ChannelPrefix": "\x00",
                    "Frequency": mhz,
                    "DisplayName": None,
                    "ID": f"{len(table) + 1:08x}-0000-0000-0000-000000000000",
                    "ExternalID": 0,
                    "ShortBand": short,
                }
            )
    return table


def _pilot(name: str, pilot_id: str) -> Json:
    nulls = ("FirstName", "LastName", "SillyName", "DiscordID", "Aircraft", "CatchPhrase")
    return {
        "Name": name,
        "Phonetic": name,
        **dict.fromkeys(nulls),
        "BestResult": None,
        "TimingSensitivityPercent": 100,
        "PracticePilot": False,
        "PhotoPath": None,
        "ID": pilot_id,
        "ExternalID": 0,
    }


class RaceListener(Protocol):
    """What FPVTrackside's race and result managers announce, each at the moment they do.

    ``race_changed``: another race is the current one; ``race_scheduled``: its start time is
    chosen; ``race_started``; ``detected``: one detection, already in ``race["Detections"]``
    (``then``, when given, writes the race file: to be called once the event has gone);
    ``results_changed``: the race's results are saved; ``race_ended``.
    """

    def race_changed(self, race: Json) -> None: ...
    def race_scheduled(self, race: Json) -> None: ...
    def race_started(self, race: Json) -> None: ...
    def detected(
        self, race: Json, detection: Json, then: Callable[[], None] | None = None
    ) -> None: ...
    def results_changed(self, race: Json) -> None: ...
    def race_ended(self, race: Json) -> None: ...


@dataclasses.dataclass
class _Flight:
    """One pilot's progress through the running race."""

    pilot: str
    channel: str
    pace: float
    last: dt.datetime  # when the current lap started
    next: dt.datetime  # when the next detection comes
    lap: int = -1  # last lap number detected; -1 before the holeshot


class LiveEvent:
    """A seeded FPVTrackside event on disk whose current race advances one detection per step.

    Ids, names and times all come from ``random.Random(seed)`` and a simulated clock, so a seed
    and a number of steps always give the same bytes. Files are rewritten in place (truncate and
    write, no rename) as FPVTrackside does.

    ``listener`` (set it after construction) hears of each moment FPVTrackside raises an event
    for, as FPVTrackside orders them against its writes: a detection after the race file has
    it (with ``event_before_file``, the file is written once the event has gone); the results after ``Results.json`` is written, then
    the end; then the next race loaded, scheduled and started. ``photos`` gives every pilot a
    photo (``PhotoPath`` relative to FPVTrackside's folder, as it keeps one it found).
    """

    def __init__(self, root: Path, *, seed: int, pilots: int, photos: bool = False) -> None:
        if not 1 <= pilots <= 8:
            raise ValueError(f"pilots must be 1..8 (one Raceband channel each), not {pilots}")
        self.root = root
        self._rng = rng = random.Random(seed)
        day = dt.datetime(2025, 1, 1) + dt.timedelta(days=rng.randrange(365))
        self.clock = day + dt.timedelta(hours=18, seconds=rng.uniform(0, 3600))
        self._day, self._opened = day, self.clock
        self.event_id = self._new_id()
        self.dir = root / "events" / self.event_id
        self._club = self._new_id()
        self.laps = rng.choice((3, 4))
        self.channels = _channel_table()
        raceband = [c["ID"] for c in self.channels if c["Band"] == "Raceband"]
        self._event_channels = sorted(rng.sample(raceband, pilots))
        self.pilots = [_pilot(name, self._new_id()) for name in rng.sample(PILOT_NAMES, pilots)]
        if photos:
            for pilot in self.pilots:
                pilot["PhotoPath"] = f"pilots\\{pilot['Name'].lower()}.jpg"
        self._channel_of = {
            p["ID"]: c for p, c in zip(self.pilots, self._event_channels, strict=True)
        }
        self._pilot_channel_ids = [self._new_id() for _ in self.pilots]
        self._pace = {p["ID"]: rng.uniform(18.0, 32.0) for p in self.pilots}
        self.rounds: list[Json] = []
        self.races: list[Json] = []
        self.results: list[Json] = []
        self.races_finished = 0
        self._current = 0
        self._flights: list[_Flight] = []
        self.listener: RaceListener | None = None
        self.event_before_file = False
        # After a race ends, the next one is loaded but not started until the next step()
        # (a gap between races, as at a real event); `between` while it waits.
        self.hold_next = False
        self.between = False
        for _ in range(3):
            self._add_round()
        (root / "httpfiles").mkdir(parents=True, exist_ok=True)
        (root / "httpfiles" / "index.html").write_text(INDEX_HTML, encoding="utf-8")
        (root / "httpfiles" / "EventManager.js").write_text(EVENT_MANAGER_JS, encoding="utf-8")
        (root / "httpfiles" / "style.css").write_text(STYLE_CSS, encoding="utf-8")
        self._write(root / "httpfiles" / "Channels.json", self.channels)
        self._write(self.dir / "Pilots.json", self.pilots)
        self._write_schedule()
        for race in self.races:
            self._write_race(race)
        self._start_race()

    @property
    def current_race(self) -> Json:
        """The race that is running now."""
        return self.races[self._current]

    @property
    def next_race(self) -> Json | None:
        """The race after the one running now, if the schedule has one yet."""
        following = self._current + 1
        return self.races[following] if following < len(self.races) else None

    def step(self) -> None:
        """Record the next lap detection; after the last one, write results and start the next race."""
        if self.between:
            self.between = False
            self._start_race()
            return
        race, rng = self.current_race, self._rng
        flight = min((f for f in self._flights if f.lap < self.laps), key=lambda f: f.next)
        when, number = flight.next, flight.lap + 1
        detection_id = self._new_id()
        detection = {
            "TimingSystemIndex": 0,
            "Channel": flight.channel,
            "Time": format_date(when),
            "Peak": rng.randint(600, 1000),
            "TimingSystemType": "LapRF",
            "Pilot": flight.pilot,
            "LapNumber": number,
            "Valid": True,
            "ValidityType": "Auto",
            "IsLapEnd": True,
            "RaceSector": number * 100,  # lap x 100 + timing system index
            "IsHoleshot": number == 0,
            "ID": detection_id,
            "ExternalID": 0,
        }
        race["Detections"].append(detection)
        race["Laps"].append(
            {
                "Detection": detection_id,
                "LengthSeconds": round((when - flight.last).total_seconds(), 7),
                "LapNumber": number,
                "StartTime": format_date(flight.last),
                "EndTime": format_date(when),
                "ID": self._new_id(),
                "ExternalID": 0,
            }
        )
        flight.lap, flight.last = number, when
        flight.next = when + dt.timedelta(seconds=max(MIN_LAP_SECONDS, rng.gauss(flight.pace, 1.5)))
        self.clock = max(self.clock, when)
        running = any(f.lap < self.laps for f in self._flights)
        if not running:
            self.clock += dt.timedelta(seconds=rng.uniform(0.3, 1.0))
            race["End"] = format_date(self.clock)
        if self.listener is None:
            self._write_race(race)
        elif self.event_before_file:  # the file gets it (as it is now) once the event has gone
            path, body = self._race_file(race), dump_json([race])
            self.listener.detected(race, detection, then=lambda: self._write_bytes(path, body))
        else:
            self._write_race(race)
            self.listener.detected(race, detection)
        if not running:
            self._finish_race(race)

    def _finish_race(self, race: Json) -> None:
        for position, flight in enumerate(sorted(self._flights, key=lambda f: f.last), 1):
            self.results.append(
                {
                    "Points": POINTS[position - 1],
                    "Position": position,
                    "Valid": True,
                    "Event": self.event_id,
                    "Pilot": flight.pilot,
                    "Race": race["ID"],
                    "Round": race["Round"],
                    "DNF": False,
                    "ResultType": "Race",
                    "ID": self._new_id(),
                    "ExternalID": 0,
                }
            )
        self._write(self.dir / "Results.json", self.results)
        # FPVTrackside saves the results (and tells of them) before it tells of the end.
        if self.listener is not None:
            self.listener.results_changed(race)
            self.listener.race_ended(race)
        self.races_finished += 1
        self._current += 1
        if self._current == len(self.races):
            self._add_round()
            self._write_schedule()
            self._write_race(self.current_race)
        if self.listener is not None:
            self.listener.race_changed(self.current_race)
        self.clock += dt.timedelta(seconds=self._rng.uniform(45.0, 120.0))
        if self.hold_next:
            self.between = True
            return
        self._start_race()

    def _start_race(self) -> None:
        race, start = self.current_race, self.clock
        race["Start"] = format_date(start)
        self._flights = [
            _Flight(
                pilot=pc["Pilot"],
                channel=pc["Channel"],
                pace=self._pace[pc["Pilot"]],
                last=start,
                next=start + dt.timedelta(seconds=self._rng.uniform(0.8, 3.0)),
            )
            for pc in race["PilotChannels"]
        ]
        if self.listener is not None:
            self.listener.race_scheduled(race)
        self._write_race(race)
        if self.listener is not None:
            self.listener.race_started(race)

    def _add_round(self) -> None:
        number, round_id = len(self.rounds) + 1, self._new_id()
        self.rounds.append(
            {
                "Name": "",
                "RoundNumber": number,
                "EventType": "Race",
                "RoundType": "Round",
                "Valid": True,
                "PointSummary": None,
                "TimeSummary": None,
                "LapCountAfterRound": False,
                "Order": number * 100,
                "SheetFormatFilename": None,
                "ID": round_id,
                "ExternalID": 0,
            }
        )
        order = [p["ID"] for p in self.pilots]
        self._rng.shuffle(order)
        heats = -(-len(order) // MAX_HEAT)
        for heat in range(heats):
            members = order[heat::heats]
            self.races.append(
                {
                    "Laps": [],
                    "Detections": [],
                    "Start": NULL_DATE,
                    "End": NULL_DATE,
                    "TotalPausedTime": "00:00:00",
                    "PilotChannels": [
                        {
                            "Pilot": p,
                            "Channel": self._channel_of[p],
                            "ID": self._new_id(),
                            "ExternalID": 0,
                        }
                        for p in members
                    ],
                    "RaceNumber": heat + 1,
                    "Round": round_id,
                    "TargetLaps": self.laps,
                    "PrimaryTimingSystemLocation": "Holeshot",
                    "Valid": True,
                    "AutoAssignNumbers": False,
                    "Event": self.event_id,
                    "Bracket": "None",
                    "ID": self._new_id(),
                    "ExternalID": 0,
                }
            )

    def event_record(self) -> Json:
        """The event as ``Event.json`` has it now."""
        return {
            "EventType": "Race",
            "Name": f"Simulated Event ({self._day:%b} {self._day.day})",
            "Start": format_date(self._day),
            "End": NULL_DATE,
            "Laps": self.laps,
            "PBLaps": 1,
            "RaceLength": "00:02:00",
            "MinStartDelay": "00:00:00.5000000",
            "MaxStartDelay": "00:00:05",
            "PrimaryTimingSystemLocation": "Holeshot",
            "RaceStartIgnoreDetections": "00:00:00.5000000",
            "MinLapTime": "00:00:05",
            "LastOpened": format_date(self._opened),
            "PilotChannels": [
                {
                    "Pilot": p["ID"],
                    "Channel": self._channel_of[p["ID"]],
                    "ID": pc_id,
                    "ExternalID": 0,
                }
                for p, pc_id in zip(self.pilots, self._pilot_channel_ids, strict=True)
            ],
            "RemovedPilots": [],
            "Rounds": [r["ID"] for r in self.rounds],
            "Club": self._club,
            "Channels": self._event_channels,
            "ChannelColors": list(CHANNEL_COLORS),
            "ChannelDisplayNames": [None] * len(self._event_channels),
            "Enabled": True,
            "MultiGPRaceFormat": "AggregateLaps",
            "Races": [r["ID"] for r in self.races],
            "SyncWithFPVTrackside": False,
            "SyncWithMultiGP": False,
            "GenerateHeatsMultiGP": False,
            "VisibleOnline": True,
            "Locked": False,
            "Track": NO_ID,
            "Sectors": [],
            "PilotsRegistered": len(self.pilots),
            "ID": self.event_id,
            "ExternalID": 0,
        }

    def _write_schedule(self) -> None:
        self._write(self.dir / "Event.json", [self.event_record()])
        self._write(self.dir / "Rounds.json", self.rounds)

    def _race_file(self, race: Json) -> Path:
        return self.dir / race["ID"] / "Race.json"

    def _write_race(self, race: Json) -> None:
        self._write(self._race_file(race), [race])

    @classmethod
    def _write(cls, path: Path, objs: list[Json]) -> None:
        cls._write_bytes(path, dump_json(objs))

    @staticmethod
    def _write_bytes(path: Path, body: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # in place, like File.WriteAllText: readers can see it torn
            f.write(body)

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
