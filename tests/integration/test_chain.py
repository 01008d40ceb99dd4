"""A spectator's request through the whole chain: relay, WebSocket, agent, FPVTrackside."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest

from pitlink_testkit.system import System
from wire.canonical import canonical_json


def canonical_of(raw: bytes) -> bytes:
    return canonical_json(json.loads(raw.decode("utf-8")))


def sha_tag(body: bytes) -> str:
    return '"sha256:' + hashlib.sha256(body).hexdigest() + '"'


async def test_200_then_304_across_the_chain(system: System) -> None:
    path = f"{system.sim.event_path}/Pilots.json"
    raw = (system.sim.root / path.lstrip("/")).read_bytes()
    assert b"\r\n  " in raw  # the origin writes indented CRLF JSON

    first = await system.get(f"/pits/{system.pits_id}{path}")
    assert first.code == 200
    assert first.body == canonical_of(raw)
    assert first.headers["ETag"] == sha_tag(first.body)
    assert first.headers["X-Pitlink-Cache"] == "MISS"
    assert first.headers["Content-Type"].startswith("application/json")
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    assert first.headers["Cache-Control"].startswith("public, max-age=")
    assert first.headers["Age"] == "0"

    conn = system.relay.registry.get(system.pits_id)
    rx_before = conn.rx_bytes
    origin_before = system.sim.requests_total
    second = await system.get(f"/pits/{system.pits_id}{path}")
    assert second.code == 200
    assert second.body == first.body
    assert second.headers["X-Pitlink-Cache"] == "REVALIDATED"
    # The pits went to the origin again but sent only a 304 frame, not the body.
    assert system.sim.requests_total == origin_before + 1
    assert conn.rx_bytes - rx_before < 400 < len(first.body)
    metrics = system.relay.metrics
    assert metrics.cache_revalidations._value.get() == 1
    assert metrics.cache_bytes_saved._value.get() == len(first.body)

    # The spectator's own validator gets a 304 from the relay, with no body.
    third = await system.get(
        f"/pits/{system.pits_id}{path}", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert third.code == 304
    assert third.body == b""
    assert third.headers["ETag"] == first.headers["ETag"]


async def test_head_is_answered_like_get_without_body(system: System) -> None:
    path = f"/pits/{system.pits_id}{system.sim.event_path}/Event.json"
    got = await system.get(path)
    head = await system.get(path, method="HEAD")
    assert head.code == 200
    assert head.body == b""
    assert head.headers["ETag"] == got.headers["ETag"]
    assert int(head.headers["Content-Length"]) == len(got.body)


async def test_root_aliases_serve_the_only_pits(system: System) -> None:
    direct = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    alias = await system.get("/httpfiles/Channels.json")
    assert alias.code == 200
    assert alias.body == direct.body
    event = await system.get(f"{system.sim.event_path}/Rounds.json")
    assert event.code == 200
    assert isinstance(json.loads(event.body), list)


async def test_index_page_passes_through_as_html(system: System) -> None:
    page = await system.get(f"/pits/{system.pits_id}/")
    assert page.code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert f'new EventManager("events/{system.sim.event_id}")'.encode() in page.body


async def test_missing_results_file_is_an_empty_array(system: System) -> None:
    got = await system.get(f"/pits/{system.pits_id}{system.sim.event_path}/Results.json")
    assert got.code == 200
    assert got.body == b"[]"
    assert got.headers["ETag"] == sha_tag(b"[]")


async def test_replayed_real_event_is_served_canonically(tmp_path, fixtures_root) -> None:
    from pitlink_testkit.fpvtrackside import Simulator

    real = Simulator(root=fixtures_root)
    await real.start()
    s = System(tmp_path, real)
    try:
        await s.start_relay()
        await s.start_agent(no_push=True)
        for file in sorted(fixtures_root.glob("events/*/**/*.json")):
            rel = "/" + file.relative_to(fixtures_root).as_posix()
            got = await s.get(f"/pits/{s.pits_id}{rel}")
            assert got.code == 200, rel
            assert got.body == canonical_of(file.read_bytes()), rel
            assert got.headers["ETag"] == sha_tag(got.body)
    finally:
        await s.close()
        await real.stop()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/httpfiles/Nope\.json ",
    why="the second fetch is BAD_CONTENT (502), so that its audit line can be read",
)
async def test_one_audit_line_per_fetch(system: System, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="pitlink.cloud.audit")
    ok = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    bad = await system.get(f"/pits/{system.pits_id}/httpfiles/Nope.json")
    audits = [r for r in caplog.records if r.name == "pitlink.cloud.audit"]
    assert len(audits) == 2
    first, second = audits
    assert (first.pits_id, first.path, first.status, first.code) == (
        system.pits_id,
        "/httpfiles/Channels.json",
        200,
        None,
    )
    assert first.request_id == ok.headers["X-Request-Id"]
    assert isinstance(first.latency_ms, float)
    assert (second.status, second.code) == (None, "BAD_CONTENT")
    assert second.request_id == bad.headers["X-Request-Id"]
    assert not any(hasattr(r, "body") for r in audits)


async def test_cache_control_rounds_the_window_up(tmp_path, sim) -> None:
    """With the default 1 s window a fresh copy says max-age=1, so a CDN in front caches it."""
    s = System(tmp_path, sim)
    await s.start_relay()
    await s.start_agent(no_push=True)
    try:
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.headers["Cache-Control"] == "public, max-age=1"
    finally:
        await s.close()


async def test_both_ends_of_the_link_send_frames_at_once(system: System) -> None:
    """TCP_NODELAY on the WebSocket at both ends: a frame is never held back by Nagle's
    algorithm waiting for the other end's (delayed) acknowledgement of the one before."""
    ws = system.agent.link._ws
    assert ws is not None and ws.protocol is not None
    box_end = ws.protocol.stream.socket
    assert box_end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    conn = system.relay.registry.get(system.pits_id)
    relay_end = conn.transport.ws_connection.stream.socket  # type: ignore[attr-defined]
    assert relay_end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
