"""The admin page and API on an origin of their own, where no pits content is ever served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import tornado.httpclient

from pitlink_testkit.system import System

ADMIN_HOST = "admin.relay.test"


async def fetch(url: str, *, host: str | None = None, token: str | None = None):
    headers = {}
    if host is not None:
        headers["Host"] = host
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    client = tornado.httpclient.AsyncHTTPClient()
    return await client.fetch(url, headers=headers, raise_error=False, request_timeout=10)


async def test_admin_on_a_port_of_its_own(system: System) -> None:
    await system.stop_agent()
    await system.stop_relay()
    await system.start_relay(admin_port=0, freshness=0.0, client_rate=None)
    await system.start_agent()
    relay = system.relay
    token = system.keys.issue(sub="alice", role="admin", ttl=600)
    admin = f"http://127.0.0.1:{relay.admin_port}"
    assert relay.admin_port not in (None, relay.port)
    # The public port no longer has an admin page or API.
    assert (await system.get("/admin")).code == 404
    assert (await fetch(system.url + "/admin/api/overview", token=token)).code == 404
    # The admin port has them, and nothing else.
    page = await fetch(admin + "/admin")
    assert page.code == 200 and b"Pitlink" in page.body
    overview = await fetch(admin + "/admin/api/overview", token=token)
    assert overview.code == 200
    assert json.loads(overview.body)["connections"][0]["pitsId"] == system.pits_id
    data = await fetch(f"{admin}/pits/{system.pits_id}/httpfiles/Channels.json")
    assert data.code == 404
    assert (await fetch(admin + "/events/x/Event.json")).code == 404
    # The public side works as before.
    assert (await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")).code == 200


async def test_admin_on_a_host_name_of_its_own(system: System) -> None:
    await system.stop_agent()
    await system.stop_relay()
    await system.start_relay(admin_host=ADMIN_HOST, freshness=0.0, client_rate=None)
    await system.start_agent()
    token = system.keys.issue(sub="alice", role="admin", ttl=600)
    pits_path = f"/pits/{system.pits_id}/httpfiles/Channels.json"
    # On the admin host: the admin, and no pits content whatever the path.
    page = await fetch(system.url + "/admin", host=ADMIN_HOST)
    assert page.code == 200
    api = await fetch(system.url + "/admin/api/overview", host=f"{ADMIN_HOST}:443", token=token)
    assert api.code == 200
    for path in (pits_path, "/httpfiles/Channels.json", "/", "/control"):
        got = await fetch(system.url + path, host=ADMIN_HOST)
        assert got.code == 404, path
    # On any other host: pits content, and no admin.
    assert (await fetch(system.url + pits_path, host="relay.test")).code == 200
    assert (await fetch(system.url + "/admin", host="relay.test")).code == 404
    no_admin = await fetch(system.url + "/admin/api/overview", host="relay.test", token=token)
    assert no_admin.code == 404


def _stalled(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return sock


async def test_a_slow_header_is_not_held_for_an_hour(system: System) -> None:
    await system.stop_agent()
    await system.stop_relay()
    await system.start_relay(idle_timeout=0.5)
    socks = [_stalled(system.relay_port) for _ in range(20)]
    try:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for sock in socks:
            sock.settimeout(10)
            # The relay closes the connection at its deadline: recv sees the end.
            assert await loop.run_in_executor(None, sock.recv, 1024) == b""
        assert time.monotonic() - started < 9
        assert (await system.get("/healthz")).code == 200
    finally:
        for sock in socks:
            sock.close()


async def test_a_header_past_the_bound_is_refused(system: System) -> None:
    # Tornado closes the connection on an oversized header: the client sees it dropped.
    with contextlib.suppress(ConnectionResetError):
        got = await system.get("/healthz", headers={"X-Big": "x" * (64 * 1024)})
        assert got.code == 599
    assert (await system.get("/healthz")).code == 200
