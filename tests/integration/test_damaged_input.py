"""Issue 25's attacks on what the programs read, against the programs as they are run.

- A damaged offers.json (100,000 opening brackets) in the relay's bundle folder raised
  RecursionError out of every hello: every box looped connect/close and the relay logged a
  traceback a second. Now the relay says it once and every box connects and serves.
- Deep JSON at FPVTrackside's `/current` killed the agent's FPVTrackside check; the agent then
  withheld the watchdog and systemd restarted it, again and again. Now the check goes on and
  so does WATCHDOG=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.web
import tornado.websocket

from cloud.keys import KeySet, keygen
from pitlink_testkit.fpvtrackside import SERVER_HEADER
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import wait_for
from wire import PROTOCOL_VERSION
from wire import messages as m

REPO = Path(__file__).resolve().parents[2]
DEEP = b"[" * 100_000

pytestmark = pytest.mark.timeout(90)


def records(log: Path) -> list[dict]:
    """Every line of a program's log, each one JSON object (a traceback would not be)."""
    lines = log.read_text().splitlines()
    for line in lines:
        assert "Traceback" not in line, line
    return [json.loads(line) for line in lines]


def events(log: Path, event: str) -> list[dict]:
    return [r for r in records(log) if r["event"].startswith(event)]


async def get(url: str, **kwargs) -> tornado.httpclient.HTTPResponse | None:
    """The answer, or None while nothing listens there yet."""
    try:
        return await tornado.httpclient.AsyncHTTPClient().fetch(
            url, raise_error=False, request_timeout=10, **kwargs
        )
    except OSError:
        return None


def agent_args(tmp_path: Path, *, relay_port: int, fpvtrackside: str, status_port: int) -> list:
    config = tmp_path / "agent.conf"
    config.write_text(
        f"CLOUD_URL=http://127.0.0.1:{relay_port}\nTOKEN_FILE={tmp_path / 'token'}\n"
        f"FPVTRACKSIDE={fpvtrackside}\n"
    )
    return [
        *("-m", "pits_appliance", "--config", str(config)),
        *("--status-host", "127.0.0.1", "--status-port", str(status_port)),
        *("--reconnect-base", "0.1"),
    ]


def keys(tmp_path: Path, sub: str = "box") -> tuple[Path, KeySet]:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "k1")
    keyset = KeySet.load(jwks)
    (tmp_path / "token").write_text(keyset.issue(sub=sub, role="pits", ttl=86400))
    return jwks, keyset


async def say_hello(
    relay_port: int, token: str, pits_id: str
) -> tornado.websocket.WebSocketClientConnection:
    """A box's handshake, as the agent does it: the hello hooks run on the relay."""
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{relay_port}/control?role=pits&version={PROTOCOL_VERSION}",
        headers={"Authorization": f"Bearer {token}"},
    )
    ws = await tornado.websocket.websocket_connect(request)
    assert json.loads(await ws.read_message())["type"] == "hello"
    hello = m.PitsHello(protocol_version=PROTOCOL_VERSION, pits_id=pits_id, sw_version="1.0")
    await ws.write_message(m.encode(hello, now_ms=0))
    return ws


async def test_a_damaged_offers_file_keeps_no_box_off_the_relay(tmp_path: Path, procs) -> None:
    jwks, keyset = keys(tmp_path)
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "offers.json").write_bytes(DEEP)
    sim_port, relay_port, status_port = free_port(), free_port(), free_port()
    procs.start(["scripts/fpvtrackside_sim.py", "--port", str(sim_port)], tmp_path / "sim.log")
    relay_log = tmp_path / "relay.log"
    procs.start(
        [
            *("-m", "cloud", "serve", "--port", str(relay_port), "--jwks", str(jwks)),
            *("--bundle-dir", str(bundles), "--ping-interval", "1", "--ping-timeout", "10"),
        ],
        relay_log,
    )
    agent_log = tmp_path / "agent.log"
    procs.start(
        agent_args(
            tmp_path,
            relay_port=relay_port,
            fpvtrackside=f"127.0.0.1:{sim_port}",
            status_port=status_port,
        ),
        agent_log,
    )
    relay = f"http://127.0.0.1:{relay_port}"

    async def served() -> bool:
        got = await get(f"{relay}/pits/box/httpfiles/Channels.json")
        return got is not None and got.code == 200

    await wait_for(served, timeout=30, what="the box to serve through the relay")
    # Other boxes say hello too (each hello asks for the offers): each is taken and stays.
    other = keyset.issue(sub="other", role="pits", ttl=600)

    async def connections(n: int) -> bool:
        got = await get(f"{relay}/healthz")
        return got is not None and json.loads(got.body)["connections"] == n

    for _ in range(5):
        ws = await say_hello(relay_port, other, "other")
        await wait_for(lambda: connections(2), what="the other box to be taken")
        ws.close()
        await wait_for(lambda: connections(1), what="the other box to be gone")
    # A damaged bundle record behind a repaired offers file: said once, over many ticks.
    bundle_id = "0123456789abcdef"
    (bundles / f"{bundle_id}.json").write_bytes(b'{"id": ' + b"[" * 900 + b"]" * 900 + b"}")
    (bundles / "offers.json.tmp").write_text(json.dumps({"box": bundle_id}))
    os.replace(bundles / "offers.json.tmp", bundles / "offers.json")
    await wait_for(
        lambda: events(relay_log, "bundle metadata unreadable"), what="the damaged record said"
    )
    await asyncio.sleep(1.0)  # more ticks ask for the record: none of them may say it again
    assert await served()
    [offers] = events(relay_log, "offers file unreadable")
    assert offers["level"] == "ERROR" and offers["path"] == str(bundles / "offers.json")
    assert "not JSON" in offers["error"]
    [record] = events(relay_log, "bundle metadata unreadable")
    assert record["bundle"] == bundle_id and "nested more than" in record["error"]
    # The box connected once and stayed: no connect/close loop; no other error anywhere.
    assert [r["pits_id"] for r in events(relay_log, "pits connected")] == ["box"] + ["other"] * 5
    # (tornado.access says ERROR for every 5xx: the 503s asked before the box was there.)
    errors = [r for r in records(relay_log) if r["level"] == "ERROR"]
    assert [r for r in errors if r["logger"] != "tornado.access"] == [offers]
    assert not [r for r in records(agent_log) if r["level"] == "ERROR"]


