"""The frames that keep the relay's copies live without being asked (feature `push`).

A relay that names `push` in its hello's features takes these; a box sends them only to such a
relay, and a relay sends `watch` only to a box whose hello names `push`. Either end without it
goes on as before: the relay asks (`fetch`) and the box answers. So an old box works with a new
relay, and a new box with an old relay, by pulling.

| type | direction | payload |
|---|---|---|
| `watch` | relay → box | `{paths, intervalMs}`: the paths spectators read lately; the box re-reads them every `intervalMs` and pushes what changed (replaces the last `watch`) |
| `change` | box → relay | `{path, status: 200, headers: {ETag, Content-Type?}, bodyText or bodyB64}`: a watched file's new body, as a `response` would carry it; as text when it is UTF-8 (the link's compression then finds it in the body sent before) |
| `watching` | box → relay | `{paths, intervalMs, race?}`: every path the box watches now (the race running now, and the relay's), and `race`, the path of the race running now's `Race.json` (absent between events); sent when either changes |
| `still` | box → relay | `{}`: every watched path was read again and none changed (at most once an interval) |
| `fpvtrackside-event` | box → relay | `{event}`: an event FPVTrackside's ExtensionMode sent the box, cleaned (wire.fpvtevents) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.fields import MAX_PATH, bad, get, reply_parts, reply_payload
from wire.fpvtevents import Refused, clean

FEATURE_PUSH = "push"
MAX_WATCHED = 48  # paths in one `watch` or `watching`: the race's files and the relay's
MIN_INTERVAL_MS = 50
MAX_INTERVAL_MS = 60_000


def _paths(p: dict[str, Any]) -> tuple[str, ...]:
    paths = get(p, "paths", list, max_len=MAX_WATCHED)
    if not all(isinstance(x, str) and 0 < len(x) <= MAX_PATH for x in paths):
        raise bad(f"paths must be strings of 1 to {MAX_PATH} characters")
    return tuple(dict.fromkeys(paths))


def _interval(p: dict[str, Any]) -> int:
    interval = get(p, "intervalMs", int)
    if not MIN_INTERVAL_MS <= interval <= MAX_INTERVAL_MS:
        raise bad(f"intervalMs must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}")
    return int(interval)


@dataclass(frozen=True, kw_only=True)
class Watch:
    """Relay to box: the paths spectators read lately, to re-read every `interval_ms`."""

    paths: tuple[str, ...]
    interval_ms: int

    def payload(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "intervalMs": self.interval_ms}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Watch:
        return cls(paths=_paths(p), interval_ms=_interval(p))


@dataclass(frozen=True, kw_only=True)
class Watching:
    """Box to relay: every path it watches now, how often it reads them again, and which is
    the race running now (the path of its `Race.json`, one of `paths`)."""

    paths: tuple[str, ...]
    interval_ms: int
    race: str | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"paths": list(self.paths), "intervalMs": self.interval_ms}
        if self.race is not None:
            p["race"] = self.race
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Watching:
        paths = _paths(p)
        race = get(p, "race", str, optional=True, max_len=MAX_PATH)
        if race is not None and race not in paths:
            raise bad("race must be one of the paths watched")
        return cls(paths=paths, interval_ms=_interval(p), race=race)


@dataclass(frozen=True, kw_only=True)
class Change:
    """Box to relay: a watched file's new body, with its ETag, unasked."""

    path: str
    etag: str
    body: bytes
    content_type: str | None = None

    def payload(self) -> dict[str, Any]:
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            return {
                "path": self.path,
                **reply_payload(200, self.etag, self.content_type, self.body),
            }
        # Text as text, not base64: the link's compression (permessage-deflate, whose window
        # holds the body sent before) then finds a race file's new body in its old one, and a
        # lap costs its own few hundred bytes, not the whole file again. Base64 hides that:
        # an insertion shifts every character after it.
        p = reply_payload(200, self.etag, self.content_type, None)
        return {"path": self.path, **p, "bodyText": text}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Change:
        path = get(p, "path", str, max_len=MAX_PATH)
        text = get(p, "bodyText", str, optional=True)
        if text is not None:
            if "bodyB64" in p:
                raise bad("a change has bodyText or bodyB64, not both")
            try:
                encoded = text.encode("utf-8")
            except UnicodeEncodeError:
                raise bad("bodyText is not UTF-8 text") from None
        status, etag, content_type, body = reply_parts(p)
        if text is not None:
            body = encoded
        if status != 200 or etag is None or body is None:
            raise bad("a change is a 200 with its ETag and body")
        return cls(path=path, etag=etag, body=body, content_type=content_type)


@dataclass(frozen=True, kw_only=True)
class Still:
    """Box to relay: every watched path was read again, and none changed."""

    def payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Still:
        return cls()


@dataclass(frozen=True, kw_only=True)
class FpvtEvent:
    """Box to relay: one of FPVTrackside's ExtensionMode events, cleaned (wire.fpvtevents)."""

    event: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"event": self.event}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> FpvtEvent:
        try:
            event = clean(get(p, "event", dict))
        except Refused as exc:
            raise bad(f"event refused: {exc}") from None
        return cls(event=event)


PushMessage = Watch | Watching | Change | Still | FpvtEvent
TYPES: dict[type, str] = {
    Watch: "watch",
    Watching: "watching",
    Change: "change",
    Still: "still",
    FpvtEvent: "fpvtrackside-event",
}
FROM_CLOUD: dict[str, Any] = {"watch": Watch}
FROM_PITS: dict[str, Any] = {
    "watching": Watching,
    "change": Change,
    "still": Still,
    "fpvtrackside-event": FpvtEvent,
}
