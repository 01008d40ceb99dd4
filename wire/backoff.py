"""Reconnect delays: exponential backoff with full jitter, reset after a stable connection.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads a fleet of boxes
that lost the cloud at the same moment, so they do not all come back in the same second.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """The delay before each reconnect attempt.

    Call `next_delay()` before each attempt, `connected(now)` when a connection is up and
    `disconnected(now)` when it drops: a connection that lived `reset_after` seconds or more
    resets the schedule to its base.
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        reset_after: float = 60.0,
        rand: Callable[[], float] = random.random,
    ):
        if not 0 < base <= cap:  # also refuses NaN
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.reset_after = reset_after
        self.attempt = 0
        self._rand = rand
        self._connected_at: float | None = None

    def ceiling(self, attempt: int | None = None) -> float:
        """The largest delay the given (default: next) attempt can draw."""
        n = self.attempt if attempt is None else attempt
        return min(self.cap, self.base * 2.0 ** min(n, 62))

    def next_delay(self) -> float:
        """Draw the next delay and move the schedule one step on."""
        delay = self._rand() * self.ceiling()
        self.attempt += 1
        return delay

    def slow_delay(self) -> float:
        """A delay for refusals that retrying soon cannot fix (version refused, token expired)."""
        self.attempt = max(self.attempt, 62)
        return self.cap * (0.5 + 0.5 * self._rand())

    def connected(self, now: float) -> None:
        """A connection is up."""
        self._connected_at = now

    def disconnected(self, now: float) -> None:
        """The connection dropped; reset the schedule if it had been stable."""
        if self._connected_at is not None and now - self._connected_at >= self.reset_after:
            self.attempt = 0
        self._connected_at = None

    def reset(self) -> None:
        """Start again from the base (an admin asked for a reconnect)."""
        self.attempt = 0
