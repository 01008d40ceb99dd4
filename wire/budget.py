"""Budgets over time: a token bucket, and a throttle that keeps one kind of log line rare.

Pure: the time is passed in, so both are tested without sleeping. Both programs use them
wherever something from outside could otherwise make them do unbounded work (a flood of bad
frames, a flood of connections): the bucket says when to stop, the throttle keeps the log
readable and the box's RAM-backed journal small.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """`rate` tokens a second, up to `burst` saved up; each event takes one."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def full(self, now: float) -> bool:
        """Whether it has saved up its whole burst again: then it is no different from new."""
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.burst


class Throttle:
    """At most one line per `interval` seconds for each kind of event, with a count of the rest.

    `allow(kind, now)` is None when the line should be held back (it is counted), or the
    number of lines held back since the last one that went out, to log with it.
    """

    def __init__(self, interval: float = 1.0, *, max_kinds: int = 64):
        self.interval = interval
        self.max_kinds = max_kinds
        self._kinds: OrderedDict[str, list[float]] = OrderedDict()  # kind -> [last, held]

    def allow(self, kind: str, now: float) -> int | None:
        slot = self._kinds.get(kind)
        if slot is None:
            self._kinds[kind] = [now, 0]
            if len(self._kinds) > self.max_kinds:
                self._kinds.popitem(last=False)
            return 0
        self._kinds.move_to_end(kind)
        if now - slot[0] >= self.interval:
            held = int(slot[1])
            slot[0], slot[1] = now, 0
            return held
        slot[1] += 1
        return None
