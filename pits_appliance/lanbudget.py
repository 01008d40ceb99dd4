"""When the box re-reads which watched file, within what FPVTrackside can be asked.

FPVTrackside answers one request at a time, and it is timing a race while it does: the box's
watching must never crowd it. So the watcher has a budget of requests a second (a token
bucket, `--lan-budget`), never more than one request in flight, and each watched path an
interval (the race running now's file every `--watch-interval`, the event's results less
often, the relay's paths at the relay's interval). When the budget cannot cover every path at
its interval the intervals stretch: the race file keeps its own as long as it takes at most
half the budget, and every other path's interval grows by one common factor, so that each gets
the same share of what it asked.

Among the paths due, the one due longest goes first (earliest deadline first), so a stretched
or late path is never starved by a fast one. Besides the paths there is one more job, the race
finder's look (pits_appliance.racenow), due when it says: it is key `LOOK` here.

Pure: time is passed in, nothing sleeps; the watcher asks `next(now)` what to read, or how long
to wait, and says `done(key, started)` when the request is over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from wire.budget import TokenBucket

LOOK = "look"  # the race finder's next request (never a path: paths start with "/")
RACE_SHARE = 0.5  # of the budget the race file may take when other paths need some


def stretch(wanted: Mapping[str, float], budget: float, first: str | None) -> dict[str, float]:
    """The interval each path gets (seconds) so that together they ask at most `budget`
    requests a second: `first` keeps its own while it takes at most half the budget (all of
    it, alone), the others stretch by one factor."""
    if not wanted:
        return {}
    demand = sum(1.0 / interval for interval in wanted.values())
    if demand <= budget:
        return dict(wanted)
    out: dict[str, float] = {}
    left = budget
    if first is not None and first in wanted:
        share = budget if len(wanted) == 1 else budget * RACE_SHARE
        rate = min(1.0 / wanted[first], share)
        out[first] = 1.0 / rate
        left -= rate
    others = {p: i for p, i in wanted.items() if p not in out}
    if others:
        asked = sum(1.0 / interval for interval in others.values())
        factor = max(1.0, asked / left)
        for path, interval in others.items():
            out[path] = interval * factor
    return out


class Schedule:
    """The watched paths, their intervals and deadlines, the budget and the one request."""

    def __init__(self, *, budget: float, now: float, burst: float | None = None):
        self.budget = budget
        # A second's worth saved up: a poke (an ExtensionMode event) is read at once.
        self.bucket = TokenBucket(budget, burst if burst is not None else max(1.0, budget), now)
        self.wanted: dict[str, float] = {}
        self.first: str | None = None
        self.interval: dict[str, float] = {}  # what each path gets, after stretching
        self._due: dict[str, float] = {}
        self.in_flight: str | None = None
        self._again = False  # the path in flight was poked: read it again right after
        self.requests = 0  # requests started, over the schedule's life

    def plan(self, wanted: Mapping[str, float], first: str | None, now: float) -> bool:
        """Watch these paths at these intervals, `first` (the race file) first. A new path is
        due at once; one kept keeps its deadline (brought forward if its interval shrank).
        True when the paths or their intervals changed."""
        before = (dict(self.interval), self.first)
        self.wanted, self.first = dict(wanted), first
        self.interval = stretch(self.wanted, self.budget, first)
        for path in list(self._due):
            if path not in self.interval:
                del self._due[path]
        for path, interval in self.interval.items():
            self._due[path] = min(self._due.get(path, now), now + interval)
        return (self.interval, self.first) != before

    def poke(self, path: str, now: float) -> None:
        """Read this path as soon as the budget allows (again, if a read of it is under way:
        that one may have missed what the poke is about)."""
        if path == self.in_flight:
            self._again = True
        if path in self._due:
            self._due[path] = min(self._due[path], now)

    def round_length(self) -> float:
        """The longest interval: every path has been read once within it."""
        return max(self.interval.values(), default=0.0)

    def next(self, now: float, *, look: float | None = None) -> tuple[str | None, float]:
        """What to read now: (`path` or LOOK, 0), or (None, seconds to wait; inf: until told).

        `look` is when the race finder's next request is due (None: none). A key returned is
        in flight until `done`; nothing else is returned meanwhile.
        """
        if self.in_flight is not None:
            return None, math.inf
        due = dict(self._due)
        if look is not None:
            due[LOOK] = look
        if not due:
            return None, math.inf
        # Earliest deadline first; at a tie the race file, then the look.
        order = {self.first: 0, LOOK: 1}
        key = min(due, key=lambda k: (due[k], order.get(k, 2)))
        if due[key] > now:
            return None, due[key] - now
        wait = self.bucket.take(now)
        if wait > 0:
            return None, wait
        self.in_flight = key
        self.requests += 1
        return key, 0.0

    def done(self, key: str, started: float) -> None:
        """The request for `key`, started at `started`, is over (answered or not)."""
        again = False
        if self.in_flight == key:
            self.in_flight, again, self._again = None, self._again, False
        if key in self._due:
            self._due[key] = started if again else started + self.interval[key]
