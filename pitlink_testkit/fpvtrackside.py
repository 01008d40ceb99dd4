"""Simulate FPVTrackside's built-in web server, quirks included, for Pitlink tests and demos.

FPVTrackside serves its event files from a single HttpListener loop on port 8080, and the pits
agent polls that origin. Tests therefore need an origin that misbehaves exactly like the real one
(see tests/fixtures/README.md): one request at a time, no Content-Type on event files, an
empty 200 for a missing event file, index.html for unknown paths, no ETag or Last-Modified, no
protection against ``..``, and files rewritten in place while a race runs. Test switches
(``slow``, ``hold``, ``half_written``, ``huge``) add the faults a real pits network produces.

Two modes: ``Simulator(root=DIR)`` serves an existing web root read-only (e.g. the real fixture
event); ``Simulator(seed=N)`` generates a seeded event in a temporary directory and runs a live
race in it, one lap detection every ``lap_interval`` seconds or per ``advance()`` call.

    python scripts/fpvtrackside_sim.py [--host 127.0.0.1] [--port 8080] [--root DIR]
                                       [--seed 0] [--lap-interval 2.0] [--slow 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import urllib.parse
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

log = logging.getLogger("pitlink.sim.fpvtrackside")

Json = dict[str, Any]

#: How clients find the open event in the page FPVTrackside serves at ``/``.
EVENT_RE = re.compile(r'new EventManager\("events/([a-z0-9-]+)"')
EVENT_PLACEHOLDER = "%eventDirectory%"
NULL_DATE = "0001/01/01 0:00:00"  # .NET DateTime.MinValue in FPVTrackside's date format
NO_ID = "00000000-0000-0000-0000-000000000000"
# HttpListener (http.sys) names itself so; without this Tornado would announce itself.
SERVER_HEADER = "Microsoft-HTTPAPI/2.0"
# The only types the real server sets (by exact file extension); anything else gets none.
CONTENT_TYPES = {".html": "text/html", ".htm": "text/html", ".json": "text/json"}
HUGE_CHUNK_BYTES = 64 * 1024
# HttpListener keeps connections open between requests (HTTP/1.1; FPVTrackside never turns
# KeepAlive off) and http.sys closes one idle for 2 minutes (its IdleConnection timeout).
IDLE_TIMEOUT_S = 120.0
LOG_LIMIT = 10_000  # bound on request_log and traversals
# The FPVTrackside versions whose web servers differ in what Pitlink sees (see Simulator).
VERSIONS = ("2.70", "2.71", "2.76")

# The page FPVTrackside serves at `/`, and what it loads, in the same shape: scripts and styles
# by absolute `/httpfiles/...` paths, data relative to the page (`%eventDirectory%/...`), the
# event found by `new EventManager("events/<id>")`. It shows the race running now and follows it.
INDEX_HTML = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FPVTrackside</title>
<link rel="stylesheet" href="/httpfiles/style.css">
<script src="/httpfiles/EventManager.js"></script>
</head>
<body>
<h1 id="event-name">FPVTrackside</h1>
<p id="race">Loading the event&hellip;</p>
<table id="laps"><thead><tr><th>Pilot</th><th>Laps</th><th>Last lap</th></tr></thead>
<tbody></tbody></table>
<p id="updated" data-updates="0"></p>
<script>
  var eventManager = new EventManager("%eventDirectory%");
</script>
</body>
</html>
"""

