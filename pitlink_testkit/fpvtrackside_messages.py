"""What FPVTrackside's ExtensionMode says of a race, built from the race as its files have it.

The payloads of FPVTrackside's ``ExternalData/ExtensionNotifier.cs`` (specified in its
``documentation/POST_Extension_INTERFACE.en.md``), field for field and in its order: camelCase,
nulls written out, times in UTC as ``yyyy-MM-ddTHH:mm:ss.fffZ``, durations in seconds. Every
value comes from the event's records (``Race.json`` and the rest, as written), so what a receiver
reads in the files and what the events say agree. Positions are FPVTrackside's
``Race.GetTrackPosition``, quirks included.

The race's times are the simulated clock's (the simulator's ``Race.json`` is dated in 2025, its
local time taken as UTC); an event's ``ts`` is the moment it was made, by the sender's clock.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pitlink_testkit.fpvtrackside_race import (
    CHANNEL_COLORS,
    NULL_DATE,
    Json,
    LiveEvent,
    parse_date,
)

if TYPE_CHECKING:
    from pitlink_testkit.fpvtrackside_extension import ExtensionSender, ExtensionSettings

_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d{1,7})?)")
# FPVTrackside remembers this many detection ids to send each detection once.
RECENT_DETECTIONS = 1024


def utc_iso(when: dt.datetime) -> str:
    """``yyyy-MM-ddTHH:mm:ss.fffZ`` (.NET's ``fff`` truncates)."""
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"


def unix_iso(seconds: float) -> str:
    """A Unix time as ``utc_iso`` writes it."""
    return utc_iso(dt.datetime.fromtimestamp(seconds, dt.UTC))


def timespan_seconds(text: str) -> float:
    """Seconds in a .NET TimeSpan as Newtonsoft writes one: ``[d.]hh:mm:ss[.fffffff]``."""
    match = _TIMESPAN.fullmatch(text)
    if match is None:
        raise ValueError(f"not a TimeSpan: {text!r}")
    days, hours, minutes, seconds = match.groups()
    return round(int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds), 7)


def _rgb(color: str) -> tuple[int, int, int]:
    value = int(color.lstrip("#"), 16)
    return value >> 16 & 255, value >> 8 & 255, value & 255


def _sector(detection: Json) -> int:
    """FPVTrackside's RaceSector: lap x 100 + timing system index (computed, as it does)."""
    return int(detection["LapNumber"]) * 100 + int(detection["TimingSystemIndex"])


def _started(race: Json) -> dt.datetime | None:
    return None if race["Start"] == NULL_DATE else parse_date(race["Start"])


def track_position(race: Json, pilot: str, *, race_type: str = "Race") -> int:
    """Where ``pilot`` is now, as FPVTrackside's ``Race.GetTrackPosition`` says.

    Valid detections (in a Race, none past the target lap) ordered by race sector descending,
    then time ascending; the pilot is behind every other pilot met before its own furthest
    detection. Its quirks: with no detection at all, everyone is last; a pilot not detected yet
    is behind every pilot detected; the same time as the detection just before is a dead heat,
    one place up.
    """
    if not race["Detections"]:
        return len(race["PilotChannels"])
    last_valid = race["TargetLaps"] * 100 if race_type == "Race" else None
    ordered = sorted(
        (
            d
            for d in race["Detections"]
            if d["Valid"] and (last_valid is None or _sector(d) <= last_valid)
        ),
        key=lambda d: (-_sector(d), parse_date(d["Time"])),
    )
    ahead: list[str] = []
    previous = mine = None
    for detection in ordered:
        if detection["Pilot"] == pilot:
            mine = detection
            break
        if detection["Pilot"] not in ahead:
            ahead.append(detection["Pilot"])
        previous = detection
    position = len(ahead) + 1
    if mine is not None and position > 1:
        assert previous is not None
        if parse_date(mine["Time"]) == parse_date(previous["Time"]):
            position -= 1
    return position


def _latest(detections: list[Json], keep: Callable[[Json], bool]) -> Json | None:
    """The latest by time of those kept (the first written among equals, as LINQ's is)."""
    kept = [d for d in detections if keep(d)]
    return max(kept, key=lambda d: parse_date(d["Time"]), default=None)


