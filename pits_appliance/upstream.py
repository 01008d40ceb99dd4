"""Which FPVTrackside the agent talks to, as far as its answers show.

FPVTrackside's web server says no version of its own: no header, page or file names one. What
changed between its versions does show, in its public sources (`Webb/EventWebServer.cs`):

- 2.71 (December 2025) began to send `Content-Type: application/json` with the event's JSON
  files; before, they came with no Content-Type at all;
- 2.76 (June 2026) added `GET /current`, the race the operator has selected, as
  `{"CurrentRace": <race id or null>}`; before, `/current` was an unknown path and got the page.

Its `Server` header names the HTTP stack it runs on: `Microsoft-HTTPAPI/2.0` is Windows'
http.sys, `Microsoft-NetCore/2.0` .NET's own listener (macOS, Linux).

So the agent looks now and then (when FPVTrackside first answers, when it comes back after a
silence, when the open event or the Server header changes, and every `reprobe` seconds) and
says what it saw: in its hello, in an `fpvtrackside` frame to a relay that takes one, and on
the status page. The relay ties a schema mismatch to it (cloud.drift). Everything here came
from the venue LAN: the Server header is cut to printable ASCII and a bound before anyone
sees it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wire import ProtocolError
from wire import messages as m
from wire.errors import DamagedError
from wire.untrusted import load_json

if TYPE_CHECKING:
    from pits_appliance.origin import Origin, OriginReply

log = logging.getLogger("pitlink.pits.upstream")

CURRENT_PATH = "/current"
REPROBE_S = 600.0
MAX_CURRENT_BYTES = 4096  # {"CurrentRace": "<uuid>"} is 53 bytes

# What the answers showed, by name (the traits in hello), and what each tells of the version.
TRAIT_CURRENT = "current"  # answers GET /current with {"CurrentRace": ...}
TRAIT_TYPED_JSON = "json-typed"  # event files carry Content-Type: application/json
TRAIT_UNTYPED_JSON = "json-untyped"  # event files carry no Content-Type
SINCE_CURRENT = "2.76 or later"
SINCE_TYPED_JSON = "2.71 to 2.75"
BEFORE_TYPED_JSON = "before 2.71"
BEFORE_CURRENT = "before 2.76"  # no /current, and no event open to tell more

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
PLATFORMS = {"Microsoft-HTTPAPI/2.0": "Windows", "Microsoft-NetCore/2.0": "macOS or Linux"}


def server_header(value: str | None) -> str | None:
    """The Server header as it may be shown: printable ASCII, at most m.MAX_SERVER characters."""
    if value is None:
        return None
    clean = _UNPRINTABLE.sub("", value).strip()[: m.MAX_SERVER]
    return clean or None


def answers_current(status: int, body: bytes) -> bool:
    """Is this FPVTrackside's own answer to GET /current (and not its page)?"""
    if status != 200:
        return False
    try:
        doc = load_json(body, limit=MAX_CURRENT_BYTES)
    except DamagedError:  # its page, or whatever else answers there
        return False
    return (
        isinstance(doc, dict)
        and "CurrentRace" in doc
        and (doc["CurrentRace"] is None or isinstance(doc["CurrentRace"], str))
    )


def json_typed(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


def describe(server: str | None, current: bool, event_file: str | None) -> m.FpvTrackside:
    """What to say of FPVTrackside from what it answered.

    `event_file` is the Content-Type of an event JSON file ("" for none), or None when no event
    file could be read (no event open).
    """
    traits: list[str] = []
    if current:
        traits.append(TRAIT_CURRENT)
    if event_file is not None:
        traits.append(TRAIT_TYPED_JSON if json_typed(event_file) else TRAIT_UNTYPED_JSON)
    if current:
        version = SINCE_CURRENT
    elif event_file is None:
        version = BEFORE_CURRENT
    else:
        version = SINCE_TYPED_JSON if json_typed(event_file) else BEFORE_TYPED_JSON
    return m.FpvTrackside(version=version, server=server_header(server), traits=tuple(traits))


def in_words(seen: m.FpvTrackside | None) -> str | None:
    """For people: "FPVTrackside 2.76 or later, on Windows"."""
    if seen is None or seen.version is None:
        return None
    platform = PLATFORMS.get(seen.server or "")
    return f"FPVTrackside {seen.version}" + (f", on {platform}" if platform else "")


@dataclass
class _Last:
    at: float
    event: str | None
    server: str | None


class UpstreamWatch:
    """Decides when to look at FPVTrackside again, looks, and remembers what it saw."""

    def __init__(self, origin: Origin, *, timeout: float, reprobe: float = REPROBE_S):
        self.origin = origin
        self.timeout = timeout
        self.reprobe = reprobe
        self.seen: m.FpvTrackside | None = None
        self._last: _Last | None = None
        self._absent = False  # FPVTrackside stopped answering since the last look

    def lost(self) -> None:
        """FPVTrackside did not answer: it may come back as another version."""
        self._absent = True

    def due(self, now: float, *, event: str | None, server: str | None) -> bool:
        last = self._last
        return (
            last is None
            or self._absent
            or event != last.event
            or server_header(server) != last.server
            or now - last.at >= self.reprobe
        )

    async def look(
        self,
        now: float,
        *,
        event: str | None,
        server: str | None,
        event_json: OriginReply | None = None,
    ) -> bool:
        """Ask FPVTrackside what tells its version; True when what it says changed.

        `event_json` is the open event's Event.json when the caller has just read it (it is
        not asked for twice). A request that fails leaves what was seen before, and the next
        check looks again.
        """
        try:
            reply = await self.origin.get(CURRENT_PATH, self.timeout)
            current = answers_current(reply.status, reply.body)
            event_file: str | None = None
            if event is not None:
                got = (
                    event_json
                    if event_json is not None
                    else await self.origin.get(f"/events/{event}/Event.json", self.timeout)
                )
                if got.status == 200 and got.body:
                    event_file = got.content_type or ""
        except ProtocolError as exc:
            log.debug("could not tell FPVTrackside's version", extra={"error": exc.message})
            self._absent = True  # look again at the next check
            return False
        self._absent = False
        self._last = _Last(now, event, server_header(server))
        seen = describe(server, current, event_file)
        if seen == self.seen:
            return False
        before, self.seen = self.seen, seen
        log.info(
            "FPVTrackside seen" if before is None else "FPVTrackside changed",
            extra={
                "fpvtrackside_version": seen.version,
                "server": seen.server,
                "traits": list(seen.traits),
                "before": None if before is None else before.version,
            },
        )
        return True
