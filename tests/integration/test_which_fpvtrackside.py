"""The agent tells the relay which FPVTrackside it talks to (issue 18): in its hello, and in an
`fpvtrackside` frame when an upgrade at the venue changes it; the relay logs the change and
shows it to the admin beside a schema mismatch. A relay that does not take the frame (an
older one) never gets one."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import messages as m

pytestmark = pytest.mark.timeout(60)


def seen_at_relay(system: System) -> m.FpvTrackside | None:
    conn = system.relay.registry.get(system.pits_id) if system.relay else None
    return None if conn is None else conn.fpvtrackside


async def connections(system: System) -> list[dict[str, Any]]:
    token = system.keys.issue(sub="alice", role="admin", ttl=600)
    got = await system.get("/admin/api/connections", headers={"Authorization": f"Bearer {token}"})
    assert got.code == 200
    rows: list[dict[str, Any]] = json.loads(got.body)["connections"]
    return rows


async def test_the_hello_says_which_fpvtrackside(system: System) -> None:
    """Started after its first look at FPVTrackside, the agent's hello carries what it saw."""
    await system.stop_agent()
    system.sim.version = "2.71"
    agent = await system.start_agent(no_push=True, wait=False)
    await wait_for(lambda: agent.state.fpvtrackside is not None, what="the first look")
    agent.link.reconnect_now()

    def in_hello() -> bool:
        conn = system.relay.registry.get(system.pits_id)
        hello = None if conn is None else conn.hello
        return hello is not None and hello.fpvtrackside is not None

    await wait_for(in_hello, what="a hello that says it")
    assert seen_at_relay(system) == m.FpvTrackside(
        version="2.71 to 2.75", server="Microsoft-HTTPAPI/2.0", traits=("json-typed",)
    )

    # The link the agent dropped may still be in the registry for a moment (the hello above can
    # be its hello), so the admin's list is read once the new link is in it.
    async def one_row() -> dict[str, Any] | None:
        rows = await connections(system)
        return rows[0] if len(rows) == 1 else None

    row = await wait_for(one_row, what="the link in the admin's list")
    assert row["fpvtrackside"] == {
        "version": "2.71 to 2.75",
        "server": "Microsoft-HTTPAPI/2.0",
        "traits": ["json-typed"],
    }


async def test_an_upgrade_at_the_venue_reaches_the_relay(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await system.stop_agent()
    agent = await system.start_agent(no_push=True, origin_check_interval=0.05)
    await wait_for(
        lambda: (seen := seen_at_relay(system)) is not None and seen.version == "before 2.71",
        what="the relay to know the first version",
    )
    conn = system.relay.registry.get(system.pits_id)

    agent.upstream.reprobe = 0.0  # look at every check, as after ten minutes
    system.sim.version = "2.76"
    await wait_for(
        lambda: (seen := seen_at_relay(system)) is not None and seen.version == "2.76 or later",
        what="the relay to see the upgrade",
    )
    # Over the same link, with no reconnect: a frame of its own.
    assert system.relay.registry.get(system.pits_id) is conn
    changed = [r for r in caplog.records if r.getMessage() == "pits FPVTrackside changed"]
    assert [(r.before, r.fpvtrackside) for r in changed] == [  # type: ignore[attr-defined]
        ("before 2.71", "2.76 or later")
    ]
    (row,) = await connections(system)
    assert row["fpvtrackside"]["version"] == "2.76 or later"
    assert agent.state.health()["fpvtrackside"]["traits"] == ["current", "json-typed"]


async def test_a_relay_that_does_not_take_the_frame_never_gets_one(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older relay names no features in its hello and would close the link on an unknown
    frame type: the agent tells it only in its next hello."""
    await system.stop_agent()
    sent: list[m.Message] = []
    original = m.encode

    def recording(message: m.Message, **kwargs: Any) -> str:
        sent.append(message)
        return original(message, **kwargs)

    relay = system.relay
    assert relay is not None
    relay.control_settings = dataclasses.replace(relay.control_settings, features=())
    monkeypatch.setattr("wire.session.m.encode", recording)
    agent = await system.start_agent(no_push=True, origin_check_interval=0.05)
    agent.upstream.reprobe = 0.0
    system.sim.version = "2.76"
    await wait_for(
        lambda: (
            agent.state.fpvtrackside is not None
            and agent.state.fpvtrackside.version == "2.76 or later"
        ),
        what="the agent to see the upgrade",
    )
    conn = system.relay.registry.get(system.pits_id)
    assert not any(isinstance(msg, m.FpvTrackside) for msg in sent)
    assert conn is not None and conn.state == "open"


async def test_a_pits_flipping_what_it_sees_gets_one_line_a_minute(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    """Every byte from a pits is hostile: 200 frames alternating two versions change the
    admin's view each time but log one line of each kind, not 200."""
    caplog.set_level(logging.INFO)
    conn = system.relay.registry.get(system.pits_id)
    assert conn is not None
    versions = ("2.76 or later", "before 2.71")
    for i in range(200):
        seen = m.FpvTrackside(version=versions[i % 2], traits=())
        conn.on_text(m.encode(seen, now_ms=0))
        assert conn.fpvtrackside == seen
    lines = [r for r in caplog.records if r.getMessage().startswith("pits FPVTrackside")]
    assert len([r for r in lines if r.getMessage() == "pits FPVTrackside changed"]) == 1
    assert len(lines) <= 2
    assert conn.state == "open"


async def test_the_first_look_reads_event_json_once(system: System) -> None:
    """The event's name and how FPVTrackside types the file come from one request."""
    await system.stop_agent()
    before = len(system.sim.request_log)
    agent = await system.start_agent(no_push=True)  # no watching: only the first look reads
    await wait_for(lambda: agent.state.fpvtrackside is not None, what="the first look")
    asked = [p for _, p in system.sim.request_log[before:] if p.endswith("/Event.json")]
    assert asked == [f"{system.sim.event_path}/Event.json"]
    assert agent.state.origin_event_name
