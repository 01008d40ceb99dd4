"""The admin API: tokens checked, and each action doing what it says."""

from __future__ import annotations

import json
import logging

import pytest

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode


async def admin(s: System, verb: str, body: dict | None = None, token: str | None = None):
    token = token or s.keys.issue(sub="alice", role="admin", ttl=600)
    kwargs = {"headers": {"Authorization": f"Bearer {token}"}}
    if body is not None:
        kwargs.update(method="POST", body=json.dumps(body))
    return await s.get(f"/admin/api/{verb}", **kwargs)


async def test_admin_api_needs_an_admin_token(system: System) -> None:
    none = await system.get("/admin/api/connections")
    assert none.code == 401
    assert json.loads(none.body)["error"]["code"] == "UNAUTHORIZED"
    pits = await admin(system, "connections", token=system.token_file.read_text().strip())
    assert pits.code == 403
    assert json.loads(pits.body)["error"]["code"] == "DENIED"
    expired = system.keys.issue(sub="alice", role="admin", ttl=-3600)
    assert (await admin(system, "connections", token=expired)).code == 401
    assert (await admin(system, "connections", token="garbage")).code == 401
    ok = await admin(system, "connections")
    assert ok.code == 200
    assert ok.headers["Cache-Control"] == "no-store"
    # The public side is not opened by an admin token, nor the admin side by any other path.
    assert (await admin(system, "nothing-here")).code == 404
    assert (await admin(system, "reconnect-everything", body={})).code == 404


async def test_connections_list_what_an_operator_needs(system: System) -> None:
    await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    rows = json.loads((await admin(system, "connections")).body)["connections"]
    assert len(rows) == 1
    row = rows[0]
    assert row["pitsId"] == system.pits_id
    assert row["swVersion"] == "0.1.0" and row["protocolVersion"] == 1
    assert row["state"] == "open" and row["paused"] is False and row["active"] is True
    for field in ("since", "roundTripMs", "inFlight", "queue", "errors", "lastSeenS", "fetches"):
        assert field in row
    assert row["fetches"] == 1


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 POST /admin/api/pits/nobody/reconnect ",
    why="a pits that is not connected cannot be told to reconnect: 503",
)
async def test_forced_reconnect_shows_a_new_connection(system: System, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.cloud.admin")
    first = system.relay.registry.get(system.pits_id)
    sessions = system.agent.link.sessions
    got = await admin(system, f"pits/{system.pits_id}/reconnect", {})
    assert got.code == 200
    await wait_for(lambda: system.agent.link.sessions > sessions, what="a new session")
    await system.connected()
    assert system.relay.registry.get(system.pits_id) is not first
    assert system.agent.state.close_code == CloseCode.RECONNECT
    (line,) = [r for r in caplog.records if r.name == "pitlink.cloud.admin"]
    assert (line.admin, line.action, line.pits_id) == ("alice", "reconnect", system.pits_id)
    assert (await admin(system, "pits/nobody/reconnect", {})).code == 503


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/pits-1/events/.*/Event\.json ",
    why="a paused pits fetches nothing: a path never cached is 503",
)
async def test_pause_stops_fetches_reaching_the_origin(system: System) -> None:
    sim = system.sim
    cached = f"/pits/{system.pits_id}/httpfiles/Channels.json"
    assert (await system.get(cached)).code == 200
    assert (await admin(system, f"pits/{system.pits_id}/pause", {})).code == 200
    before = list(sim.request_log)
    stale = await system.get(cached)
    assert stale.code == 200 and stale.headers["X-Pitlink-Cache"] == "STALE"
    uncached = await system.get(f"/pits/{system.pits_id}{sim.event_path}/Event.json")
    assert uncached.code == 503
    assert "paused" in json.loads(uncached.body)["error"]["message"]
    assert sim.request_log == before
    rows = json.loads((await admin(system, "connections")).body)["connections"]
    assert rows[0]["paused"] is True
    assert (await admin(system, f"pits/{system.pits_id}/resume", {})).code == 200
    assert (await system.get(cached)).headers["X-Pitlink-Cache"] == "REVALIDATED"
    assert len(sim.request_log) == len(before) + 1


async def test_purge_empties_exactly_the_prefix(system: System) -> None:
    sim = system.sim
    event_paths = [
        f"{sim.event_path}/{name}" for name in ("Event.json", "Pilots.json", "Rounds.json")
    ]
    for path in [*event_paths, "/httpfiles/Channels.json"]:
        assert (await system.get(f"/pits/{system.pits_id}{path}")).code == 200
    assert len(system.relay.cache) == 4
    got = await admin(
        system, "cache/purge", {"pitsId": system.pits_id, "prefix": f"{sim.event_path}/"}
    )
    assert json.loads(got.body) == {"purged": 3}
    assert len(system.relay.cache) == 1
    assert system.relay.cache.get((system.pits_id, "GET", "/httpfiles/Channels.json")) is not None
    # Another pits' entries are untouched, and a bad prefix is refused.
    got = await admin(system, "cache/purge", {"pitsId": "other", "prefix": "/"})
    assert json.loads(got.body) == {"purged": 0}
    assert (await admin(system, "cache/purge", {"prefix": "relative"})).code == 400
    assert (await admin(system, "cache/purge", {"prefix": "/%2e%2e/"})).code == 400
    stats = json.loads((await admin(system, "cache")).body)
    assert stats["entries"] == 1 and stats["misses"] == 4


async def test_allowlist_toggle_at_runtime(system: System) -> None:
    path = f"/pits/{system.pits_id}/httpfiles/Channels.json"
    got = await admin(system, "allowlist", {"pattern": "/httpfiles/**", "enabled": False})
    assert {"pattern": "/httpfiles/**", "enabled": False} in json.loads(got.body)["allowlist"]
    assert (await system.get(path)).code == 403
    await admin(system, "allowlist", {"pattern": "/httpfiles/**", "enabled": True})
    assert (await system.get(path)).code == 200
    # Only existing entries can be switched: the admin API adds nothing new.
    assert (await admin(system, "allowlist", {"pattern": "/**", "enabled": True})).code == 400
    assert (await admin(system, "allowlist", {"pattern": "/httpfiles/**"})).code == 400


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /httpfiles/Channels\.json ",
    why="the active pits chosen is not connected: the root paths are 503",
)
async def test_choosing_the_active_pits(system: System) -> None:
    path = "/httpfiles/Channels.json"
    assert (await system.get(path)).code == 200
    got = await admin(system, "active", {"pitsId": "elsewhere"})
    assert json.loads(got.body)["activeChosen"] == "elsewhere"
    assert (await system.get(path)).code == 503
    await admin(system, "active", {"pitsId": None})
    assert (await system.get(path)).code == 200
    assert (await admin(system, "active", {"pitsId": 5})).code == 400


@pytest.mark.parametrize("body", [b"not json", b"[1]"])
async def test_admin_bodies_must_be_json_objects(system: System, body: bytes) -> None:
    token = system.keys.issue(sub="alice", role="admin", ttl=600)
    got = await system.get(
        "/admin/api/cache/purge",
        method="POST",
        body=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert got.code == 400