EVENT_MANAGER_JS = """"use strict";
// Loads the event from `<eventDirectory>/...` (relative to the page) and shows the race running
// now: the first race of the event that has not ended. Refreshes every second.
function EventManager(eventDirectory) {
  this.dir = eventDirectory;
  this.pilots = {};
  this.races = [];
  this.current = 0;
  this.updates = 0;
  var self = this;
  this.load().then(function () {
    self.tick();
    setInterval(function () { self.tick(); }, 1000);
  }).catch(function (e) { self.say("The event did not load: " + e.message); });
}

EventManager.prototype.get = function (file) {
  return fetch(this.dir + "/" + file, { cache: "no-store" }).then(function (r) {
    if (!r.ok) { throw new Error(file + " answered HTTP " + r.status); }
    return r.json();
  });
};

EventManager.prototype.load = function () {
  var self = this;
  return Promise.all([this.get("Event.json"), this.get("Pilots.json")]).then(function (got) {
    var event = got[0][0] || {};
    self.races = event.Races || [];
    document.getElementById("event-name").textContent = event.Name || "Event";
    got[1].forEach(function (p) { self.pilots[p.ID] = p.Name; });
  });
};

EventManager.prototype.say = function (text) {
  document.getElementById("race").textContent = text;
};

function ended(date) { return !!date && date.indexOf("0001/") !== 0; }

EventManager.prototype.tick = function () {
  var self = this;
  if (!this.races.length) { this.say("No race yet."); return; }
  this.get(this.races[this.current] + "/Race.json").then(function (got) {
    var race = got[0];
    if (!race) { return; }
    if (ended(race.End) && self.current < self.races.length - 1) {
      self.current += 1;  // that one is over: follow the next
      return;
    }
    self.render(race);
  }).catch(function () { /* a half-written file: the next tick reads it again */ });
};

EventManager.prototype.render = function (race) {
  var pilotOf = {};
  (race.Detections || []).forEach(function (d) { pilotOf[d.ID] = d.Pilot; });
  var laps = {};
  (race.Laps || []).forEach(function (lap) {
    var pilot = pilotOf[lap.Detection];
    if (!pilot || lap.LapNumber < 1) { return; }
    laps[pilot] = { count: lap.LapNumber, last: lap.LengthSeconds };
  });
  var state = ended(race.End) ? "finished" : ended(race.Start) ? "running" : "next";
  this.say("Race " + race.RaceNumber + ", " + state);
  var body = document.querySelector("#laps tbody");
  body.replaceChildren();
  var self = this;
  (race.PilotChannels || []).forEach(function (pc) {
    var row = document.createElement("tr");
    var done = laps[pc.Pilot] || { count: 0, last: null };
    [self.pilots[pc.Pilot] || "?", String(done.count),
     done.last === null ? "" : done.last.toFixed(2) + " s"].forEach(function (text) {
      var cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    });
    body.append(row);
  });
  this.updates += 1;
  var updated = document.getElementById("updated");
  updated.dataset.updates = String(this.updates);
  updated.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
};
"""

STYLE_CSS = """body { font: 16px/1.4 system-ui, sans-serif; margin: 1em auto; max-width: 40em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ccc; }
"""

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


def format_date(when: dt.datetime) -> str:
    """Format like FPVTrackside's ``yyyy/MM/dd H:mm:ss.FFF``: unpadded hour, trimmed millis."""
    # Spelled out: strftime's %Y drops the zero padding of year 1 (DateTime.MinValue) on glibc.
    text = f"{when.year:04d}/{when.month:02d}/{when.day:02d} {when.hour}:{when:%M:%S}"
    millis = when.microsecond // 1000  # .NET's F specifiers truncate, they do not round
    return f"{text}.{millis:03d}".rstrip("0") if millis else text


def dump_json(objs: list[Json]) -> bytes:
    """Serialize like Newtonsoft's indented output on Windows: 2 spaces, CRLF, no final newline."""
    return json.dumps(objs, indent=2, ensure_ascii=False).replace("\n", "\r\n").encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the real server answers for one path; ``content_type=None`` means no header at all."""

    body: bytes
    content_type: str | None
    escapes_root: bool


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError):  # missing, a directory, unreadable, or a NUL in the name
        return None


def _escapes(base: str, target: str) -> bool:
    try:
        return os.path.commonpath([base, os.path.normpath(target)]) != base
    except ValueError:  # e.g. another drive on Windows
        return True


def resolve(root: Path, event_id: str, raw_path: str) -> Reply:
    """Answer ``raw_path`` the way FPVTrackside's EventWebServer does, reading files fresh.

    Segments are URL-decoded one by one and joined onto the root with no ``..`` check, as the
    real server does; ``escapes_root`` tells whether the resulting file path left the root.
    """
    segments = [urllib.parse.unquote(s) for s in raw_path.split("/") if s]
    base = str(root)
    target = os.sep.join([base, *segments])
    escapes = _escapes(base, target)
    if len(segments) > 1 and segments[0] == "events" and "." in segments[-1]:
        return Reply(_read(target) or b"", None, escapes)
    index = os.path.join(base, "httpfiles", "index.html")
    path = target if segments else index
    body = _read(path)
    if body is None:
        path, body = index, _read(index)
        if body is None:
            return Reply(b"", None, escapes)
    name = os.path.basename(path)
    if name == "index.html":  # the real server substitutes in any index.html it serves
        text = body.decode("utf-8", "replace").replace(EVENT_PLACEHOLDER, f"events/{event_id}")
        body = text.encode("ascii", "replace")
    return Reply(body, CONTENT_TYPES.get(os.path.splitext(name)[1]), escapes)


def find_event_id(root: Path) -> str:
    """The event a web root serves: the one (or most recently written) ``events/<id>/Event.json``."""
    events = [p.parent for p in (root / "events").glob("*/Event.json")]
    if not events:
        raise ValueError(f"no events/<id>/Event.json under {root}")
    return max(events, key=lambda d: ((d / "Event.json").stat().st_mtime, d.name)).name


# One 64-byte array item; 1024 of them make a chunk, so chunks join seamlessly.
_FILLER_UNIT = b'  {"Filler": "%s"},\r\n' % (b"pitlink-sim-padding-" * 3)[:45]
_FILLER_BLOCK = _FILLER_UNIT * (HUGE_CHUNK_BYTES // len(_FILLER_UNIT))


def filler(size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of JSON-looking padding, one 64 KiB chunk at a time."""
    block = b"[" + _FILLER_BLOCK[1:]
    while size > 0:
        piece = block[:size]
        yield piece
        size -= len(piece)
        block = _FILLER_BLOCK


