"""How old what the relay serves of a pits is, as its age notice tells it (cloud.age_notice).

`<pits base>/pitlink/age` answers with the box's state as this replica knows it: connected or
not and since when (the box's own connection here, else the day's list of boxes gone, else what
the live feed heard from the replica holding it), and since when the relay has served old
copies of it though the box is connected (FPVTrackside not answering the box, a box paused by
an admin). Times are Unix seconds of the relay's clock, with the relay's `now`, so the page can
say "12 min ago" right whatever the browser's clock says.

Plain: no sockets; the wall clock is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud.control import PitsConnection
from cloud.feed import Channel
from cloud.registry import Registry
from wire import ErrorCode

# A stale answer counts for this long: past it, with none since, the relay serves fresh copies
# again (from a push, or a fast hit this object never sees).
STALE_WINDOW_S = 10.0
MAX_PITS = 10_000  # pits remembered with stale answers (then the oldest are forgotten)
# Stale for the asker's own reasons, not the box's: its request budget, the pits' fetch budget.
NOT_THE_BOX = frozenset({ErrorCode.BUSY})


@dataclass
class _Run:
    since: float  # when the copies served were fetched, the first stale answer of the run
    last: float  # the latest stale answer


class StaleAnswers:
    """Per pits: does the relay serve old copies of it lately, and from when are they."""

    def __init__(
        self,
        *,
        wall: Callable[[], float],
        window: float = STALE_WINDOW_S,
        bound: int = MAX_PITS,
    ):
        self.wall = wall
        self.window = window
        self.bound = bound
        self._runs: OrderedDict[str, _Run] = OrderedDict()

    def saw(self, pits_id: str, *, cache: str, reason: ErrorCode | None, age: float) -> None:
        """One answer the relay gave of `pits_id` (its `X-Pitlink-Cache`, why stale, its age)."""
        if cache != "STALE":
            self._runs.pop(pits_id, None)  # a fresh answer: no longer serving old copies
            return
        if reason in NOT_THE_BOX:
            return
        now = self.wall()
        run = self._runs.get(pits_id)
        if run is None or now - run.last > self.window:
            run = self._runs[pits_id] = _Run(since=now - max(0.0, age), last=now)
        run.last = now
        self._runs.move_to_end(pits_id)
        while len(self._runs) > self.bound:
            self._runs.popitem(last=False)

    def since(self, pits_id: str) -> float | None:
        """From when the copies served lately are, or None: nothing stale served lately."""
        run = self._runs.get(pits_id)
        if run is None or self.wall() - run.last > self.window:
            return None
        return run.since


class BoxAge:
    """What `<pits base>/pitlink/age` says of a pits."""

    def __init__(
        self,
        *,
        registry: Registry[PitsConnection],
        channels: Callable[[str], Channel | None],
        stale: StaleAnswers,
        poll: float,
        wall: Callable[[], float],
    ):
        self.registry = registry
        self.channels = channels  # the live feed's channel of a pits (cloud.feed), if any
        self.stale = stale
        self.poll = poll
        self.wall = wall

    def describe(self, pits_id: str) -> dict[str, Any]:
        now = self.wall()
        connected, since = self._link(pits_id, now)
        return {
            "pitsId": pits_id,
            "connected": connected,
            "since": since,
            "staleSince": self.stale.since(pits_id) if connected else None,
            "now": now,
            "poll": self.poll,
        }

    def _link(self, pits_id: str, now: float) -> tuple[bool, float | None]:
        """(connected, since when; or when it was last heard from when it is not)."""
        conn = self.registry.get(pits_id)
        if conn is not None:
            return True, conn.connected_since_wall
        gone = self.registry.offline.get(pits_id, now)
        if gone is not None:
            return False, gone.last_seen
        channel = self.channels(pits_id)  # another replica holds it, or held it
        # Known from a `pits` event, or connected as far as the holder's signs of life say.
        if channel is not None and (channel.known or channel.connected):
            return channel.connected, channel.since
        return False, None
