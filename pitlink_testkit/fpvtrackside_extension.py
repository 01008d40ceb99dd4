"""FPVTrackside's ExtensionMode sender: one PUT per race event to the Extension's URL.

What FPVTrackside's ``ExternalData/ExtensionNotifier.cs`` does on the wire, quirks included:

- ``PUT <NotificationURL>``, ``Content-Type: application/json; charset=utf-8``, one compact JSON
  object; besides those only ``Host`` and ``Content-Length`` (.NET's HttpClient sends no other);
- HTTP/1.1 connections kept between requests (an idle one recycled after 5 minutes, none used
  past 30; one the receiver closed while idle is replaced and the request sent on a new one, as
  .NET does); redirects are not followed (a 3xx is just not a 2xx);
- each request gives up after 1.5 s;
- events go one at a time, in order, through one queue of 200 (the one in flight counts); when
  it is full a NEW event is dropped; a failed event is never sent again;
- ``seq`` counts every event built, from 1, each Hello attempt included, sent or not;
- Hello at once and every 2 s until the first 2xx, then never again in that session; outside
  the queue, so it can overtake queued events and be in flight beside one.

Test switches: ``drop_next`` withholds events (their ``seq`` used, never sent), and the counts
say what became of every event.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

from pitlink_testkit.fpvtrackside_http import Connections, Failed

log = logging.getLogger("pitlink.sim.fpvtrackside.extension")

Json = dict[str, Any]
OUTCOMES_KEPT = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtensionSettings:
    """How the simulated FPVTrackside sends (its own constants by default) and what it says of
    itself in Hello: its version, platform, and the folder it keeps its data in."""

    timeout: float = 1.5
    hello_interval: float = 2.0
    capacity: int = 200
    idle_timeout: float = 300.0
    lifetime: float = 1800.0
    fpvt_version: str = "2.77.4.891"
    platform: str = "Windows"
    working_directory: str = "C:\\Users\\Race Director\\FPVTrackside\\"

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.hello_interval <= 0 or self.capacity < 1:
            raise ValueError("timeout and hello_interval must be positive, capacity at least 1")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one event: ``acknowledged`` (a 2xx), ``failed`` (no 2xx: ``detail`` says
    why), ``dropped`` (never sent: the queue was full, or FPVTrackside closed with it queued) or
    ``withheld`` (never sent: ``drop_next``)."""

    seq: int
    type: str
    result: str
    detail: str = ""


# An event in the queue: seq, type, body, what to call once it has gone.
_Queued = tuple[int, str, bytes, Callable[[], None] | None]


def stamp(seconds: float) -> str:
    """``ts`` of an event made at ``seconds`` (Unix time): ``yyyy-MM-ddTHH:mm:ss.fffZ``."""
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"


