"""What the box does, step by step, while the link to the relay stays down. Pure: time in.

First it reconnects at once (skipping the backoff), then it forgets what DNS told it, then,
only where allowed (on the image), it restarts networking. Each step comes after its own
delay of continuous downtime; after the last one the cycle starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

RECONNECT = "reconnect"
RERESOLVE = "re-resolve"
RESTART_NETWORK = "restart-network"


@dataclass(frozen=True)
class Step:
    action: str
    after: float  # seconds of continuous downtime


DEFAULT_STEPS = (Step(RECONNECT, 30.0), Step(RERESOLVE, 90.0), Step(RESTART_NETWORK, 180.0))


class Recovery:
    """Escalating recovery: call `observe` now and then; it returns the actions due."""

    def __init__(
        self,
        *,
        steps: tuple[Step, ...] = DEFAULT_STEPS,
        allow_network_restart: bool = False,
        cycle: float = 600.0,
    ):
        self.steps = tuple(s for s in steps if s.action != RESTART_NETWORK or allow_network_restart)
        self.cycle = max(cycle, max((s.after for s in self.steps), default=0.0))
        self.down_since: float | None = None
        self.done: set[str] = set()

    def observe(self, link_up: bool, now: float) -> list[str]:
        if link_up:
            self.down_since = None
            self.done.clear()
            return []
        if self.down_since is None:
            self.down_since = now
        down = now - self.down_since
        if down >= self.cycle and len(self.done) == len(self.steps):
            # Still down after every step: start the cycle over.
            self.down_since = now
            self.done.clear()
            return []
        due = [s.action for s in self.steps if down >= s.after and s.action not in self.done]
        self.done.update(due)
        return due