# --- the generated event --------------------------------------------------------------------


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
    """

    def __init__(self, root: Path, *, seed: int, pilots: int) -> None:
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

    def step(self) -> None:
        """Record the next lap detection; after the last one, write results and start the next race."""
        race, rng = self.current_race, self._rng
        flight = min((f for f in self._flights if f.lap < self.laps), key=lambda f: f.next)
        when, number = flight.next, flight.lap + 1
        detection_id = self._new_id()
        race["Detections"].append(
            {
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
                "RaceSector": 0,
                "IsHoleshot": number == 0,
                "ID": detection_id,
                "ExternalID": 0,
            }
        )
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
        if any(f.lap < self.laps for f in self._flights):
            self._write_race(race)
            return
        self.clock += dt.timedelta(seconds=rng.uniform(0.3, 1.0))
        race["End"] = format_date(self.clock)
        self._write_race(race)
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
        self.races_finished += 1
        self._current += 1
        if self._current == len(self.races):
            self._add_round()
            self._write_schedule()
            self._write_race(self.current_race)
        self.clock += dt.timedelta(seconds=self._rng.uniform(45.0, 120.0))
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
        self._write_race(race)

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

    def _event_record(self) -> Json:
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
        self._write(self.dir / "Event.json", [self._event_record()])
        self._write(self.dir / "Rounds.json", self.rounds)

    def _write_race(self, race: Json) -> None:
        self._write(self.dir / race["ID"] / "Race.json", [race])

    @staticmethod
    def _write(path: Path, objs: list[Json]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # in place, like File.WriteAllText: readers can see it torn
            f.write(dump_json(objs))

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


# --- the server -----------------------------------------------------------------------------


class _AnyMethod(tuple[str, ...]):
    """A SUPPORTED_METHODS that admits every verb: HttpListener answers them all alike."""

    def __contains__(self, item: object) -> bool:
        return True


def _skip_body_parse() -> None:
    return None


class _Handler(tornado.web.RequestHandler):
    """Hands each request to the simulator's one-at-a-time turn, then writes its reply."""

    SUPPORTED_METHODS = _AnyMethod(("GET", "HEAD"))

    def initialize(self, sim: Simulator) -> None:
        self.sim = sim
        # The real server never rejects a body; Tornado would 400 a malformed form body.
        self.request._parse_body = _skip_body_parse  # type: ignore[method-assign]

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")  # event files carry none; typed replies set their own
        self.set_header("Server", SERVER_HEADER)

    def compute_etag(self) -> str | None:
        return None  # no ETag, hence never a 304

    async def prepare(self) -> None:
        method, raw_path = self.request.method or "GET", self.request.path
        async with self.sim.turn(method, raw_path):
            await self._send(method, raw_path, self.sim.reply(raw_path))

    async def _send(self, method: str, raw_path: str, reply: Reply) -> None:
        self.set_header("Server", self.sim.server)
        self.set_header("Access-Control-Allow-Origin", "*")
        if method == "OPTIONS":
            self.set_header(
                "Access-Control-Allow-Headers", "Content-Type, Accept, X-Requested-With"
            )
            self.set_header("Access-Control-Allow-Methods", "GET, POST")
            self.set_header("Access-Control-Max-Age", "1728000")
        if reply.content_type is not None:
            self.set_header("Content-Type", reply.content_type)
        size = self.sim.huge.get(raw_path)
        finishing = None
        try:
            if size is None:
                finishing = self.finish(reply.body)
            else:
                self.set_header("Content-Length", size)
                if method != "HEAD":
                    for chunk in filler(size):
                        self.write(chunk)
                        await self.flush()
                finishing = self.finish()
            await finishing
        except tornado.iostream.StreamClosedError:
            log.debug("client left before the reply to %s %s was sent", method, raw_path)
            if finishing is None:
                with contextlib.suppress(tornado.iostream.StreamClosedError):
                    await self.finish()