class ExtensionSender:
    """One FPVTrackside session's ExtensionMode sender (its ExtensionNotifier, on the wire).

    ``hello()`` gives Hello's fields at each attempt; ``clock()`` is the Unix time events are
    stamped with. Counts: ``sent`` PUTs (Hello attempts included), ``acknowledged`` (2xx) and
    ``failed`` (anything else) of them; events ``dropped`` and ``withheld``, never sent;
    ``outcomes`` says it per event (the last 10,000).
    """

    def __init__(
        self,
        url: str,
        *,
        hello: Callable[[], Json],
        settings: ExtensionSettings | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self.settings = settings or ExtensionSettings()
        self.clock = clock
        self._hello = hello
        self._connections = Connections(
            url,
            idle_timeout=self.settings.idle_timeout,
            lifetime=self.settings.lifetime,
        )
        self.seq = 0  # the last one used
        self.hello_acknowledged = False
        self.hello_attempts = 0
        self.sent = self.acknowledged = self.failed = self.dropped = self.withheld = 0
        self.in_flight = 0  # events (not Hellos) being sent: never more than 1
        self.max_in_flight = 0
        self.outcomes: collections.deque[Outcome] = collections.deque(maxlen=OUTCOMES_KEPT)
        self._withhold: list[tuple[int, str | None]] = []  # [count, type or any]
        self._queue: collections.deque[_Queued] = collections.deque()
        self._pending = 0  # queued plus in flight, against the capacity
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._closed = False
        self._failures_told: set[str] = set()
        self._attempts: set[asyncio.Task[None]] = set()
        self.hello_task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def connections_opened(self) -> int:
        """TCP connections made to the Extension so far (keep-alive keeps this low)."""
        return self._connections.opened

    @property
    def busy(self) -> int:
        """Events queued or in flight."""
        return self._pending

    def start(self) -> None:
        """Begin: Hello now and every ``hello_interval`` until acknowledged; the queue's worker."""
        self.hello_task = asyncio.create_task(self._hellos(), name="extension-hello")
        self._worker = asyncio.create_task(self._work(), name="extension-queue")

    def drop_next(self, count: int = 1, kind: str | None = None) -> None:
        """Withhold the next ``count`` events (of type ``kind``, or any but Hello): each still
        uses its ``seq``, so a receiver sees a gap, as after a PUT lost on the way."""
        self._withhold.append((count, kind))

    def send(
        self,
        kind: str,
        fields: Json,
        *,
        at: float | None = None,
        then: Callable[[], None] | None = None,
    ) -> int:
        """Make the event (stamped ``at``, numbered) and queue it, or drop it when the queue is
        full; its ``seq``. ``then`` is called once the event has gone: answered, failed or
        dropped."""
        seq, body = self._make(kind, fields, at)
        if self._closed:
            self._outcome(seq, kind, "dropped", "closed", then)
        elif self._withheld(kind):
            self.withheld += 1
            self._outcome(seq, kind, "withheld", "", then)
        elif self._pending >= self.settings.capacity:
            self.dropped += 1
            self._outcome(seq, kind, "dropped", "queue full", then)
        else:
            self._pending += 1
            self._queue.append((seq, kind, body, then))
            self._wake.set()
        return seq

    async def close(self) -> None:
        """Stop as FPVTrackside does when the event closes: no more Hellos, the queue dropped,
        the request in flight let finish (at most ``timeout``), the connections closed."""
        self._closed = True
        while self._queue:
            seq, kind, _, then = self._queue.popleft()
            self._pending -= 1
            self.dropped += 1
            self._outcome(seq, kind, "dropped", "closed", then)
        tasks = [t for t in (self.hello_task, *self._attempts) if t is not None]
        for task in tasks:
            task.cancel()
        if self._worker is not None:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._worker), self.settings.timeout + 1.0)
            self._worker.cancel()
            tasks.append(self._worker)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connections.close()

    # -- inside --------------------------------------------------------------------------------

    def _make(self, kind: str, fields: Json, at: float | None) -> tuple[int, bytes]:
        self.seq += 1
        event = {"type": kind, "ts": stamp(self.clock() if at is None else at), "seq": self.seq}
        body = json.dumps({**event, **fields}, ensure_ascii=False, separators=(",", ":"))
        return self.seq, body.encode("utf-8")

    def _withheld(self, kind: str) -> bool:
        for i, (count, wanted) in enumerate(self._withhold):
            if wanted is None or wanted == kind:
                if count <= 1:
                    del self._withhold[i]
                else:
                    self._withhold[i] = (count - 1, wanted)
                return True
        return False

    def _outcome(
        self,
        seq: int,
        kind: str,
        result: str,
        detail: str = "",
        then: Callable[[], None] | None = None,
    ) -> None:
        self.outcomes.append(Outcome(seq, kind, result, detail))
        log.debug("event seq=%d type=%s %s %s", seq, kind, result, detail)
        if then is not None:
            then()

    async def _hellos(self) -> None:
        # A timer, as FPVTrackside's: an attempt every interval, whether the last has ended or not.
        while not self.hello_acknowledged and not self._closed:
            attempt = asyncio.create_task(self._hello_once(), name="extension-hello-attempt")
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempts.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), self.settings.hello_interval)

    async def _hello_once(self) -> None:
        if self.hello_acknowledged or self._closed:
            return
        seq, body = self._make("Hello", self._hello(), None)
        self.hello_attempts += 1
        status = await self._put(seq, "Hello", body)
        if status is not None and 200 <= status < 300 and not self.hello_acknowledged:
            self.hello_acknowledged = True
            self._acked.set()
            log.info("ExtensionMode handshake complete with %s (seq %d)", self.url, seq)

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            seq, kind, body, then = self._queue.popleft()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self._put(seq, kind, body, then)
            finally:
                self.in_flight -= 1
                self._pending -= 1

    async def _put(
        self, seq: int, kind: str, body: bytes, then: Callable[[], None] | None = None
    ) -> int | None:
        """One PUT within the timeout; its status, or None. Counted and told, never raised."""
        self.sent += 1
        try:
            async with asyncio.timeout(self.settings.timeout):
                status = await self._connections.put(body)
        except TimeoutError:
            self._failure(seq, kind, "timeout", then)
            return None
        except Failed as exc:
            self._failure(seq, kind, str(exc), then)
            return None
        except asyncio.CancelledError:
            self._outcome(seq, kind, "failed", "closed", then)
            raise
        if 200 <= status < 300:
            self.acknowledged += 1
            self._outcome(seq, kind, "acknowledged", str(status), then)
        else:
            self._failure(seq, kind, f"HTTP {status}", then)
        return status

    def _failure(
        self, seq: int, kind: str, why: str, then: Callable[[], None] | None = None
    ) -> None:
        self.failed += 1
        self._outcome(seq, kind, "failed", why, then)
        # FPVTrackside logs a failure once per kind of error (and none during the handshake).
        if kind != "Hello" and why.split(":")[0] not in self._failures_told:
            self._failures_told.add(why.split(":")[0])
            log.info("an ExtensionMode event was not taken (%s); it is not sent again", why)