def _last_valid(race: Json, pilot: str) -> Json | None:
    return _latest(race["Detections"], lambda d: bool(d["Valid"]) and d["Pilot"] == pilot)


class Messages:
    """The fields of each ExtensionMode event about ``live``'s event and races."""

    def __init__(self, live: LiveEvent, settings: ExtensionSettings) -> None:
        self.live = live
        self.settings = settings
        self._channels = {c["ID"]: c for c in live.channels}
        self._pilots = {p["ID"]: p for p in live.pilots}

    # -- shared parts ------------------------------------------------------------------------

    def channel(self, channel_id: str) -> Json:
        """ChannelInfo: the channel and the colour the event gives it."""
        channel = self._channels[channel_id]
        ours = self.live.event_record()["Channels"]
        colors = self.live.event_record()["ChannelColors"] or list(CHANNEL_COLORS)
        index = ours.index(channel_id) if channel_id in ours else 0
        red, green, blue = _rgb(colors[index % len(colors)])
        return {
            "band": channel["Band"],
            "number": channel["Number"],
            "frequency": channel["Frequency"],
            "colorR": red,
            "colorG": green,
            "colorB": blue,
        }

    def pilot(self, pilot_id: str, channel_id: str | None) -> Json:
        """PilotInfoExt, ``photoPath`` as FPVTrackside keeps it (relative to its folder)."""
        pilot = self._pilots[pilot_id]
        return {
            "name": pilot["Name"],
            "phonetic": pilot["Phonetic"],
            "discordID": pilot["DiscordID"],
            "photoPath": pilot["PhotoPath"],
            "videoFlipped": bool(pilot.get("VideoFlipped", False)),
            "videoMirrored": bool(pilot.get("VideoMirrored", False)),
            "channel": None if channel_id is None else self.channel(channel_id),
        }

    def pilots(self, race: Json) -> list[Json]:
        return [self.pilot(pc["Pilot"], pc["Channel"]) for pc in race["PilotChannels"]]

    def _round(self, race: Json) -> Json:
        return next(r for r in self.live.rounds if r["ID"] == race["Round"])

    def lifecycle(self, race: Json) -> Json:
        """round, race and raceType, which every race event starts with."""
        round_ = self._round(race)
        return {
            "round": round_["RoundNumber"],
            "race": race["RaceNumber"],
            "raceType": round_["EventType"],
        }

    # -- the events --------------------------------------------------------------------------

    def hello(self) -> Json:
        """Hello's fields: the program, its folders (absolute, in its platform's form), its
        timing system and the event's settings."""
        s = self.settings
        sep = "\\" if s.platform == "Windows" else "/"
        home = (
            s.working_directory if s.working_directory.endswith(sep) else s.working_directory + sep
        )
        event = self.live.event_record()
        return {
            "fpvtVersion": s.fpvt_version,
            "platform": s.platform,
            "paths": {
                "workingDirectory": home,
                "baseDirectory": home,
                "eventsDirectory": f"{home}events{sep}",
                "profileDirectory": f"{home}data{sep}default{sep}",
                "pilotsDirectory": f"{home}pilots{sep}",
            },
            "profile": {"name": "default"},
            "decimalPlaces": 2,
            "timingSystem": {
                "count": 1,
                "primeCount": 1,
                "splitCount": 0,
                "splitsPerLap": 1,
                "allDummy": False,
                "systems": [{"index": 0, "type": "LapRFTimingSystem", "role": "Prime"}],
            },
            "eventSettings": {
                "raceStartIgnoreDetections": timespan_seconds(event["RaceStartIgnoreDetections"]),
                "minLapTime": timespan_seconds(event["MinLapTime"]),
                "primaryTimingSystemLocation": event["PrimaryTimingSystemLocation"],
            },
            "channelSettings": {"channels": [self.channel(c) for c in event["Channels"]]},
        }

    def race_loaded(self, race: Json) -> Json:
        return {
            **self.lifecycle(race),
            "scheduledStart": None,  # the simulator's races have no scheduled time
            "targetLaps": race["TargetLaps"],
            "raceLength": timespan_seconds(self.live.event_record()["RaceLength"]),
            "stage": None,
            "sectors": [],
            "pilots": self.pilots(race),
        }

    def next_race(self, race: Json | None) -> Json:
        """NextRace: the race after, or nulls and no pilots when the schedule has none yet."""
        if race is None:
            return {
                "round": None,
                "race": None,
                "raceType": None,
                "scheduledStart": None,
                "pilots": [],
            }
        return {**self.lifecycle(race), "scheduledStart": None, "pilots": self.pilots(race)}

    def announcement(self, race: Json, now: float) -> Json:
        """RaceStartAnnouncement: "arm your quads", MaxStartDelay before the start is chosen."""
        delay = timespan_seconds(self.live.event_record()["MaxStartDelay"])
        return {
            **self.lifecycle(race),
            "delaySeconds": delay,
            "expectedStart": unix_iso(now + delay),
        }

    def pre_start(self, race: Json) -> Json:
        return {**self.lifecycle(race), "scheduledStart": utc_iso(parse_date(race["Start"]))}

    def start(self, race: Json) -> Json:
        return {**self.lifecycle(race), "actualStart": utc_iso(parse_date(race["Start"]))}

    def detection(self, race: Json, detection: Json) -> Json:
        """DetectionExt: the detection, its lap and race times, and every pilot's position."""
        pilot, when = detection["Pilot"], parse_date(detection["Time"])
        start = _started(race)
        others = [d for d in race["Detections"] if d is not detection and d["Pilot"] == pilot]
        earlier = [d for d in others if d["Valid"] and parse_date(d["Time"]) < when]
        previous = _latest(earlier, lambda d: True)
        lap_start = _latest(earlier, lambda d: d["IsLapEnd"])
        if start is None:
            lap_so_far = 0.0
        else:
            since = start if lap_start is None else parse_date(lap_start["Time"])
            lap_so_far = (when - since).total_seconds()
        sectors = len(self.live.event_record()["Sectors"])
        index = detection["TimingSystemIndex"]
        return {
            "detectionId": detection["ID"],
            "round": self.lifecycle(race)["round"],
            "race": race["RaceNumber"],
            "pilotName": self._pilots[pilot]["Name"],
            "channel": self.channel(detection["Channel"]),
            "timingSystemIndex": index,
            "isLapEnd": detection["IsLapEnd"],
            "lapNumber": detection["LapNumber"],
            "sectorIndex": index % sectors + 1 if sectors else max(1, index + 1),
            "raceSector": _sector(detection),
            "raceTime": 0.0 if start is None else (when - start).total_seconds(),
            "sectorTime": None
            if previous is None
            else (when - parse_date(previous["Time"])).total_seconds(),
            "lapTimeSoFar": lap_so_far,
            "position": track_position(race, pilot),
            "valid": detection["Valid"],
            "positionSnapshot": self.positions(race),
            "raceFinishedForPilot": len(self._laps(race, pilot)) >= race["TargetLaps"],
        }

    def positions(self, race: Json) -> list[Json]:
        """positionSnapshot: every pilot of the race, in position order."""
        start = _started(race)
        rows = []
        for pc in race["PilotChannels"]:
            last = _last_valid(race, pc["Pilot"])
            seconds = 0.0
            if last is not None and start is not None:
                seconds = (parse_date(last["Time"]) - start).total_seconds()
            rows.append(
                {
                    "pilotName": self._pilots[pc["Pilot"]]["Name"],
                    "position": track_position(race, pc["Pilot"]),
                    "raceSector": 0 if last is None else _sector(last),
                    "lastDetectionTime": seconds,
                }
            )
        return sorted(rows, key=lambda row: row["position"])  # stable, as LINQ's OrderBy

    def _laps(self, race: Json, pilot: str) -> list[Json]:
        """The pilot's valid laps, the holeshot left out, in lap order."""
        valid = {d["ID"] for d in race["Detections"] if d["Pilot"] == pilot and d["Valid"]}
        laps = [lap for lap in race["Laps"] if lap["Detection"] in valid and lap["LapNumber"] >= 1]
        return sorted(laps, key=lambda lap: lap["LapNumber"])

    def result(self, race: Json) -> Json:
        """RaceResult: each pilot's place, laps, time, best lap and best consecutive laps."""
        start = _started(race)
        consecutive = min(3, race["TargetLaps"]) if race["TargetLaps"] > 0 else 3
        channel_of = {pc["Pilot"]: pc["Channel"] for pc in race["PilotChannels"]}
        results = [r for r in self.live.results if r["Race"] == race["ID"]]
        entries = []
        for result in sorted(results, key=lambda r: r["Position"]):
            pilot = result["Pilot"]
            times = [lap["LengthSeconds"] for lap in self._laps(race, pilot)]
            runs = [
                round(sum(times[i : i + consecutive]), 7)
                for i in range(len(times) - consecutive + 1)
            ]
            last = _last_valid(race, pilot)
            total = 0.0
            if last is not None and start is not None:
                total = (parse_date(last["Time"]) - start).total_seconds()
            entries.append(
                {
                    "pilot": self.pilot(pilot, channel_of.get(pilot)),
                    "position": result["Position"],
                    "totalLaps": len(times),
                    "totalTime": total,
                    "bestLap": min(times) if times else None,
                    "bestConsecutive": {"laps": consecutive, "time": min(runs)} if runs else None,
                    "dnf": result["DNF"],
                }
            )
        return {**self.lifecycle(race), "pilots": entries}