class _CountingServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, counting the TCP connections it accepts."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.accepted = 0
        self.streams: weakref.WeakSet[tornado.iostream.IOStream] = weakref.WeakSet()

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        self.accepted += 1
        self.streams.add(stream)
        super().handle_stream(stream, address)


class Simulator:
    """A fake FPVTrackside origin on Tornado: one request at a time, quirks and fault switches.

    Switches tests set at runtime: ``slow`` (seconds each request waits holding the lock),
    ``hold`` (an Event every request waits for, holding the lock), ``half_written`` (URL paths
    served with half their bytes), ``huge`` (URL path -> a streamed body of that many bytes).
    Switches match the raw request path, e.g. ``/events/<id>/Event.json``.

    Connections stay open between requests, as HttpListener's do, until idle for
    ``idle_timeout`` seconds; ``connections_total`` and ``connections_open`` count them.

    ``version`` is which FPVTrackside to answer as, in what its web server shows (tests may
    change it at runtime, as an upgrade at the venue would): "2.70" as the fixture's (event
    files with no Content-Type), "2.71" (event files as ``application/json``), "2.76" (also
    ``GET /current``). ``server`` is its Server header (Windows' http.sys by default).
    """

    def __init__(
        self,
        *,
        root: Path | None = None,
        seed: int = 0,
        lap_interval: float | None = 2.0,
        pilots: int = 6,
        idle_timeout: float = IDLE_TIMEOUT_S,
        version: str = "2.70",
    ) -> None:
        if lap_interval is not None and lap_interval <= 0:
            raise ValueError("lap_interval must be positive, or None to disable the live race")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}")
        self.version = version
        self.server = SERVER_HEADER
        self.slow: float = 0.0
        self.hold: asyncio.Event | None = None
        self.half_written: set[str] = set()
        self.huge: dict[str, int] = {}
        self.requests_total = 0  # counted on arrival, before queueing for the lock
        self.queued = 0  # arrived and waiting for the lock
        self.in_flight = 0  # holding the lock: never more than 1
        self.max_in_flight = 0
        self.max_open = 0  # most requests ever arrived and unanswered at once (queued + in flight)
        self.request_log: list[tuple[str, str]] = []
        self.traversals: list[str] = []
        self.lap_interval = lap_interval
        self.idle_timeout = idle_timeout
        self._live: LiveEvent | None = None
        self._cleanup: Callable[[], object] | None = None
        if root is None:
            tmp = Path(tempfile.mkdtemp(prefix="fpvtrackside-sim-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
            try:
                self._live = LiveEvent(tmp, seed=seed, pilots=pilots)
            except BaseException:
                self._cleanup()
                raise
            self.root = tmp
            self.event_id = self._live.event_id
        else:
            self.root = Path(root).resolve()
            self.event_id = find_event_id(self.root)
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        self._server: _CountingServer | None = None
        self._accepted_before = 0  # connections counted by a server already stopped
        self._task: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._address is None:
            raise RuntimeError("the simulator has not been started")
        host, port = self._address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def connections_total(self) -> int:
        """TCP connections accepted so far."""
        running = 0 if self._server is None else self._server.accepted
        return self._accepted_before + running

    @property
    def connections_open(self) -> int:
        """TCP connections open now (closed by either side, they no longer count)."""
        if self._server is None:
            return 0
        return sum(1 for stream in self._server.streams if not stream.closed())

    @property
    def event_path(self) -> str:
        """URL path of the event directory, ``/events/<event id>``."""
        return f"/events/{self.event_id}"

    @property
    def current_race_id(self) -> str | None:
        """Id of the race running now (None when serving an existing root)."""
        return None if self._live is None else self._live.current_race["ID"]

    @property
    def races_finished(self) -> int:
        """How many races of the generated event have ended."""
        return 0 if self._live is None else self._live.races_finished

    def race_path(self, race_id: str | None = None) -> str:
        """URL path of a race's Race.json, the current race's by default."""
        race_id = race_id or self.current_race_id
        if race_id is None:
            raise RuntimeError("no generated event: pass a race id")
        return f"{self.event_path}/{race_id}/Race.json"

    def make_app(self) -> tornado.web.Application:
        """The Tornado application: every path goes to the one handler."""
        return tornado.web.Application([(r".*", _Handler, {"sim": self})])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port), start the live race; return the port."""
        if self._server is not None or self._closing.is_set():
            raise RuntimeError("a simulator starts once")
        sockets = tornado.netutil.bind_sockets(port, address=host)
        self._server = _CountingServer(self.make_app(), idle_connection_timeout=self.idle_timeout)
        self._server.add_sockets(sockets)
        self._address = (host, sockets[0].getsockname()[1])
        if self._live is not None and self.lap_interval is not None:
            self._task = asyncio.create_task(self._run_live(self.lap_interval), name="live-race")
        log.info("serving %s on %s, event %s", self.root, self.url, self.event_id)
        return self._address[1]

    async def stop(self) -> None:
        """Stop listening and racing, close open connections, remove a generated event."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._accepted_before += self._server.accepted
            self._server = None
            log.info("stopped serving event %s", self.event_id)
        # Only now release requests waiting on hold or slow: their connections are closed, so
        # they end without answering rather than racing the shutdown.
        self._closing.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=5.0)
        except TimeoutError:
            log.warning("%d requests still running at stop", self._active)
        if self._cleanup is not None:
            self._cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def advance(self) -> None:
        """Add one lap detection to the live race (what the background task does each interval)."""
        if self._live is None:
            raise RuntimeError("advance() needs a generated event (root=None)")
        self._live.step()

    def reply(self, raw_path: str) -> Reply:
        """The reply to ``raw_path``, with traversals recorded and ``half_written`` applied."""
        built = tuple(int(part) for part in self.version.split("."))
        segments = [s for s in raw_path.split("/") if s]
        if built >= (2, 76) and segments[:1] == ["current"]:
            race = None if self._live is None else self._live.current_race
            running = race["ID"] if race is not None and race["End"] == NULL_DATE else None
            body = json.dumps({"CurrentRace": running}).encode()
            return Reply(body, "application/json", False)
        reply = resolve(self.root, self.event_id, raw_path)
        if built >= (2, 71) and segments[:1] == ["events"] and raw_path.endswith(".json"):
            if reply.body:  # as 2.71 does: only for a file that exists
                reply = dataclasses.replace(reply, content_type="application/json")
        if reply.escapes_root:
            log.warning("request path %r leaves the web root", raw_path)
            _remember(self.traversals, raw_path)
        if raw_path in self.half_written:
            reply = dataclasses.replace(reply, body=reply.body[: len(reply.body) // 2])
        return reply

    @contextlib.asynccontextmanager
    async def turn(self, method: str, raw_path: str) -> AsyncIterator[None]:
        """Queue a request behind the one lock, like the real single HttpListener loop."""
        self.requests_total += 1
        _remember(self.request_log, (method, raw_path))
        self.queued += 1
        self.max_open = max(self.max_open, self.queued + self.in_flight)
        self._active += 1
        self._idle.clear()
        waiting = True
        try:
            async with self._lock:
                self.queued -= 1
                waiting = False
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    await self._gates()
                    yield
                finally:
                    self.in_flight -= 1
        finally:
            if waiting:
                self.queued -= 1
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _gates(self) -> None:
        """Wait for ``hold`` then ``slow``; both give way when the simulator stops."""
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            hold = self.hold
            if hold is not None and not hold.is_set():
                opened = asyncio.ensure_future(hold.wait())
                await asyncio.wait({opened, closing}, return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
            if self.slow > 0 and not closing.done():
                await asyncio.wait({closing}, timeout=self.slow)
        finally:
            closing.cancel()

    async def _run_live(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # a timer, not a wait for a condition
            try:
                self.advance()
            except OSError:
                log.exception("could not write the live race")


def _remember(log_list: list[Any], item: Any) -> None:
    log_list.append(item)
    if len(log_list) > LOG_LIMIT:
        del log_list[: len(log_list) - LOG_LIMIT]


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--root", type=Path, help="serve this web root instead of generating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pilots", type=int, default=6)
    parser.add_argument(
        "--lap-interval", type=float, default=2.0, help="seconds per detection; 0 disables"
    )
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to hold each request")
    parser.add_argument(
        "--fpvtrackside-version",
        choices=VERSIONS,
        default="2.70",
        help="answer as this FPVTrackside: 2.70 (event files untyped), 2.71 (typed as JSON), "
        "2.76 (also GET /current)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        root=args.root,
        seed=args.seed,
        lap_interval=args.lap_interval or None,
        pilots=args.pilots,
        version=args.fpvtrackside_version,
    )
    sim.slow = args.slow
    try:
        await sim.start(args.host, args.port)
        print(
            f"FPVTrackside simulator serving {sim.url}/ (web root {sim.root}) event {sim.event_id}",
            flush=True,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
                loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until Ctrl-C or SIGTERM, then clean up."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
