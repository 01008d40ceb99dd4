"""One operation per key in flight: whoever asks for a key already being fetched shares it.

The relay coalesces every public request for one path into one fetch from the pits; the box
coalesces identical fetches into one request to FPVTrackside. Both keep their flights here.
Pure bookkeeping, without an event loop of its own: the caller starts the operation (a task or
future of its loop) and awaits what `join` returns, shielded, so that one caller leaving does
not cancel it for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
F = TypeVar("F", bound="FutureLike")


class FutureLike(Protocol):
    """What a flight must be: a future (asyncio's, for both programs)."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...

    def cancelled(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


class Flights(Generic[K, F]):
    """The flights in the air, by key; a flight lands (is forgotten) when it is done."""

    def __init__(self) -> None:
        self._flights: dict[K, F] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: K) -> F | None:
        return self._flights.get(key)

    def join(self, key: K, start: Callable[[], F]) -> F:
        """The flight for `key`: the one in the air, or one `start()` launches now."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = start()
            flight.add_done_callback(lambda done: self._land(key, done))
        return flight

    def _land(self, key: K, flight: F) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: every caller may have given up waiting on it
