"""A fake monotonic clock, for logic that depends on time and is tested without sleeping."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that moves only when the test says so.

    Pass it where the code takes a clock (`clock=`); read or set `now`, or `advance()` it.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
