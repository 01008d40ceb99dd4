"""The registry (cloud.registry): a hook's failure is that feature's, never the handshake's."""

from __future__ import annotations

import logging

import pytest
from conftest import Connect

from cloud.registry import HOOK_LOG_INTERVAL, Registry
from pitlink_testkit.clock import FakeClock


def failing(pits_id: str) -> None:
    raise RecursionError("maximum recursion depth exceeded")


@pytest.mark.provokes_error(
    "pitlink.cloud.registry",
    r"^a connection hook failed",
    why="a hook that greets a box raises, as the offers hook did on a damaged offers.json",
)
def test_a_failing_hook_neither_fails_the_handshake_nor_stops_the_others(
    registry: Registry,
    connect: Connect,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="pitlink.cloud.registry")
    greeted: list[str] = []
    gone: list[str] = []
    registry.on_register += [failing, greeted.append]
    registry.on_unregister += [failing, gone.append]
    conns = []
    for _n in range(5):  # a box that loops connect/close, as the attack made every box do
        conn, transport = connect("p1")
        assert conn.state == "open" and transport.closes == []
        assert registry.get("p1") is conn
        conns.append(conn)
        clock.advance(1.0)
    assert greeted == ["p1"] * 5
    conns[-1].closed()
    assert gone == ["p1"] and registry.get("p1") is None
    lines = [r for r in caplog.records if r.name == "pitlink.cloud.registry"]
    # One line per hook and occasion, not one a hello; the traceback says what failed.
    assert [(r.when, r.suppressed) for r in lines] == [("register", 0), ("unregister", 0)]  # type: ignore[attr-defined]
    assert lines[0].exc_info is not None and lines[0].exc_info[0] is RecursionError
    assert lines[0].hook == "failing"  # type: ignore[attr-defined]
    clock.advance(HOOK_LOG_INTERVAL)
    connect("p1")
    again = [r for r in caplog.records if r.name == "pitlink.cloud.registry"][2:]
    assert [(r.when, r.suppressed) for r in again] == [("register", 4)]  # type: ignore[attr-defined]
