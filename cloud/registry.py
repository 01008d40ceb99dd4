"""Who is connected: every pits connection, and the one live connection of each pits.

A newer connection of the same pits replaces the older one (closed with 4003); the replicas'
cluster hears of each change through the hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from cloud.keys import Revocations
from cloud.metrics import Metrics
from wire import CloseCode
from wire.budget import Throttle


class Member(Protocol):
    """What the registry needs of a connection (cloud.control.C is one)."""

    pits_id: str
    queued: int

    @property
    def state(self) -> str: ...

    def close(self, code: int, reason: str) -> None: ...

    def tick(self) -> None: ...

    def revoke_if(self, revoked: Revocations, kids: frozenset[str] | None = None) -> None: ...

    def describe(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=Member)


class Registry(Generic[C]):
    """Every pits connection, and the one live connection of each pits."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.all: set[C] = set()
        self._live: dict[str, C] = {}
        # One "dropped frame" line a second per pits and reason, across its reconnections.
        self.drop_log = Throttle(1.0, max_kinds=1024)
        # Told when a pits connection is live here, or no longer (the cluster claims keys).
        self.on_register: list[Callable[[str], None]] = []
        self.on_unregister: list[Callable[[str], None]] = []

    def add(self, conn: C) -> None:
        self.all.add(conn)
        self._gauge()

    def register(self, conn: C) -> None:
        """A connection finished its handshake; it replaces any older one of the same pits."""
        old = self._live.get(conn.pits_id)
        self._live[conn.pits_id] = conn
        if old is not None and old is not conn:
            old.close(CloseCode.REPLACED, "replaced by a newer connection of the same pits")
        self._gauge()
        for hook in self.on_register:
            hook(conn.pits_id)

    def unregister(self, conn: C) -> None:
        self.all.discard(conn)
        if self._live.get(conn.pits_id) is conn:
            del self._live[conn.pits_id]
            for hook in self.on_unregister:
                hook(conn.pits_id)
        self._gauge()

    def get(self, pits_id: str) -> C | None:
        return self._live.get(pits_id)

    def live(self) -> list[C]:
        return list(self._live.values())

    def tick(self) -> None:
        for conn in list(self.all):
            conn.tick()

    def max_queue(self) -> int:
        """The deepest per-pits queue right now (readiness turns on it)."""
        return max((conn.queued for conn in self.all), default=0)

    def revoke(self, revoked: Revocations, kids: frozenset[str] | None = None) -> None:
        for conn in list(self.all):
            conn.revoke_if(revoked, kids)

    def _gauge(self) -> None:
        counts = {"handshake": 0, "open": 0}
        for conn in self.all:
            if conn.state in counts:
                counts[conn.state] += 1
        for state, n in counts.items():
            self.metrics.control_connections.labels(state).set(n)
