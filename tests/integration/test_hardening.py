"""Protocol hardening: refusals that retry slowly, half-open links, frame caps, key rotation."""

from __future__ import annotations

import asyncio
import json
import logging

import jwt
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from cloud.keys import KeySet, keygen, write_private
from cloud.keystore import revoke
from pitlink_testkit.control import OPENED, handshake, open_control
from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode, ErrorCode
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
    await wait_for(lambda: "token was revoked" in (agent.state.cloud_error or ""), what="401")
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
        # The old connection stays registered until the new one's hello replaces it.
        await wait_for(
            lambda: s.relay.registry.get(s.pits_id) not in (None, first), what="the new session"
        )
        assert any("relay silent" in r.getMessage() for r in caplog.records)
        await wait_for(lambda: first.state == "closed", what="the relay to drop its side")
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.code == 200
    finally:
        await s.close()
        await proxy.stop()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/raw/httpfiles/Big\.json ",
    why="a body over the relay's cap is refused: 502",
)
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


async def raw_pits(s: System, pits_id: str = "raw"):
    """A hand-driven pits connection: the test writes what a hostile pits would."""
    ws = await open_control(s.url, s.keys.issue(sub=pits_id, role="pits", ttl=600))
    await handshake(ws, pits_id)
    await wait_for(lambda: s.relay.registry.get(pits_id) is not None, what="hello")
    return ws


async def answer_next(ws, reply: m.Message) -> None:
    frame = m.decode(await ws.read_message(), sender="cloud")
    while frame.type != "fetch":
        frame = m.decode(await ws.read_message(), sender="cloud")
    await ws.write_message(m.encode(reply, frame_id=frame.id, now_ms=0))


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/raw/events/e/Rounds\.json ",
    why="a script labelled as JSON on a .json path is BAD_CONTENT: 502",
)
async def test_the_pits_label_never_chooses_the_content_type(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, freshness=60.0)
    ws = await raw_pits(s)
    try:
        # JSON labelled as HTML: served as JSON, the label ignored.
        answering = asyncio.ensure_future(
            answer_next(ws, m.Response(status=200, content_type="text/html", body=b"[1]"))
        )
        got = await s.get("/pits/raw/events/e/Event.json")
        await answering
        assert (got.code, got.body) == (200, b"[1]")
        assert got.headers["Content-Type"] == "application/json; charset=utf-8"
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Content-Security-Policy"] == "sandbox allow-scripts"
        # A script labelled as JSON on a .json path: the body is judged, not the label.
        page = b"<script>alert(document.domain)</script>"
        answering = asyncio.ensure_future(
            answer_next(ws, m.Response(status=200, content_type="application/json", body=page))
        )
        got = await s.get("/pits/raw/events/e/Rounds.json")
        await answering
        assert got.code == 502
        assert json.loads(got.body)["error"]["code"] == "BAD_CONTENT"
        assert ("raw", "GET", "/events/e/Rounds.json") not in s.relay.cache._entries
        # An SVG page under any name is served by its path's extension, here a download.
        answering = asyncio.ensure_future(
            answer_next(ws, m.Response(status=200, content_type="image/svg+xml", body=page))
        )
        got = await s.get("/pits/raw/httpfiles/logo")
        await answering
        assert got.headers["Content-Type"] == "application/octet-stream"
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


@pytest.mark.parametrize(
    "details",
    [
        {"httpStatus": 302, "retryAfter": 1},
        {"httpStatus": -5, "retryAfter": -5},
        {"httpStatus": 200, "retryAfter": 1e300},
        {"retryAfter": "tomorrow"},
    ],
)
@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/raw/events/e/Event\.json ",
    why="the hostile pits answers BUSY with its own status and Retry-After; the relay says 503",
)
async def test_a_pits_never_chooses_the_status_line(tmp_path, sim, details) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    ws = await raw_pits(s)
    try:
        error = m.Error(code=ErrorCode.BUSY, message="busy", details=details)
        answering = asyncio.ensure_future(answer_next(ws, error))
        got = await s.get("/pits/raw/events/e/Event.json")
        await answering
        assert got.code == 503
        assert got.headers["Retry-After"] == "1"
        assert json.loads(got.body)["error"] == {"code": "BUSY", "message": "busy"}
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/raw/events/e/Event\.json ",
    why="the hostile pits answers BUSY with Retry-After 1e400; the relay says 503, Retry-After 1",
)
async def test_retry_after_of_1e400_from_a_pits_is_no_traceback(tmp_path, sim) -> None:
    """`1e400` decodes to infinity: it once reached math.ceil and gave a 500."""
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    ws = await raw_pits(s)
    try:

        async def answer() -> None:
            frame = m.decode(await ws.read_message(), sender="cloud")
            while frame.type != "fetch":
                frame = m.decode(await ws.read_message(), sender="cloud")
            details = '{"httpStatus": 500, "retryAfter": 1e400}'  # not expressible in Python
            payload = f'{{"code": "BUSY", "message": "m", "details": {details}}}'
            await ws.write_message(
                f'{{"id": "{frame.id}", "type": "error", "ts": 0, "payload": {payload}}}'
            )

        answering = asyncio.ensure_future(answer())
        got = await s.get("/pits/raw/events/e/Event.json")
        await answering
        assert (got.code, got.headers["Retry-After"]) == (503, "1")
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


