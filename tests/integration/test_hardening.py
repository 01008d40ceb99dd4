"""Protocol hardening: refusals that retry slowly, half-open links, frame caps, key rotation."""

from __future__ import annotations

import asyncio
import json
import logging

import jwt
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from faultproxy import FaultProxy
from support import System, wait_for
from test_control_auth import OPENED, handshake, open_control

from cloud.keys import KeySet, keygen, write_private
from cloud.keystore import revoke
from wire import CloseCode
from wire import messages as m


class RefusingRelay(tornado.websocket.WebSocketHandler):
    """A relay from the future: it speaks another protocol version and says so (4002)."""

    attempts = 0

    def open(self) -> None:
        type(self).attempts += 1
        self.close(CloseCode.VERSION_REFUSED, "relay speaks protocol 2")


async def test_version_refused_is_shown_and_retried_slowly(tmp_path, sim) -> None:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/control", RefusingRelay)]))
    server.add_sockets(sockets)
    s = System(tmp_path, sim)
    s.relay_port = sockets[0].getsockname()[1]
    RefusingRelay.attempts = 0
    try:
        await s.start_agent(wait=False, reconnect_cap=40.0)
        agent = s.agent
        await wait_for(lambda: agent.state.next_attempt_in is not None, what="a refusal")
        assert "protocol version" in agent.state.cloud_error
        assert agent.state.close_code == CloseCode.VERSION_REFUSED
        assert agent.state.next_attempt_in >= 20.0  # half the cap at least: no tight loop
        assert RefusingRelay.attempts == 1
    finally:
        await s.close()
        server.stop()


async def test_revoked_token_is_cut_off_with_4001_and_refused(system: System) -> None:
    agent = system.agent
    jti = jwt.decode(system.token_file.read_text().strip(), options={"verify_signature": False})[
        "jti"
    ]
    revoke(system.relay.keystore.revoked_path, jti, "lost box")
    system.relay.keystore.maybe_reload(force=True)  # what SIGHUP does
    await wait_for(lambda: agent.state.close_code == CloseCode.TOKEN_EXPIRED, what="4001")
    assert "expired or was revoked" in agent.state.cloud_error
    assert agent.state.next_attempt_in >= agent.config.reconnect_cap / 2
    agent.link.reconnect_now()
    await wait_for(
        lambda: "refused this box's token" in (agent.state.cloud_error or ""), what="401"
    )
    assert system.relay.registry.get(system.pits_id) is None


async def test_black_holed_link_is_found_and_replaced(tmp_path, sim, caplog) -> None:
    caplog.set_level(logging.INFO)
    s = System(tmp_path, sim)
    await s.start_relay(ping_interval=0.2, ping_timeout=0.4)
    proxy = FaultProxy("127.0.0.1", s.relay_port)
    await proxy.start()
    try:
        await s.start_agent(
            cloud_url=f"http://127.0.0.1:{proxy.port}", ping_interval=0.2, ping_timeout=0.4
        )
        first = s.relay.registry.get(s.pits_id)
        sessions = s.agent.link.sessions
        assert proxy.blackhole_existing() == 1
        # No FIN, no RST: only the ping deadlines can tell. Both sides must notice.
        await wait_for(lambda: s.agent.link.sessions > sessions, what="a new session")
        await s.connected()
        assert s.relay.registry.get(s.pits_id) is not first
        assert any("relay silent" in r.getMessage() for r in caplog.records)
        await wait_for(lambda: first.state == "closed", what="the relay to drop its side")
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.code == 200
    finally:
        await s.close()
        await proxy.stop()


