"""What spectators read of one pits lately: the paths a box that pushes is asked to watch.

Every public read of a pits' path (a hit or a miss) is noted; the `watch` frame the relay
sends that pits (cloud.push) names these paths, most recent first. Noting is on the path of
every cache hit, so it is one dict operation; the set is bounded, and a path is forgotten a
while after its last read. Time is passed in.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_PATHS = 32  # paths in a `watch`: what spectators read, the most recent
FORGET_S = 60.0  # a path not read for this long is no longer asked for


class Reads:
    """The paths read lately, least recent first; `changed` says the set moved since taken."""

    __slots__ = ("_at", "changed", "forget_after", "max_paths")

    def __init__(self, *, max_paths: int = MAX_PATHS, forget_after: float = FORGET_S):
        self.max_paths = max_paths
        self.forget_after = forget_after
        self._at: OrderedDict[str, float] = OrderedDict()
        self.changed = False

    def __len__(self) -> int:
        return len(self._at)

    def note(self, path: str, now: float) -> None:
        """A spectator read `path` now."""
        at = self._at
        if path in at:
            at[path] = now
            at.move_to_end(path)
            return
        at[path] = now
        if len(at) > self.max_paths:
            at.popitem(last=False)
        self.changed = True

    def forget(self, now: float) -> None:
        """Let go of the paths nobody read for `forget_after` seconds."""
        at = self._at
        while at:
            path, last = next(iter(at.items()))
            if now - last < self.forget_after:
                break
            del at[path]
            self.changed = True

    def take(self) -> tuple[str, ...]:
        """The paths, most recent first; the set counts as sent from now."""
        self.changed = False
        return tuple(reversed(self._at))
