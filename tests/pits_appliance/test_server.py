"""The status port's server: the connection cap, the accept guard and the Host rules, pure and
then on real loopback sockets."""

from __future__ import annotations

import errno
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.netutil

from pitlink_testkit.waiting import wait_for
from pits_appliance.cli import BrokenSettings
from pits_appliance.server import (
    AcceptGuard,
    ConnectionCap,
    StatusServer,
    host_allowed,
    peer_of,
    same_origin,
    short_id,
)
from pits_appliance.status import make_status_app

# -- the cap, pure --------------------------------------------------------------------------------


def test_cap_refuses_past_the_limit_while_everyone_is_new() -> None:
    cap = ConnectionCap(3, per_address=3, grace=1.0)
    keys = [cap.admit(f"10.0.0.{i}", now=0.0) for i in range(3)]
    assert all(key is not None and evict is None for key, evict in keys)
    assert cap.admit("10.0.0.9", now=0.5) == (None, None)  # all within their grace
    assert len(cap) == 3


def test_cap_makes_room_by_closing_the_longest_waiting() -> None:
    cap = ConnectionCap(3, per_address=3, grace=1.0)
    a, _ = cap.admit("10.0.0.1", now=0.0)
    b, _ = cap.admit("10.0.0.2", now=0.1)
    c, _ = cap.admit("10.0.0.3", now=0.2)
    assert a is not None and b is not None and c is not None
    cap.serving(a)  # a request is being answered on a: never closed for a newcomer
    key, evict = cap.admit("10.0.0.4", now=5.0)
    assert key is not None and evict == b
    assert len(cap) == 3
    cap.release(b)  # the server's own close of b, later: nothing changes
    assert len(cap) == 3
    cap.waiting(a, now=5.0)  # a's answer went out; it waits for the next request
    key2, evict2 = cap.admit("10.0.0.5", now=5.5)
    assert key2 is not None and evict2 == c  # c waited since 0.2; a only since 5.0


def test_one_address_gets_a_share_only() -> None:
    cap = ConnectionCap(64, per_address=4, grace=1.0)
    for _ in range(4):
        assert cap.admit("10.0.0.66", now=0.0)[0] is not None
    assert cap.admit("10.0.0.66", now=0.5) == (None, None)  # its own share is full
    assert cap.admit("10.0.0.7", now=0.5)[0] is not None  # others are not affected
    # Later, the same address may replace its own longest-waiting connection, nobody else's.
    key, evict = cap.admit("10.0.0.66", now=2.0)
    assert key is not None and evict is not None
    assert len(cap) == 5


def test_release_frees_the_address_share() -> None:
    cap = ConnectionCap(2, per_address=1)
    key, _ = cap.admit("a", now=0.0)
    assert key is not None
    assert cap.admit("a", now=0.0) == (None, None)
    cap.release(key)
    assert cap.admit("a", now=0.0)[0] is not None


