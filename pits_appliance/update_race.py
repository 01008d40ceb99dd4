"""Never during a race: whether one runs, in the best words the box has, and the pace a
download keeps while race data flows.

A race runs, by the first of these that knows:
1. FPVTrackside's ExtensionMode said `RaceStart` and not yet `RaceEnd` (or `RaceCancelled`),
   when the box has heard such an event in the last hour;
2. else the race running now in FPVTrackside's files (started, not ended; see racenow.py),
   when the box knows which race that is;
3. else the relay fetched something in the last `fetch_window` seconds (spectators follow a
   race), when that is on.

While one runs no download, install or restart starts (a download under way stops between
two ranges). Outside a race, while race data still flows (a fetch or a push in the last
DATA_WINDOW seconds), a download asks for at most `rate` bytes a second on average, so the
uplink stays free for the race's files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pits_appliance.extension import Forwarder
from pits_appliance.metrics import AgentMetrics

EXTENSION_HELD = 3600.0  # seconds ExtensionMode's last word on a race is believed
DATA_WINDOW = 30.0  # a fetch or a push this recent: race data flows
STARTS = frozenset({"RaceStart"})
ENDS = frozenset({"RaceEnd", "RaceCancelled"})


class RaceGate:
    """Knows whether a race runs now, and holds the update's steps until it ends."""

    def __init__(
        self,
        *,
        files_running: Callable[[], bool | None] = lambda: None,
        last_fetch: Callable[[], float | None] = lambda: None,
        last_push: Callable[[], float | None] = lambda: None,
        fetch_window: float | None = 300.0,
        rate: int | None = 256 * 1024,
        poll: float = 5.0,
        now: Callable[[], float] = time.time,
    ):
        self.files_running = files_running
        self.last_fetch = last_fetch
        self.last_push = last_push
        self.fetch_window = fetch_window
        self.rate = rate
        self.poll = poll
        self.now = now
        self._said: tuple[bool, float] | None = None  # ExtensionMode: (running, when)
        self._wake = asyncio.Event()

    def heard(self, kind: Any) -> None:
        """An ExtensionMode event's type (only RaceStart, RaceEnd, RaceCancelled count)."""
        if isinstance(kind, str) and (kind in STARTS or kind in ENDS):
            self._said = (kind in STARTS, self.now())
            self._wake.set()

    def running(self) -> str | None:
        """Why a race is taken to run now, in words for the page; None when none runs."""
        now = self.now()
        if self._said is not None and now - self._said[1] < EXTENSION_HELD:
            return "FPVTrackside says a race is running" if self._said[0] else None
        files = self.files_running()
        if files is not None:
            return (
                "the race now has started and not ended in FPVTrackside's files" if files else None
            )
        fetched = self.last_fetch()
        if self.fetch_window is not None and fetched is not None:
            if now - fetched < self.fetch_window:
                return f"spectators fetched in the last {self.fetch_window / 60:g} min"
        return None

    def flowing(self) -> bool:
        """Race data went up lately (a relayed fetch or a push)."""
        now = self.now()
        return any(
            t is not None and now - t < DATA_WINDOW for t in (self.last_fetch(), self.last_push())
        )

    async def wait(self, on_hold: Callable[[str], None]) -> bool:
        """Return once no race runs; `on_hold(why)` first if one does. True if it waited."""
        why = self.running()
        if why is None:
            return False
        on_hold(why)
        while self.running() is not None:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)  # a timer, or an event
            except TimeoutError:
                pass
        return True


class Pace:
    """A download's ranges spaced so that, while race data flows, it averages at most
    `gate.rate` bytes a second (at most one second's worth in one range)."""

    def __init__(self, gate: RaceGate, clock: Callable[[], float] = time.monotonic):
        self.gate = gate
        self.clock = clock
        self._last: tuple[float, int] | None = None  # (when the last range was asked, its size)

    def chunk(self, chunk: int) -> tuple[int, float]:
        """(bytes to ask for next, seconds to wait first)."""
        rate = self.gate.rate
        now = self.clock()
        if rate is None or not self.gate.flowing():
            self._last = (now, chunk)
            return chunk, 0.0
        size = max(1, min(chunk, rate))
        wait = 0.0
        if self._last is not None:
            wait = max(0.0, self._last[1] / rate - (now - self._last[0]))
        self._last = (now + wait, size)
        return size, wait


class RaceForwarder(Forwarder):
    """ExtensionMode's events on their way to the relay, noted by the gate on the way."""

    def __init__(self, metrics: AgentMetrics, gate: RaceGate):
        super().__init__(metrics)
        self.gate = gate

    def forward(self, event: dict[str, Any]) -> None:
        self.gate.heard(event.get("type"))
        super().forward(event)
