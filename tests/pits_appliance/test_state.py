"""What the agent knows about its world: change times and the /healthz document."""

from __future__ import annotations

import time

from pits_appliance.state import AgentState


def test_set_records_when_the_value_changed() -> None:
    state = AgentState()
    state.set("ws_connected", True, now=100.0)
    assert state.ws_connected is True
    assert state.changed_at["ws_connected"] == 100.0


def test_set_of_the_same_value_keeps_the_first_time() -> None:
    state = AgentState()
    state.set("ws_connected", True, now=100.0)
    state.set("ws_connected", True, now=200.0)
    assert state.changed_at["ws_connected"] == 100.0
    state.set("ws_connected", False, now=300.0)
    assert state.ws_connected is False
    assert state.changed_at["ws_connected"] == 300.0


def test_set_to_the_default_value_is_no_change() -> None:
    state = AgentState()
    state.set("ws_connected", False, now=100.0)
    state.set("origin_error", None, now=100.0)
    assert state.changed_at == {}


def test_fields_change_independently() -> None:
    state = AgentState()
    state.set("origin_reachable", True, now=10.0)
    state.set("origin_event", "e1", now=20.0)
    state.set("origin_reachable", True, now=30.0)
    assert state.changed_at == {"origin_reachable": 10.0, "origin_event": 20.0}


def test_set_without_now_uses_the_wall_clock() -> None:
    state = AgentState()
    before = time.time()
    state.set("cloud_error", "refused", now=None)
    assert before <= state.changed_at["cloud_error"] <= time.time()


def test_health_keys_and_values() -> None:
    state = AgentState(pits_id="club-42")
    state.set("ws_connected", True, now=1.0)
    state.set("connected_since", 1_700_000_000.0, now=1.0)
    state.set("origin_reachable", True, now=1.0)
    state.set("origin_event", "e1", now=1.0)
    state.set("reconnects", 3, now=1.0)
    health = state.health()
    assert set(health) == {
        "pitsId",
        "wsConnected",
        "connectedSince",
        "lastSuccess",
        "originReachable",
        "originEvent",
        "originError",
        "fpvtrackside",
        "cloudError",
        "reconnects",
        "connectivity",
        "portalUrl",
        "paused",
        "clock",
    }
    assert health["pitsId"] == "club-42"
    assert health["wsConnected"] is True
    assert health["connectedSince"] == 1_700_000_000.0
    assert health["lastSuccess"] is None
    assert health["originReachable"] is True
    assert health["originEvent"] == "e1"
    assert health["cloudError"] is None
    assert health["reconnects"] == 3
    assert (health["connectivity"], health["portalUrl"], health["paused"]) == (
        "unknown",
        None,
        False,
    )


def test_health_of_a_fresh_state() -> None:
    health = AgentState().health()
    assert health["wsConnected"] is False
    assert health["originReachable"] is None
    assert health["reconnects"] == 0
