"""Plain objects of the relay wired together without a server, over a fake transport."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cloudfakes import FakeTransport, pits_hello

from cloud.control import ControlSettings, PitsConnection, UpdateListener
from cloud.metrics import Metrics
from cloud.registry import Registry
from pitlink_testkit.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def registry(metrics: Metrics, clock: FakeClock) -> Registry:
    return Registry(metrics, clock=clock)


Connect = Callable[..., tuple[PitsConnection, FakeTransport]]


@pytest.fixture
def connect(registry: Registry, metrics: Metrics, clock: FakeClock) -> Connect:
    """Open a pits connection the way the handler does; by default finish its handshake."""

    def _connect(
        pits_id: str = "p1",
        *,
        hello: bool = True,
        settings: ControlSettings | None = None,
        on_update: UpdateListener | None = None,
    ) -> tuple[PitsConnection, FakeTransport]:
        transport = FakeTransport()
        conn = PitsConnection(
            pits_id=pits_id,
            claims={"sub": pits_id, "role": "pits"},
            transport=transport,
            registry=registry,
            settings=settings or ControlSettings(),
            metrics=metrics,
            clock=clock,
            wall=lambda: 1_700_000_000.0,
            on_update=on_update,
        )
        registry.add(conn)
        conn.start()
        if hello:
            conn.on_text(pits_hello(pits_id))
        return conn, transport

    return _connect
