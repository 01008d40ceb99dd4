"""Which pits `/events/**` and `/httpfiles/**` at the relay's root serve.

The active pits is chosen once and never changes by itself: by `--active-pits`, by an admin,
or, when none is chosen, it is the first pits to connect (adopted then, and kept). When it
drops, the root paths keep meaning it (its last copies, or 503): another club's box that
happens to be connected never takes its place. An admin who asks for "automatic" again gets
the one connected pits adopted anew, or the next one to connect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from wire import ErrorCode, ProtocolError

How = Literal["flag", "admin", "first", "other replica"]


class ActivePits:
    """The active pits and how it came to be active."""

    def __init__(self, chosen: str | None = None):
        self.pits_id = chosen
        self.how: How | None = "flag" if chosen else None

    @property
    def chosen(self) -> str | None:
        """The pits an operator named (flag or admin); None when it was adopted or is unset."""
        return self.pits_id if self.how in ("flag", "admin") else None

    def offer(self, live: Sequence[str]) -> bool:
        """A pits connected: adopt it if none is active and it is the only one. True if adopted."""
        if self.pits_id is None and len(live) == 1:
            self.pits_id, self.how = live[0], "first"
            return True
        return False

    def choose(self, pits_id: str | None, live: Sequence[str]) -> None:
        """An admin's choice; None asks for automatic again (adopt the one connected, if one)."""
        if pits_id:
            self.pits_id, self.how = pits_id, "admin"
        else:
            self.pits_id, self.how = None, None
            self.offer(live)

    def learn(self, pits_id: str | None, how: How) -> None:
        """What another replica chose or adopted (the cluster keeps them in agreement)."""
        self.pits_id, self.how = pits_id, (how if pits_id else None)

    def current(self, live: Sequence[str]) -> str:
        """The active pits, or ProtocolError(UNAVAILABLE) saying why there is none."""
        if self.pits_id is not None:
            return self.pits_id
        if not live:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "no pits is connected")
        raise ProtocolError(
            ErrorCode.UNAVAILABLE, "several pits are connected and none is active: use /pits/<id>/"
        )
