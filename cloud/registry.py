"""Who is connected: every pits connection, and the one live connection of each pits; and
who was lately (offline boxes) or was refused at the door (cloud.offline).

A newer connection of the same pits replaces the older one (closed with 4003); the replicas'
cluster hears of each change through the hooks, and so do the features that greet a box (the
active pits, update offers). A hook's own trouble is that feature's: it is logged (one line a
minute per hook, with the count of the rest) and the handshake goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from cloud.keys import Revocations
from cloud.metrics import Metrics
from cloud.offline import Departure, Offline, Refused
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
Hook = Callable[[str], None]

log = logging.getLogger("pitlink.cloud.registry")
HOOK_LOG_INTERVAL = 60.0  # seconds between two lines about the same failing hook


class Registry(Generic[C]):
    """Every pits connection, and the one live connection of each pits."""

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic):
        self.metrics = metrics
        self.clock = clock
        self.all: set[C] = set()
        self._live: dict[str, C] = {}
        # One "dropped frame" line a second per pits and reason, across its reconnections.
        self.drop_log = Throttle(1.0, max_kinds=1024)
        # Told when a pits connection is live here, or no longer (the cluster claims keys).
        self.on_register: list[Hook] = []
        self.on_unregister: list[Hook] = []
        self.hook_log = Throttle(HOOK_LOG_INTERVAL)
        # The boxes whose link ended in the last day (cloud.offline), for the pages.
        self.offline = Offline()
        self.refused = Refused()  # boxes refused at /control, by the pits id they claim

    def add(self, conn: C) -> None:
        self.all.add(conn)
        self._gauge()

    def register(self, conn: C) -> None:
        """A connection finished its handshake; it replaces any older one of the same pits."""
        old = self._live.get(conn.pits_id)
        self._live[conn.pits_id] = conn
        self.offline.back(conn.pits_id)
        if old is not None and old is not conn:
            old.close(CloseCode.REPLACED, "replaced by a newer connection of the same pits")
        self._gauge()
        self._run(self.on_register, conn.pits_id, "register")

    def unregister(self, conn: C, gone: Departure | None = None) -> None:
        """A connection ended; `gone` says how, listed as offline if it was the pits' live one."""
        self.all.discard(conn)
        if self._live.get(conn.pits_id) is conn:
            del self._live[conn.pits_id]
            if gone is not None:
                self.offline.note(gone)
            self._run(self.on_unregister, conn.pits_id, "unregister")
        self._gauge()

    def _run(self, hooks: list[Hook], pits_id: str, when: str) -> None:
        """Run every hook; one that fails is logged (throttled) and the others still run."""
        for hook in hooks:
            try:
                hook(pits_id)
            except Exception as exc:
                name = getattr(hook, "__qualname__", type(hook).__name__)
                held = self.hook_log.allow(f"{when} {name}", self.clock())
                if held is not None:
                    log.error(
                        "a connection hook failed; the connection goes on without it",
                        exc_info=exc,
                        extra={"hook": name, "when": when, "pits_id": pits_id, "suppressed": held},
                    )

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
