"""FPVTrackside's ExtensionMode events, as they may leave the pits: known, checked, bounded,
and without what belongs to the pits laptop alone.

FPVTrackside (since May 2026) PUTs one JSON object per race event to an Extension: `Hello`,
`RaceLoaded`, `RaceStart`, `DetectionExt` with every pilot's position, `RaceResult`, `RaceEnd`
and more (its `documentation/POST_Extension_INTERFACE.en.md`). The box forwards them to the
relay, which passes them to spectators' feeds. On the way:

- only the event types that specification names go on; an unknown type is dropped (the
  specification asks a receiver to ignore those, and we cannot say what they carry);
- each type must carry its fields with their types (a `DetectionExt` without a `pilotName`
  string is no `DetectionExt`);
- file system paths stay at the pits: `Hello`'s `paths` (the laptop's folders) and every
  pilot's `photoPath` are removed, wherever they are nested;
- everything is bounded: strings, lists, depth and the whole event.

Pure: both ends call `clean`, the box before it sends and the relay on what it receives (a box
is not trusted to have done it).
"""

from __future__ import annotations

import math
from typing import Any

import ujson

# Fields that name places on the FPVTrackside machine: never sent on.
PRIVATE_KEYS = frozenset({"paths", "photoPath"})
MAX_EVENT_BYTES = 64 * 1024
MAX_DEPTH = 8
MAX_STRING = 256
MAX_LIST = 256
MAX_KEYS = 64
MAX_KEY = 64
MAX_SEQ = 2**63 - 1

_NUMBER = (int, float)
_INT = (int,)
_STR = (str,)
_BOOL = (bool,)
_LIST = (list,)
_DICT = (dict,)
_OPTIONAL_INT = (int, type(None))
_LIFECYCLE: dict[str, tuple[type, ...]] = {"round": _INT, "race": _INT, "raceType": _STR}

# What each event type must carry beyond `type`, `ts` and `seq` (the specification's §3, §7).
REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "Hello": {"fpvtVersion": _STR, "platform": _STR},
    "RaceLoaded": {**_LIFECYCLE, "pilots": _LIST},
    "NextRace": {"round": _OPTIONAL_INT, "race": _OPTIONAL_INT, "pilots": _LIST},
    "RacePreStart": _LIFECYCLE,
    "RaceStart": _LIFECYCLE,
    "RaceTimesUp": _LIFECYCLE,
    "RaceEnd": _LIFECYCLE,
    "RaceCancelled": _LIFECYCLE,
    "DetectionExt": {
        "detectionId": _STR,
        "round": _INT,
        "race": _INT,
        "pilotName": _STR,
        "lapNumber": _INT,
        "isLapEnd": _BOOL,
        "raceTime": _NUMBER,
        "position": _INT,
        "valid": _BOOL,
        "positionSnapshot": _LIST,
    },
    "RaceResult": {**_LIFECYCLE, "pilots": _LIST},
    "StageRanking": {"ranking": _LIST},
    "PilotCrashedOut": {"pilot": _DICT, "manuallySet": _BOOL},
    "PilotRaceState": {**_LIFECYCLE, "pilots": _LIST},
    "PilotStaggeredStart": {"round": _INT, "race": _INT, "pilot": _DICT, "orderIndex": _INT},
    "RaceStartAnnouncement": {**_LIFECYCLE, "delaySeconds": _NUMBER},
}
EVENT_TYPES = frozenset(REQUIRED)


class Refused(ValueError):
    """Why an event may not go on (for a count and a debug line, never shown to anyone)."""


def _has(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON's true is no number
    return isinstance(value, kinds)


def _copy(value: Any, depth: int) -> Any:
    """A bounded copy without the private keys; Refused past a bound."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise Refused(f"nested deeper than {MAX_DEPTH}")
        if len(value) > MAX_KEYS:
            raise Refused(f"an object of more than {MAX_KEYS} fields")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > MAX_KEY:
                raise Refused("a field name that is not a short string")
            if key not in PRIVATE_KEYS:
                out[key] = _copy(item, depth + 1)
        return out
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise Refused(f"nested deeper than {MAX_DEPTH}")
        if len(value) > MAX_LIST:
            raise Refused(f"a list of more than {MAX_LIST} entries")
        return [_copy(item, depth + 1) for item in value]
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise Refused(f"a string of more than {MAX_STRING} characters")
        return value
    if value is None or isinstance(value, bool | int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused("a number JSON cannot carry")
        return value
    raise Refused("a value that is not JSON")


def clean(event: Any) -> dict[str, Any]:
    """The event as it may leave the pits, or Refused saying why it may not."""
    if not isinstance(event, dict):
        raise Refused("not a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise Refused("not an event type FPVTrackside's specification names")
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise Refused("no seq, or one out of range")
    if not _has(event.get("ts"), _STR):
        raise Refused("no ts")
    for name, kinds in REQUIRED[kind].items():
        if not _has(event.get(name), kinds):
            raise Refused(f"{kind} without its {name}")
    out: dict[str, Any] = _copy(event, 0)
    if len(ujson.dumps(out, ensure_ascii=False)) > MAX_EVENT_BYTES:
        raise Refused(f"over {MAX_EVENT_BYTES} bytes")
    return out