class StandIn(tornado.web.RequestHandler):
    """Whatever answers at FPVTrackside's address: its page at `/`, deep JSON at `/current`."""

    def initialize(self, seen: list[tuple[float, str]]) -> None:
        self.seen = seen

    def get(self, path: str) -> None:
        self.seen.append((time.monotonic(), self.request.path))
        self.set_header("Server", SERVER_HEADER)
        if self.request.path == "/current":
            self.set_header("Content-Type", "application/json")
            self.finish(b"[" * 4096)  # 4 KB of brackets: within the bound the agent reads
        elif self.request.path == "/":
            self.finish(b"<html><body>FPVTrackside</body></html>")
        else:
            self.set_status(404)
            self.finish()


class NotifySocket:
    """Where systemd hears from the agent: a datagram socket the test's loop reads as they come
    (unread, its queue fills and the agent's sends block)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []
        asyncio.get_running_loop().add_reader(self.sock, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))

    def watchdogs(self) -> list[float]:
        return [t for t, text in self.received if text.startswith("WATCHDOG=1")]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


async def test_deep_json_at_current_neither_ends_the_check_nor_stops_the_watchdog(
    tmp_path: Path, procs
) -> None:
    jwks, _ = keys(tmp_path)
    seen: list[tuple[float, str]] = []
    app = tornado.web.Application([(r"(/.*)", StandIn, {"seen": seen})])
    server = app.listen(0, "127.0.0.1")
    stand_in_port = next(iter(server._sockets.values())).getsockname()[1]
    notify = NotifySocket(tmp_path / "notify")
    relay_port, status_port = free_port(), free_port()
    procs.start(
        ["-m", "cloud", "serve", "--port", str(relay_port), "--jwks", str(jwks)],
        tmp_path / "relay.log",
    )
    agent_log = tmp_path / "agent.log"
    procs.start(
        [
            *agent_args(
                tmp_path,
                relay_port=relay_port,
                fpvtrackside=f"127.0.0.1:{stand_in_port}",
                status_port=status_port,
            ),
            *("--origin-check-interval", "0.1"),
        ],
        agent_log,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="200000",  # WATCHDOG=1 every 0.1 s while the agent is healthy
    )
    try:
        await wait_for(
            lambda: [t for t, path in seen if path == "/current"],
            timeout=30,
            what="the agent to ask /current",
        )
        asked = next(t for t, path in seen if path == "/current")
        # The check goes on after the answer that killed it, and so does the watchdog.
        await wait_for(
            lambda: len([t for t, path in seen if path == "/" and t > asked]) >= 10,
            what="ten more FPVTrackside checks",
        )
        await wait_for(
            lambda: len([t for t in notify.watchdogs() if t > asked]) >= 10,
            what="ten more WATCHDOG=1",
        )
        health = await get(f"http://127.0.0.1:{status_port}/healthz")
        assert health is not None and health.code == 200
    finally:
        server.stop()
        notify.close()
    assert not [r for r in records(agent_log) if r["level"] == "ERROR"]
    [seen_line] = events(agent_log, "FPVTrackside seen")
    assert "current" not in seen_line["traits"]  # deep JSON is not FPVTrackside's own answer