@pytest.mark.parametrize("status", [302, 204, 101])
@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/raw/events/e/Event\.json ",
    why="a response status the protocol does not allow fails the fetch: 502",
)
async def test_a_response_status_the_protocol_does_not_allow_fails_the_fetch(
    tmp_path, sim, status
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    ws = await raw_pits(s)
    try:

        async def answer() -> None:
            frame = m.decode(await ws.read_message(), sender="cloud")
            while frame.type != "fetch":
                frame = m.decode(await ws.read_message(), sender="cloud")
            payload = {"status": status, "headers": {"Location": "https://evil.example/"}}
            await ws.write_message(
                json.dumps({"id": frame.id, "type": "response", "ts": 0, "payload": payload})
            )

        answering = asyncio.ensure_future(answer())
        got = await s.get("/pits/raw/events/e/Event.json")
        await answering
        assert got.code == 502
        assert "Location" not in got.headers
        assert json.loads(got.body)["error"]["code"] == "BAD_CONTENT"
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


async def test_a_hello_with_an_8_mib_sw_version_is_closed_1008(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    ws = await open_control(s.url, s.keys.issue(sub="big", role="pits", ttl=600))
    try:
        hello = m.decode(await ws.read_message(), sender="cloud")
        assert hello.type == "hello"
        payload = {"protocolVersion": 1, "pitsId": "big", "swVersion": "v" * (8 * 1024 * 1024)}
        await ws.write_message(
            json.dumps({"id": "h", "type": "hello", "ts": 0, "payload": payload})
        )
        while await ws.read_message() is not None:
            pass
        assert ws.close_code == 1008
        assert "swVersion" in (ws.close_reason or "")
        assert s.relay.registry.get("big") is None
        admin = s.keys.issue(sub="ops", role="admin", ttl=600)
        got = await s.get("/admin/api/connections", headers={"Authorization": f"Bearer {admin}"})
        assert json.loads(got.body)["connections"] == []
    finally:
        ws.close()
        OPENED.clear()
        await s.close()


async def test_a_flood_of_bad_frames_is_cut_off_and_logged_sparingly(tmp_path, sim, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.cloud.control")
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    ws = await raw_pits(s)
    try:
        for i in range(5000):
            await ws.write_message(f"junk {i}")
        while await ws.read_message() is not None:
            pass
        assert ws.close_code == 1008
        assert ws.close_reason == "too many bad frames"
        dropped = s.relay.metrics.frames_dropped.labels("malformed")._value.get()
        assert 100 < dropped < 5000  # cut off soon after the budget, not after the flood
        lines = [r for r in caplog.records if r.getMessage() == "dropped frame"]
        assert 1 <= len(lines) <= 3
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
        lambda: (
            "made by another relay (or this relay's keys were replaced)"
            in (agent.state.cloud_error or "")
        ),
        what="401",
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


async def _token_frames(ws, settled) -> list[str]:
    """The tokens the relay sent on this connection, answering nothing: once `settled()` holds
    (the relay is done renewing), close it and read all the relay sent to the end. The token
    may still be on its way when the relay has recorded its renewal: reading until then
    would miss it."""
    await wait_for(settled, what="the relay done renewing")
    ws.close(CloseCode.NORMAL, "bye")
    tokens: list[str] = []
    while (text := await asyncio.wait_for(ws.read_message(), 10.0)) is not None:
        frame = m.decode(text, sender="cloud")
        if isinstance(frame.message, m.Token):
            tokens.append(frame.message.token)
    assert ws.close_code == CloseCode.NORMAL, "the relay closed the connection, not the test"
    return tokens


async def test_a_token_is_renewed_once_however_often_it_connects(tmp_path, sim, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.cloud")
    s = System(tmp_path, sim)
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.05)
    first = s.keys.issue(sub="p9", role="pits", ttl=86400)
    first_jti = jwt.decode(first, options={"verify_signature": False})["jti"]
    try:
        renewals = []
        for _ in range(3):  # a box that never managed to store its renewal
            ws = await open_control(s.url, first)
            await handshake(ws, "p9")
            await wait_for(lambda: s.relay.registry.get("p9") is not None, what="hello")
            conn = s.relay.registry.get("p9")

            def settled(conn=conn) -> bool:
                return conn.renewed and conn._renewing is not None and conn._renewing.done()

            renewals += await _token_frames(ws, settled)
            await wait_for(lambda: s.relay.registry.get("p9") is None, what="the close")
        assert len(renewals) == 1
        claims = KeySet.load(s.jwks).verify(renewals[0], role="pits")
        assert claims["fam"] == first_jti and claims["jti"] != first_jti
        renewed = [
            r for r in caplog.records if r.getMessage() == "token renewed over the connection"
        ]
        assert [(r.jti, r.new_jti) for r in renewed] == [(first_jti, claims["jti"])]
        assert sum(r.getMessage() == "token renewed before; not again" for r in caplog.records) == 2
    finally:
        OPENED.clear()
        await s.close()


async def test_revoking_the_issued_token_cuts_off_its_renewal(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    s.token_file.write_text(s.keys.issue(sub=s.pits_id, role="pits", ttl=86400))
    issued = s.token_file.read_text().strip()
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.1)
    await s.start_agent()
    try:
        await wait_for(lambda: s.token_file.read_text().strip() != issued, what="the renewal")
        sessions = s.agent.link.sessions
        s.agent.link.reconnect_now()
        await wait_for(lambda: s.agent.link.sessions > sessions, what="a reconnect")
        await s.connected()
        conn = s.relay.registry.get(s.pits_id)
        assert conn.claims["jti"] != jwt.decode(issued, options={"verify_signature": False})["jti"]
        # The operator revokes the token they issued: the renewal the box holds goes with it.
        issued_jti = jwt.decode(issued, options={"verify_signature": False})["jti"]
        revoke(s.jwks.with_name("jwks.json.revoked"), issued_jti)
        await wait_for(lambda: conn.state == "closed", what="the live link to be cut")
        assert s.relay.registry.get(s.pits_id) is None
        await wait_for(lambda: s.agent.state.cloud_error, what="the box to say why")
        assert s.relay.registry.get(s.pits_id) is None
    finally:
        await s.close()
