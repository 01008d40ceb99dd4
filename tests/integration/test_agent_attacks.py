"""Attacks on the pits agent (security issue #12), each performed for real against real parts.

- From the pits LAN: a thousand connections to the status port that send half a header and
  stall, against an agent running as its own process under the descriptor limit of a small
  box (1,024). The race data must keep flowing, the page must keep answering, the agent's
  descriptors must stay bounded and its log quiet.
- From a hostile relay: `token` frames that would brick the box's token if it stored them, and
  a renewed token that the relay then refuses.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from cloud.keystore import revoke
from pitlink_testkit.keys import make_keys
from pitlink_testkit.logcheck import RECORDER
from pitlink_testkit.loopback import free_port
from pitlink_testkit.system import System
from pitlink_testkit.waiting import poll, wait_for
from pits_appliance.tokens import fingerprint
from wire import CloseCode
from wire import messages as m

REPO = Path(__file__).resolve().parents[2]
AGENT_NOFILE = 1024  # a small box's default soft limit, and what the agent once ran under
SLOW_CONNECTIONS = 1100
HALF_HEADER = b"GET /status.json HTTP/1.1\r\nHost: pitlink"


# -- processes --------------------------------------------------------------------------------


def get(
    port: int, path: str, *, source: str = "127.0.0.1", timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """GET from a loopback port, from the given source address; status 0 if it failed."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Rig:
    """The simulator, the relay and the agent as processes, as on a box and in the cloud."""

    def __init__(self, tmp: Path, *, agent_nofile: int):
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.jwks, keys = make_keys(tmp)
        token_file = tmp / "token"
        token_file.write_text(keys.issue(sub="box", role="pits", ttl=30 * 86400))
        self.sim_port, self.relay_port, self.status_port = free_port(), free_port(), free_port()
        self._start(
            "sim", [sys.executable, "scripts/fpvtrackside_sim.py", "--port", str(self.sim_port)]
        )
        self._start(
            "relay",
            [
                sys.executable,
                "-m",
                "cloud",
                "serve",
                "--port",
                str(self.relay_port),
                "--jwks",
                str(self.jwks),
            ],
        )
        conf = tmp / "pitlink.conf"
        conf.write_text(
            f"CLOUD_URL=http://127.0.0.1:{self.relay_port}\nTOKEN_FILE={token_file}\n"
            f"FPVTRACKSIDE=127.0.0.1:{self.sim_port}\n"
        )

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (agent_nofile, agent_nofile))

        self.agent = self._start(
            "agent",
            [
                sys.executable,
                "-m",
                "pits_appliance",
                "--config",
                str(conf),
                "--status-host",
                "127.0.0.1",
                "--status-port",
                str(self.status_port),
                "--reconnect-base",
                "0.1",
            ],
            preexec_fn=limit,
        )
        poll(lambda: get(self.status_port, "/healthz")[0] == 200, what="the agent to connect")
        # ...and the relay to serve through it (the page, so that every path the tests fetch
        # is still a miss).
        poll(lambda: self.fetch("/")[0] == 200, what="the relay to serve the pits")

    def _start(self, name: str, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.tmp / f"{name}.log", "wb") as err:
            proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO, **kw
            )
        self.procs.append(proc)
        return proc

    def agent_log(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in (self.tmp / "agent.log").read_text().splitlines()]

    def fetch(self, path: str = "/httpfiles/Channels.json") -> tuple[int, dict[str, str], bytes]:
        return get(self.relay_port, f"/pits/box{path}", timeout=15)

    def story(self, lines: int = 30) -> str:
        """The last lines of the agent's and the relay's logs, for a failure's message."""
        told = []
        for name in ("agent", "relay"):
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            told += [f"-- {name}.log, last {lines} lines:", *text[-lines:]]
        return "\n".join(told)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def nofile() -> Iterator[None]:
    """Room in this process for the attack's own sockets (its limit is raised, then restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if want < 2 * SLOW_CONNECTIONS + 200:
        pytest.fail(f"the hard descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def rig(tmp_path: Path, nofile: None) -> Iterator[Rig]:
    r = Rig(tmp_path, agent_nofile=AGENT_NOFILE)
    yield r
    r.stop()


class Sampler:
    """Counts the agent's open descriptors every few milliseconds, in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(descriptors(self.pid))
            except OSError:
                return
            self._stop.wait(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def open_slow(
    port: int, count: int, sources: list[str], timeout: float = 30.0
) -> list[socket.socket]:
    """`count` connections from the given source addresses, each sending half a header."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    pending = count
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            sel.unregister(s)
            pending -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    s.send(HALF_HEADER)
                except OSError:
                    pass  # the agent closed it already
    sel.close()
    return socks


def lines_about(log: list[dict[str, object]], text: str) -> list[dict[str, object]]:
    return [r for r in log if text in str(r.get("event", ""))]


# -- A: slow clients on the status port ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_slow_clients_cannot_exhaust_the_agents_descriptors(rig: Rig) -> None:
    baseline = descriptors(rig.agent.pid)
    # From eight addresses of the LAN, so that the whole cap fills, not one address's share.
    attackers = [f"127.0.0.{i}" for i in range(1, 9)]
    slow: list[socket.socket] = []
    started = time.monotonic()
    try:
        with Sampler(rig.agent.pid) as sampler:
            slow += open_slow(rig.status_port, SLOW_CONNECTIONS, attackers)
            opened = time.monotonic() - started

            # Race data still flows: a fresh path, fetched from FPVTrackside through the agent.
            status, headers, body = rig.fetch()
            assert status == 200, (body, rig.story())
            assert headers["X-Pitlink-Cache"] == "MISS"
            assert isinstance(json.loads(body), list) and json.loads(body)

            # The page still answers, to a phone elsewhere on the LAN and to an attacker's
            # neighbour at one of the attacking addresses (a stalled connection makes room).
            for source in ("127.0.0.200", "127.0.0.1"):
                got = poll(
                    lambda source=source: (
                        get(rig.status_port, "/status.json", source=source)[0] == 200
                    ),
                    what=f"the status page from {source}",
                    timeout=15,
                )
                assert got
            health = get(rig.status_port, "/healthz", source="127.0.0.200")
            assert health[0] == 200 and json.loads(health[2])["wsConnected"] is True

            # A second wave while the first one's connections are still open.
            slow += open_slow(rig.status_port, SLOW_CONNECTIONS, attackers)
            status, _, body = rig.fetch()
            assert status == 200, (body, rig.story())
            during = descriptors(rig.agent.pid)
        elapsed = time.monotonic() - started
        peak = max(sampler.samples)
        print(
            f"\nslow clients: {len(slow)} connections opened in {opened:.1f} s (first wave); "
            f"agent descriptors {baseline} before, peak {peak} over {len(sampler.samples)} samples, "
            f"{during} at the end; attack lasted {elapsed:.1f} s"
        )
        # 64 connections at most, plus what the agent has anyway and a few in passing.
        assert peak <= baseline + 64 + 16, (baseline, peak)
        assert rig.agent.poll() is None
    finally:
        for s in slow:
            s.close()

    # The stalled connections give their places back (closed by us, or by the header timeout).
    poll(
        lambda: descriptors(rig.agent.pid) <= baseline + 4,
        what="the descriptors to come back",
        timeout=20,
    )
    log = rig.agent_log()
    accept_errors = lines_about(log, "cannot accept")
    full = lines_about(log, "status port full") + lines_about(log, "to make room")
    print(
        f"agent log: {len(log)} lines in all, {len(accept_errors)} about accept errors, "
        f"{len(full)} about the full port (held back: {sum(int(r['held_back']) for r in full)})"
    )
    assert accept_errors == []  # never even came close to the descriptor limit
    assert 1 <= len(full) <= 2 * (elapsed + 2)  # one line a second, with counts
    assert len(log) < 200
    assert not [
        r for r in log if r["level"] in ("ERROR", "CRITICAL") and "access" not in str(r["logger"])
    ]


@pytest.mark.timeout(120)
def test_a_full_descriptor_table_pauses_the_accept_loop(tmp_path: Path, nofile: None) -> None:
    """Below the cap (a limit of 40), accept() itself fails: it must pause, never spin."""
    rig = Rig(tmp_path, agent_nofile=40)
    slow: list[socket.socket] = []
    try:
        baseline = descriptors(rig.agent.pid)
        attackers = [f"127.0.0.{i}" for i in range(1, 9)]
        started = time.monotonic()
        slow = open_slow(rig.status_port, 300, attackers, timeout=5)
        poll(lambda: descriptors(rig.agent.pid) >= 39, what="the agent's table to fill")
        # Hold it full for a few seconds, then give the descriptors back.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert rig.agent.poll() is None
            time.sleep(0.2)
        for s in slow:
            s.close()
        slow = []
        held = time.monotonic() - started
        poll(lambda: get(rig.status_port, "/healthz")[0] == 200, what="the agent to answer again")
        status, _, body = rig.fetch()
        assert status == 200, (body, rig.story())
        text = (tmp_path / "agent.log").read_text()
        assert "Traceback" not in text and "Exception in callback" not in text
        log = rig.agent_log()
        assert len(log) < 300
        pauses = lines_about(log, "cannot accept connections; pausing")
        print(
            f"\nfull table: baseline {baseline} descriptors, limit 40; {len(pauses)} accept-error "
            f"lines over {held:.1f} s (held back: {[r['held_back'] for r in pauses]}); "
            f"{len(log)} log lines in all"
        )
        assert pauses, "the attack never filled the descriptor table"
        assert all(r["error"] == "EMFILE" and r["resource"] is True for r in pauses)
        assert len(pauses) <= held + 2  # at most one a second
    finally:
        for s in slow:
            s.close()
        rig.stop()


# -- B: a hostile relay and the box's token ------------------------------------------------------


def _send_token(system: System, token: str) -> None:
    conn = system.relay.registry.get(system.pits_id)
    frame = m.encode(m.Token(token=token), frame_id=m.new_id(), now_ms=int(time.time() * 1000))
    conn.transport.send(frame)


async def test_bad_token_frames_leave_the_old_token_working(system: System, caplog) -> None:
    caplog.set_level("INFO", "pitlink.pits.tokens")
    old = system.token_file.read_text().strip()
    keys = system.keys
    bad = {
        "wrong sub": keys.issue(sub="another-box", role="pits", ttl=400 * 86400),
        "role admin": keys.issue(sub=system.pits_id, role="admin", ttl=400 * 86400),
        "earlier exp": keys.issue(sub=system.pits_id, role="pits", ttl=3600),
        "not a JWT": "not-a-token",
    }
    for token in bad.values():
        _send_token(system, token)
    # A fetch goes down the same WebSocket after them: once it is answered, the agent has
    # handled all four (it handles frames in order, and a token at once).
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 200
    assert system.token_file.read_text().strip() == old
    assert not system.token_file.with_name("token.prev").exists()
    assert system.agent.state.ws_connected
    reasons = [r.reason for r in caplog.records if r.getMessage() == "renewed token dropped"]
    assert sorted(reasons) == sorted(
        ["for another pits id", "not a pits token", "expires before the current one", "not a token"]
    )
    metrics = await system.http.fetch(f"http://127.0.0.1:{system.agent.status_port}/metrics")
    assert b'pitlink_frames_dropped_total{reason="bad_token"} 4.0' in metrics.body
    # The box dials again with its old token.
    sessions = system.agent.link.sessions
    system.agent.link.reconnect_now()
    await wait_for(lambda: system.agent.link.sessions > sessions, what="a new session")
    await system.connected()
    old_jti = jwt.decode(old, options={"verify_signature": False})["jti"]
    assert system.relay.registry.get(system.pits_id).claims["jti"] == old_jti
    for token in bad.values():
        assert token not in caplog.text


async def test_a_refused_renewal_sends_the_box_back_to_its_previous_token(
    tmp_path: Path, sim
) -> None:
    s = System(tmp_path, sim)
    # Issued a minute ago, so that its renewal (as long-lived, from now) expires later.
    s.token_file.write_text(
        s.keys.issue(sub=s.pits_id, role="pits", ttl=86400, now=time.time() - 60)
    )
    old = s.token_file.read_text().strip()
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.1)
    # A long slow delay (30 to 60 s): a fallback must not wait for it.
    await s.start_agent(reconnect_base=0.05, reconnect_cap=60.0)
    agent = s.agent
    try:
        await wait_for(lambda: s.token_file.read_text().strip() != old, what="the renewal")
        new = s.token_file.read_text().strip()

        # The relay refuses the renewed token (here: revoked) at the next dial.
        new_jti = jwt.decode(new, options={"verify_signature": False})["jti"]
        revoke(s.relay.keystore.revoked_path, new_jti, "test")
        s.relay.keystore.maybe_reload(force=True)
        sessions = agent.link.sessions
        agent.link.reconnect_now()
        await wait_for(
            lambda: agent.link.sessions > sessions and agent.state.ws_connected,
            timeout=10,
            what="the box to come back with its previous token, soon",
        )
        await s.connected()
        old_jti = jwt.decode(old, options={"verify_signature": False})["jti"]
        assert s.relay.registry.get(s.pits_id).claims["jti"] == old_jti
        assert s.token_file.read_text().strip() == old
        prev = s.token_file.with_name("token.prev")
        assert prev.read_text().strip() == new  # kept, in case the relay was only briefly wrong
        assert prev.stat().st_mode & 0o777 == 0o600
        assert (await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")).code == 200

        # Now the old one goes too: nothing is left, so the box waits long, as before.
        revoke(s.relay.keystore.revoked_path, old_jti, "test")
        s.relay.keystore.maybe_reload(force=True)
        await wait_for(lambda: agent.state.close_code == CloseCode.TOKEN_EXPIRED, what="4001")
        agent.link.reconnect_now()
        await wait_for(
            lambda: (
                "ask for a new one" in (agent.state.cloud_error or "")
                and agent.state.next_attempt_in is not None
            ),
            what="the refusal with nothing left",
        )
        assert agent.state.next_attempt_in >= 30.0
        assert s.relay.registry.get(s.pits_id) is None
    finally:
        await s.close()
    text = "\n".join(line for line in RECORDER.lines if "pitlink.pits.tokens" in line)
    assert fingerprint(new) in text and new not in text and old not in text