@pytest.mark.parametrize(
    ("address", "peer"),
    [
        (("192.168.1.20", 50000), "192.168.1.20"),
        (("::ffff:192.168.1.20", 50000, 0, 0), "192.168.1.20"),
        (("2001:db8:1:2:aaaa::1", 50000, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::7", 50000, 0, 0), "2001:db8:1:2::/64"),  # the same host's /64
        ("/run/socket", ""),
    ],
)
def test_a_share_is_per_ipv4_address_or_ipv6_64(address: object, peer: str) -> None:
    assert peer_of(address) == peer


def test_accept_guard_pauses_more_while_it_goes_on_and_logs_once_a_second() -> None:
    guard = AcceptGuard(first_pause=0.05, max_pause=1.0, every=1.0)
    pauses, lines = [], []
    now = 0.0
    for _ in range(40):
        pause, held = guard.failed(errno.EMFILE, now)
        pauses.append(pause)
        if held is not None:
            lines.append((now, held))
        now += pause
    assert pauses[:4] == [0.05, 0.1, 0.2, 0.4] and max(pauses) == 1.0
    assert len(lines) <= now + 1  # at most one line a second
    assert sum(held for _, held in lines) + len(lines) <= 40
    guard.succeeded()
    assert guard.failed(errno.EMFILE, now)[0] == 0.05


# -- who may ask, pure ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pits_id", "short"),
    [
        ("club-42", "club-42"),
        ("Club_42 Racing", "club-42"),
        ("pits-1", "pits-1"),
        ("abcdefgh-ij", "abcdefgh"),
        ("a-b-c-d-", "a-b-c-d"),
        ("ümlaut", "-mlaut"),
        ("----", ""),
        ("", ""),
    ],
)
def test_short_id_as_the_image_names_the_box(pits_id: str, short: str) -> None:
    assert short_id(pits_id) == short


@pytest.mark.parametrize(
    ("host", "local", "allowed"),
    [
        ("localhost", None, True),
        ("LOCALHOST:8081", None, True),
        ("127.0.0.1:8081", None, True),
        ("127.0.0.2", None, True),
        ("[::1]:80", None, True),
        ("pitlink-club-42.local", None, True),
        ("PITLINK-CLUB-42.LOCAL.", None, True),
        ("pitlink-club-42.local:80", None, True),
        ("boxhost", None, True),
        ("boxhost.local", None, True),
        ("pitlink-club-42", None, True),  # bare, as some routers' DNS serves it
        ("pitlink-club-42.lan", None, True),
        ("boxhost.fritz.box", None, True),
        ("boxhost.home.arpa", None, True),
        ("pitlink-club-42.evil.example", None, False),
        ("boxhost.lan.evil.example", None, False),
        ("192.168.1.50", "192.168.1.50", True),
        ("192.168.1.50:80", "::ffff:192.168.1.50", True),
        ("[fe80::1]", "fe80::1%eth0", True),
        ("192.168.1.51", "192.168.1.50", False),  # another box's address
        ("10.0.0.1", None, False),
        ("evil.example", None, False),
        ("evil.example:8081", "127.0.0.1", False),  # rebinding to loopback: still refused
        ("pitlink-club-43.local", None, False),
        ("pitlink-club-42.local.evil.example", None, False),
        ("localhost.evil.example", None, False),
        ("", None, False),
        (None, None, False),
        ("user@localhost", None, False),
        ("localhost:80:80", None, False),
        ("[::1", None, False),
        ("localhost/x", None, False),
    ],
)
def test_host_names_this_box(host: str | None, local: str | None, allowed: bool) -> None:
    assert host_allowed(host, local_address=local, pits_id="Club-42", hostname="BoxHost") is allowed


def test_without_a_pits_id_only_the_host_name_and_addresses() -> None:
    assert not host_allowed("pitlink-.local", local_address=None, pits_id="", hostname="pitlink")
    assert host_allowed("pitlink.local", local_address=None, pits_id="", hostname="pitlink")


@pytest.mark.parametrize(
    ("origin", "site", "host", "ok"),
    [
        ("http://127.0.0.1:8081", None, "127.0.0.1:8081", True),
        ("http://127.0.0.1:8081", "same-origin", "127.0.0.1:8081", True),
        (None, "same-origin", "127.0.0.1:8081", True),
        ("http://pitlink-club-42.local", None, "pitlink-club-42.local", True),
        ("http://pitlink-club-42.local:80", None, "pitlink-club-42.local", True),
        ("http://evil.example", None, "127.0.0.1:8081", False),
        ("http://127.0.0.1:8082", None, "127.0.0.1:8081", False),  # another port: another origin
        ("https://127.0.0.1:8081", None, "127.0.0.1:8081", False),
        ("null", None, "127.0.0.1:8081", False),
        ("http://127.0.0.1:8081", "cross-site", "127.0.0.1:8081", False),
        (None, "same-site", "127.0.0.1:8081", False),
        (None, "none", "127.0.0.1:8081", False),
        (None, None, "127.0.0.1:8081", False),  # neither says where it comes from
        ("http://127.0.0.1:8081", None, None, False),
        ("http://127.0.0.1:99999", None, "127.0.0.1:99999", False),
    ],
)
def test_same_origin(origin: str | None, site: str | None, host: str | None, ok: bool) -> None:
    assert same_origin(origin, site, host=host, scheme="http") is ok


# -- the server on real sockets -----------------------------------------------------------------


class Port:
    def __init__(self, server: StatusServer, port: int):
        self.server = server
        self.port = port
        self.http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    def stall(
        self, source: str = "127.0.0.1", data: bytes = b"GET / HTTP/1.1\r\nHost: x"
    ) -> socket.socket:
        """A connection that sends half a header and then nothing."""
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        s.sendall(data)
        s.setblocking(False)
        return s

    async def get(self, path: str = "/healthz", source: str = "127.0.0.1", **kw: object):
        return await self.http.fetch(
            f"http://127.0.0.1:{self.port}{path}",
            raise_error=False,
            network_interface=source,
            request_timeout=5,
            **kw,
        )


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
async def status_port() -> AsyncIterator[Port]:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = StatusServer(
        make_status_app(BrokenSettings("test")),
        cap=ConnectionCap(8, per_address=4, grace=0.3),
        idle_connection_timeout=2.0,
    )
    server.add_sockets(sockets)
    port = Port(server, sockets[0].getsockname()[1])
    yield port
    port.http.close()
    server.stop()
    await server.close_all_connections()


async def test_past_the_cap_new_connections_are_closed_at_once(status_port: Port) -> None:
    slow = [status_port.stall() for _ in range(40)]
    try:
        await wait_for(
            lambda: sum(closed_by_server(s) for s in slow) >= 36, what="36 refused at once"
        )
        assert len(status_port.server.cap) == 4  # this address's share, no more
        assert len(status_port.server._connections) == 4
        # Another address still gets in at once.
        got = await status_port.get(source="127.0.0.2")
        assert got.code == 503 and json.loads(got.body)["wsConnected"] is False
        # The same address too, once its stalled connections have waited past the grace: the
        # longest-waiting one makes room.
        got = await wait_for(
            lambda: _ok(status_port.get(source="127.0.0.1")), what="a request from 127.0.0.1"
        )
        assert got.code == 503
        assert len(status_port.server.cap) <= 4
    finally:
        for s in slow:
            s.close()


async def _ok(pending) -> object:
    """The response, or None when the connection was closed (the cap said no)."""
    try:
        return await pending
    except (OSError, tornado.httpclient.HTTPClientError):
        return None


async def test_many_addresses_fill_the_cap_and_no_more(status_port: Port) -> None:
    slow = [status_port.stall(f"127.0.0.{10 + i % 5}") for i in range(30)]
    try:
        await wait_for(lambda: sum(closed_by_server(s) for s in slow) >= 22, what="22 refused")
        assert len(status_port.server.cap) == 8
        got = await wait_for(lambda: _ok(status_port.get(source="127.0.0.3")), what="a request")
        assert got.code == 503
    finally:
        for s in slow:
            s.close()
    # The closed connections give their places back.
    await wait_for(lambda: len(status_port.server.cap) == 0, what="the cap to empty")


async def test_slow_header_is_cut_by_the_idle_timeout(status_port: Port) -> None:
    s = status_port.stall()
    try:
        await wait_for(lambda: closed_by_server(s), timeout=5, what="the header timeout")
        assert len(status_port.server.cap) == 0
    finally:
        s.close()


async def test_oversized_header_is_refused(status_port: Port) -> None:
    s = status_port.stall(data=b"GET / HTTP/1.1\r\nX: " + b"a" * 9000)
    try:
        await wait_for(lambda: closed_by_server(s), timeout=5, what="the header cap")
    finally:
        s.close()


def test_the_limits_are_set() -> None:
    server = StatusServer(make_status_app(BrokenSettings("test")))
    params = server.conn_params
    assert params.header_timeout == 10.0 and params.body_timeout == 10.0
    assert params.max_header_size == 8 * 1024
    assert server.cap.limit == 64


async def test_a_flood_of_requests_logs_a_line_a_second(
    status_port: Port, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tornado.access")
    for _ in range(200):
        got = await status_port.get("/healthz", source="127.0.0.5")
        assert got.code == 503
    for _ in range(50):
        got = await status_port.get("/nowhere", source="127.0.0.5")
        assert got.code == 404
    lines = [r for r in caplog.records if r.name == "tornado.access"]
    assert 2 <= len(lines) <= 6, [r.getMessage() for r in lines]
    assert lines[0].getMessage().startswith("503 GET /healthz (127.0.0.5)")
    assert lines[0].levelname == "INFO"  # a health answer, not an error
    assert any(r.getMessage().startswith("404 GET /nowhere") for r in lines)


def test_the_unit_gives_the_agent_room_beyond_the_cap() -> None:
    unit = (
        Path(__file__).resolve().parents[2] / "pits_appliance" / "systemd" / "pits-agent.service"
    ).read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("LimitNOFILE=")]
    assert int(line.partition("=")[2]) >= 4096 > 16 * ConnectionCap().limit
