"""The box as an FPVTrackside Extension: the race events ExtensionMode PUTs to it.

FPVTrackside (since May 2026), with "Notifier enabled / mode" set to `ExtensionMode`, sends one
`PUT <NotificationURL>` per race event (`Hello`, `RaceLoaded`, `RaceStart`, `DetectionExt`,
`RaceResult`, `RaceEnd`, ...; its `documentation/POST_Extension_INTERFACE.en.md`): one JSON
object each, in order, one at a time, with a `seq` counting from 1, a 1,500 ms timeout and no
retry. The receiver must answer 200 before it does anything with the event, or every event
behind it waits. So the status port's handler (pits_appliance.status) asks `admit` (is it
FPVTrackside's own address, is the body within its bound, is it within the rate?), reads the
body, asks `take` (is it one JSON object?), answers, and only then is the event handled, on
the next turn of the loop:

- cleaned of what must not leave the pits (the laptop's paths, pilots' photos; checked and
  bounded: wire.fpvtevents) and forwarded to the relay as an `fpvtrackside-event` while it
  takes pushes (dropped, and counted, otherwise);
- any event makes the watcher re-read the race now's file at once; a Hello, a race loaded,
  started, ended or cancelled, FPVTrackside counting again (`seq` going backwards: it
  restarted) or events lost (a gap in `seq`) make it look for the race now at once too;
- `Hello` says FPVTrackside's version and platform (shown on the status page; its paths never
  are).

Refusals, each counted and logged at most once a minute: 403 from any address but
FPVTrackside's (the host of the FPVTRACKSIDE setting, looked up again now and then when it is a
name), 413 past `max_body` bytes (wire.fpvtevents.MAX_EVENT_BYTES), 429 past `rate` events a
second (`burst` at once), 400 for a body that is no JSON object; any other method is 405.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pits_appliance.metrics import AgentMetrics
from pits_appliance.state import AgentState
from wire.budget import Throttle, TokenBucket
from wire.errors import DamagedError
from wire.fpvtevents import MAX_EVENT_BYTES, MAX_SEQ, Refused, clean
from wire.push import FpvtEvent, PushMessage
from wire.untrusted import load_json

log = logging.getLogger("pitlink.pits.extension")

PATH = "/fpvtrackside/events"
RATE = 50.0  # events a second FPVTrackside may send
BURST = 200.0  # at once (its own queue holds 200)
REFUSED_LOG_S = 60.0
RESOLVE_TIMEOUT_S = 5.0
LOOK_EVENTS = frozenset({"RaceLoaded", "RaceStart", "RaceEnd", "RaceCancelled"})
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def address(text: str) -> Address | None:
    """An address as compared here: IPv4-mapped IPv6 as the IPv4 it maps, no zone."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def printable(value: Any, limit: int = 64) -> str | None:
    """Text from FPVTrackside as it may be shown: printable ASCII, bounded."""
    if not isinstance(value, str):
        return None
    return _UNPRINTABLE.sub("", value).strip()[:limit] or None


class Sequence:
    """FPVTrackside's `seq`: when it started counting again, and which events were lost.

    `seq` counts every event FPVTrackside builds, from 1 in each session (a session begins when
    an event is opened, with a Hello), Hello attempts included. Events come in order, one at a
    time; a Hello goes outside that queue, so it may overtake an event or two. So: a Hello
    begins a session (counted as a restart when its `seq` is not above everything seen); an
    event at or below the last event's `seq` is FPVTrackside restarted without a Hello reaching
    the box; a gap between two events, less the Hellos seen in it, is events lost.
    """

    MAX_HELLOS = 64

    def __init__(self) -> None:
        self.last_event: int | None = None
        self._hellos: list[int] = []  # this session's Hello seqs above the last event

    def see(self, hello: bool, seq: int) -> tuple[bool, int]:
        """(FPVTrackside started counting again, events lost just before this one)."""
        if hello:
            top = max([self.last_event or 0, *self._hellos])
            restarted = top > 0 and seq <= top
            self.last_event = None
            self._hellos = [*self._hellos[-self.MAX_HELLOS + 1 :], seq] if not restarted else [seq]
            return restarted, 0
        if self.last_event is not None and seq <= self.last_event:
            self.last_event, self._hellos = seq, []
            return True, 0
        below = [h for h in self._hellos if h < seq]
        base = self.last_event if self.last_event is not None else max(below, default=None)
        lost = 0
        if base is not None:
            lost = max(0, seq - base - 1 - sum(1 for h in below if h > base))
        self.last_event = seq
        self._hellos = [h for h in self._hellos if h > seq]
        return False, lost


class Forwarder:
    """FPVTrackside's events on their way to the relay: sent at once while it takes pushes,
    dropped (and counted) otherwise: they are news of a moment, and the files they are about
    are pushed anew when pushing begins again."""

    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics
        self.send: Callable[[PushMessage], bool] | None = None

    def start(self, send: Callable[[PushMessage], bool]) -> None:
        self.send = send

    def stop(self) -> None:
        self.send = None

    def forward(self, event: dict[str, Any]) -> None:
        if self.send is not None and self.send(FpvtEvent(event=event)):
            self.metrics.fpvt_forwarded.inc()
        else:  # an older relay, the link down, or answering paused at the pits
            self.metrics.fpvt_dropped.labels("not_pushing").inc()