async def test_relay_refuses_bodies_over_its_cap(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(max_body_bytes=1000, client_rate=None)
    token = s.keys.issue(sub="raw", role="pits", ttl=600)
    ws = await open_control(s.url, token)
    try:
        await handshake(ws, "raw")
        await wait_for(lambda: s.relay.registry.get("raw") is not None, what="hello")
        pending = asyncio.ensure_future(s.get("/pits/raw/httpfiles/Big.json"))
        frame = m.decode(await ws.read_message(), sender="cloud")
        while frame.type != "fetch":
            frame = m.decode(await ws.read_message(), sender="cloud")
        assert frame.message.timeout_ms <= 8000  # the relay's deadline caps the pits' own
        body = b"[" + b"1," * 600 + b"1]"
        await ws.write_message(
            m.encode(m.Response(status=200, body=body), frame_id=frame.id, now_ms=0)
        )
        got = await pending
        assert got.code == 502
        assert json.loads(got.body)["error"]["code"] == "TOO_LARGE"
        # A frame past the WebSocket cap closes the connection itself (1009).
        await ws.write_message("x" * 200_000)
        while await ws.read_message() is not None:
            pass
        assert ws.close_code == 1009
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


async def test_agent_drops_a_link_that_sends_oversized_frames(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    await s.start_agent(max_body_bytes=1000)
    try:
        sessions = s.agent.link.sessions
        s.relay.registry.get(s.pits_id).transport.send("x" * 500_000)
        await wait_for(lambda: s.agent.link.sessions > sessions, what="a new session")
        await s.connected()
    finally:
        await s.close()


async def test_json_path_with_html_content_type_is_not_cached(tmp_path, sim, caplog) -> None:
    caplog.set_level(logging.WARNING)
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, freshness=60.0)
    token = s.keys.issue(sub="raw", role="pits", ttl=600)
    ws = await open_control(s.url, token)

    async def answer_next() -> None:
        frame = m.decode(await ws.read_message(), sender="cloud")
        while frame.type != "fetch":
            frame = m.decode(await ws.read_message(), sender="cloud")
        reply = m.Response(status=200, content_type="text/html", body=b"[1]")
        await ws.write_message(m.encode(reply, frame_id=frame.id, now_ms=0))

    try:
        await handshake(ws, "raw")
        await wait_for(lambda: s.relay.registry.get("raw") is not None, what="hello")
        for _ in range(2):
            answering = asyncio.ensure_future(answer_next())
            got = await s.get("/pits/raw/events/e/Event.json")
            await answering
            assert got.code == 200
            assert got.headers["X-Pitlink-Cache"] == "MISS"  # never cached, so never a HIT
        assert len(s.relay.cache) == 0
        warnings = [r for r in caplog.records if "non-JSON content type" in r.getMessage()]
        assert warnings and warnings[0].pits_id == "raw"
        assert warnings[0].path == "/events/e/Event.json"
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


async def test_key_rotation_without_restart(system: System) -> None:
    relay, agent = system.relay, system.agent
    old_kid = relay.keystore.keys.kids[0]
    keygen(system.jwks, "k2")
    # Picked up by itself from the file's modification time (checked once a second).
    await wait_for(lambda: relay.keystore.keys.kids == ["k2", old_kid], what="the new key set")
    new_token = relay.keystore.issue(sub="pits-2", role="pits", ttl=600)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    ws = await open_control(system.url, new_token)
    await handshake(ws, "pits-2")
    await wait_for(lambda: relay.registry.get("pits-2") is not None, what="a new-key token")
    # The agent's old-key token still works until the old key is removed.
    sessions = agent.link.sessions
    agent.link.reconnect_now()
    await wait_for(lambda: agent.link.sessions > sessions, what="reconnect")
    await system.connected()
    # Remove the old key: its connections are cut (4001) and its tokens refused.
    jwks = json.loads(system.jwks.read_text())
    jwks["keys"] = [k for k in jwks["keys"] if k["kid"] != old_kid]
    write_private(system.jwks, json.dumps(jwks))
    relay.keystore.maybe_reload(force=True)
    await wait_for(lambda: agent.state.close_code == CloseCode.TOKEN_EXPIRED, what="4001")
    agent.link.reconnect_now()
    await wait_for(
        lambda: "refused this box's token" in (agent.state.cloud_error or ""), what="401"
    )
    assert relay.registry.get("pits-2") is not None  # the new key's connection stays
    ws.close()
    OPENED.clear()


async def test_token_renewal_over_the_connection(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    s.token_file.write_text(s.keys.issue(sub=s.pits_id, role="pits", ttl=86400))
    old_token = s.token_file.read_text()
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.1)
    await s.start_agent()
    try:
        await wait_for(lambda: s.token_file.read_text() != old_token, what="the renewed token")
        new_token = s.token_file.read_text().strip()
        claims = KeySet.load(s.jwks).verify(new_token, role="pits")
        assert claims["sub"] == s.pits_id
        assert claims["exp"] - claims["iat"] == 86400
        assert (s.token_file.stat().st_mode & 0o777) == 0o600
        sessions = s.agent.link.sessions
        s.agent.link.reconnect_now()
        await wait_for(lambda: s.agent.link.sessions > sessions, what="reconnect")
        await s.connected()
        assert s.relay.registry.get(s.pits_id).claims["jti"] == claims["jti"]
    finally:
        await s.close()