class Notifier:
    """FPVTrackside's ExtensionNotifier: hears of the race's moments (a ``RaceListener``), builds
    each event then and there, and hands it to the sender; each detection once.

    A race file to be written after its detection's event (the simulator's
    ``event_before_file``) is written ``file_lag`` seconds after the event has gone, or at once
    by ``flush``.
    """

    def __init__(self, live: LiveEvent, settings: ExtensionSettings, *, file_lag: float = 0.0):
        self.messages = Messages(live, settings)
        self.live = live
        self.file_lag = file_lag
        self.sender: ExtensionSender | None = None  # set before the first moment is told
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._writes: dict[asyncio.TimerHandle, Callable[[], None]] = {}

    def flush(self) -> None:
        """Write now every race file still waiting for its lag."""
        for handle, write in list(self._writes.items()):
            handle.cancel()
            del self._writes[handle]
            write()

    def _after_lag(self, write: Callable[[], None]) -> Callable[[], None]:
        """A callback that writes ``file_lag`` seconds after it is called."""

        def gone() -> None:
            handle: asyncio.TimerHandle

            def run() -> None:
                self._writes.pop(handle, None)
                write()

            handle = asyncio.get_running_loop().call_later(self.file_lag, run)
            self._writes[handle] = write

        return gone

    def hello(self) -> Json:
        return self.messages.hello()

    def _send(
        self,
        kind: str,
        fields: Json,
        at: float | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        if self.sender is not None:
            self.sender.send(kind, fields, at=at, then=then)
        elif then is not None:
            then()

    def race_changed(self, race: Json) -> None:
        self._send("RaceLoaded", self.messages.race_loaded(race))
        self._send("NextRace", self.messages.next_race(self.live.next_race))

    def race_scheduled(self, race: Json) -> None:
        # FPVTrackside announces ("arm your quads") before it picks the start time.
        if self.sender is None:
            return
        now = self.sender.clock()
        self._send("RaceStartAnnouncement", self.messages.announcement(race, now), at=now)
        self._send("RacePreStart", self.messages.pre_start(race))

    def race_started(self, race: Json) -> None:
        self._send("RaceStart", self.messages.start(race))

    def detected(self, race: Json, detection: Json, then: Callable[[], None] | None = None) -> None:
        if detection["ID"] in self._recent:
            if then is not None:
                then()
            return
        self._recent[detection["ID"]] = None
        while len(self._recent) > RECENT_DETECTIONS:
            self._recent.popitem(last=False)
        gone = None if then is None else self._after_lag(then)
        self._send("DetectionExt", self.messages.detection(race, detection), then=gone)

    def results_changed(self, race: Json) -> None:
        self._send("RaceResult", self.messages.result(race))

    def race_ended(self, race: Json) -> None:
        self._send("RaceEnd", self.messages.lifecycle(race))