class Extension:
    """Takes ExtensionMode's events: who may send, how much, and what each leads to."""

    def __init__(
        self,
        *,
        fpvtrackside_url: str,
        state: AgentState,
        metrics: AgentMetrics,
        forwarder: Forwarder,
        poke_race: Callable[[], None],
        look_now: Callable[[], None],
        rate: float = RATE,
        burst: float = BURST,
        max_body: int = MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.host = (urlsplit(fpvtrackside_url).hostname or "").rstrip(".")
        literal = address(self.host)
        self.addresses: frozenset[Address] = frozenset({literal} if literal else ())
        self.resolve = literal is None  # a name: looked up now and then (refresh_addresses)
        self.state = state
        self.metrics = metrics
        self.forwarder = forwarder
        self.poke_race = poke_race
        self.look_now = look_now
        self.max_body = max_body
        self.rate = rate
        self.clock = clock
        self.bucket = TokenBucket(rate, burst, clock())
        self.sequence = Sequence()
        self._log = Throttle(REFUSED_LOG_S)

    async def refresh_addresses(self) -> None:
        """Look FPVTrackside's host name up again (an address given as such stays)."""
        if not self.resolve or not self.host:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                found = await loop.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            log.debug("FPVTrackside's name did not resolve", extra={"error": str(exc)[:200]})
            return
        resolved = frozenset(a for a in (address(str(f[4][0])) for f in found) if a is not None)
        if resolved and resolved != self.addresses:
            log.info("FPVTrackside's addresses", extra={"addresses": sorted(map(str, resolved))})
            self.addresses = resolved

    def admit(self, remote_ip: str | None, length: int | None) -> tuple[int, str]:
        """Whether a PUT may send its body, from its address and its Content-Length (None:
        not said): (200, "") or the refusal's status and words."""
        now = self.clock()
        ip = address(remote_ip or "")
        if ip is None or ip not in self.addresses:
            self._refuse("address", now, remote=(remote_ip or "")[:64])
            return 403, (
                "only FPVTrackside's own computer (the host of FPVTRACKSIDE in pitlink.conf) "
                "may send it events"
            )
        if length is not None and length > self.max_body:
            return self.too_large(now)
        if self.bucket.take(now) > 0:
            self._refuse("rate", now)
            return 429, f"more than {self.rate:g} events a second"
        return 200, ""

    def too_large(self, now: float | None = None) -> tuple[int, str]:
        self._refuse("too_large", self.clock() if now is None else now)
        return 413, f"an event is at most {self.max_body} bytes"

    def take(self, body: bytes) -> tuple[int, str]:
        """An admitted PUT's whole body: (400, why) when it is no JSON object; otherwise
        (200, "") and the event is handled on the loop's next turn, after the answer."""
        if len(body) > self.max_body:
            return self.too_large()
        try:
            doc = load_json(body, limit=self.max_body)
        except DamagedError as exc:
            self._refuse("not_json", self.clock())
            return 400, f"an event is one JSON object: {exc}"
        if not isinstance(doc, dict):
            self._refuse("not_json", self.clock())
            return 400, "an event is one JSON object"
        self.metrics.fpvt_received.inc()
        self.state.fpvt_events_last = time.time()
        asyncio.get_running_loop().call_soon(self.handle, doc)
        return 200, ""

    def handle(self, doc: dict[str, Any]) -> None:
        """Count, check and forward one event, and have the race read again. Never raises."""
        now = self.clock()
        kind, seq = doc.get("type"), doc.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            self._refuse("not_an_event", now, why="no seq")
            return
        hello = kind == "Hello"
        restarted, lost = self._count(hello, seq)
        if hello or restarted or lost or kind in LOOK_EVENTS:
            self.look_now()  # which race runs may have changed, or a change was missed
        self.poke_race()
        try:
            event = clean(doc)
        except Refused as exc:
            self._refuse("not_an_event", now, why=str(exc))
            return
        if hello:
            self._hello(event)
        self.forwarder.forward(event)

    def _count(self, hello: bool, seq: int) -> tuple[bool, int]:
        before = self.sequence.last_event
        restarted, lost = self.sequence.see(hello, seq)
        if restarted:
            self.metrics.fpvt_restarts.inc()
            log.info(
                "FPVTrackside started counting its events again (it restarted, or opened an event)",
                extra={"seq": seq, "last_seq": before},
            )
        if lost:
            self.metrics.fpvt_lost.inc(lost)
            held = self._log.allow("lost", self.clock())
            if held is not None:
                log.warning(
                    "FPVTrackside's events were lost on the way: the race is read again",
                    extra={"lost": lost, "seq": seq, "held_back": held},
                )
        return restarted, lost

    def _hello(self, event: dict[str, Any]) -> None:
        version, platform = printable(event.get("fpvtVersion")), printable(event.get("platform"))
        said = " on ".join(
            x for x in (f"FPVTrackside {version}" if version else None, platform) if x
        )
        self.state.fpvt_events_from = said or None
        log.info("FPVTrackside says hello", extra={"fpvt_version": version, "platform": platform})

    def _refuse(self, reason: str, now: float, **extra: Any) -> None:
        self.metrics.fpvt_refused.labels(reason).inc()
        held = self._log.allow(reason, now)
        if held is not None:
            log.warning(
                "refused an event sent as FPVTrackside's",
                extra={"reason": reason, "held_back": held, **extra},
            )
