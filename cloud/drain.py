"""The public requests in flight, so that a replica leaving can answer them first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Drain:
    """Counts requests in flight; `wait()` until none is, while `draining` turns new ones away."""

    def __init__(self) -> None:
        self.draining = False
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait(self, grace: float) -> bool:
        """True when every request in flight was answered within `grace` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True
