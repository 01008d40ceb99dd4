"""Escalating recovery while the link stays down, with time passed in."""

from __future__ import annotations

from pits_appliance.recovery import RECONNECT, RERESOLVE, RESTART_NETWORK, Recovery, Step


def test_steps_come_each_after_its_own_delay() -> None:
    r = Recovery(allow_network_restart=True)
    assert r.observe(False, 0.0) == []
    assert r.observe(False, 29.0) == []
    assert r.observe(False, 30.0) == [RECONNECT]
    assert r.observe(False, 60.0) == []
    assert r.observe(False, 90.0) == [RERESOLVE]
    assert r.observe(False, 180.0) == [RESTART_NETWORK]
    assert r.observe(False, 500.0) == []


def test_network_restart_only_where_allowed() -> None:
    r = Recovery(allow_network_restart=False)
    actions = [a for t in range(0, 1000, 10) for a in r.observe(False, float(t))]
    assert RESTART_NETWORK not in actions
    assert actions.count(RECONNECT) >= 1


def test_link_up_resets_the_escalation() -> None:
    r = Recovery(allow_network_restart=True)
    r.observe(False, 0.0)
    assert r.observe(False, 31.0) == [RECONNECT]
    assert r.observe(True, 32.0) == []
    assert r.observe(False, 40.0) == []  # downtime counts from here again
    assert r.observe(False, 69.0) == []
    assert r.observe(False, 70.0) == [RECONNECT]


def test_cycle_starts_over_after_the_last_step() -> None:
    r = Recovery(steps=(Step(RECONNECT, 1.0), Step(RERESOLVE, 2.0)), cycle=10.0)
    assert r.observe(False, 0.0) == []
    assert r.observe(False, 2.0) == [RECONNECT, RERESOLVE]  # late: both due at once
    assert r.observe(False, 10.0) == []  # a new cycle begins
    assert r.observe(False, 11.0) == [RECONNECT]
    assert r.observe(False, 12.0) == [RERESOLVE]
