"""Replicas as real processes: killed, restarted one after the other, behind nginx."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.httpclient

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.nginx import nginx_config, start_nginx
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


class Replica:
    """`cloud-relay serve` as a process of its own, on a port that stays the same across restarts."""

    def __init__(self, s: System, redis_url: str, node: str, log: Path):
        self.s = s
        self.redis_url = redis_url
        self.node = node
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cloud",
                    "serve",
                    "--port",
                    str(self.port),
                    "--jwks",
                    str(self.s.jwks),
                    "--redis-url",
                    self.redis_url,
                    "--node-id",
                    self.node,
                    "--client-rate",
                    "0",
                    "--client-miss-rate",
                    "0",
                    "--pits-fetch-rate",
                    "0",
                    "--grace-period",
                    "5",
                    "--trusted-proxy",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, http: tornado.httpclient.AsyncHTTPClient) -> None:
        async def up() -> bool:
            try:
                got = await http.fetch(self.url + "/readyz", raise_error=False, request_timeout=2)
            except OSError:
                return False
            return got.code == 200 and json.loads(got.body)["redis"] == "up"

        await wait_for(up, timeout=30, what=f"replica {self.node}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def replicas(
    tmp_path: Path, sim: Simulator, redis_server
) -> AsyncIterator[tuple[System, Replica, Replica]]:
    s = System(tmp_path, sim)
    a = Replica(s, redis_server.url, "a", tmp_path / "a.log")
    b = Replica(s, redis_server.url, "b", tmp_path / "b.log")
    try:
        a.start()
        b.start()
        await a.ready(s.http)
        await b.ready(s.http)
        yield s, a, b
    finally:
        await s.stop_agent()
        a.kill()
        b.kill()
        s.http.close()


async def test_killed_replica_the_agent_moves_on(replicas) -> None:
    s, a, b = replicas
    s.relay_port = a.port
    await s.start_agent(wait=False, cloud_urls=(b.url,))
    path = f"/pits/{s.pits_id}/httpfiles/Channels.json"

    async def served_by(replica: Replica) -> bytes | None:
        got = await s.http.fetch(replica.url + path, raise_error=False, request_timeout=10)
        return got.body if got.code == 200 else None

    good = await wait_for(lambda: served_by(b), what="data through B while the pits is on A")
    a.signal(signal.SIGKILL)
    a.wait()
    await wait_for(
        lambda: s.agent.state.relay_url == b.url and s.agent.state.ws_connected,
        timeout=30,
        what="the agent on B",
    )
    again = await wait_for(lambda: served_by(b), timeout=30, what="data again through B")
    assert again == good  # never a wrong body: the same canonical bytes


async def test_rolling_restart_behind_nginx_loses_no_request(replicas, tmp_path) -> None:
    s, a, b = replicas
    port = free_port()
    conf = nginx_config(tmp_path, upstreams=[a.port, b.port], plain=port, tls=free_port())
    nginx = await start_nginx(conf)
    front = f"http://127.0.0.1:{port}"
    try:

        async def nginx_up() -> bool:
            try:
                got = await s.http.fetch(front + "/healthz", raise_error=False, request_timeout=2)
            except OSError:
                return False
            return got.code == 200

        await wait_for(nginx_up, what="nginx")
        s.relay_port = port  # the agent dials the load balancer, like a box in the field
        await s.start_agent(wait=False)
        await wait_for(lambda: s.agent.state.ws_connected, what="the agent through nginx")
        paths = [
            f"/pits/{s.pits_id}{s.sim.event_path}/{n}.json" for n in ("Event", "Pilots", "Rounds")
        ]
        paths.append(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=8)
        failures: list[str] = []
        done = 0
        stop = asyncio.Event()

        async def spectator(n: int) -> None:
            nonlocal done
            while not stop.is_set():
                path = paths[(n + done) % len(paths)]
                try:
                    got = await client.fetch(front + path, raise_error=False, request_timeout=20)
                    if got.code != 200:
                        failures.append(f"{got.code} {path} {got.body[:120]!r}")
                except Exception as exc:
                    failures.append(f"{type(exc).__name__} {path}")
                done += 1
                await asyncio.sleep(0.02)  # a steady load, not a flood

        async def warm(path: str) -> bool:
            got = await client.fetch(front + path, raise_error=False)
            return got.code == 200

        for path in paths:  # warm: the holder is known everywhere, every path fetched once
            for _ in range(2):
                await wait_for(lambda p=path: warm(p), what=f"{path} through nginx")
        load = [asyncio.ensure_future(spectator(n)) for n in range(4)]
        try:
            a.signal(signal.SIGTERM)
            assert a.wait() == 0
            a.start()
            await a.ready(s.http)
            b.signal(signal.SIGTERM)
            assert b.wait() == 0
            await wait_for(lambda: s.agent.state.ws_connected, timeout=30, what="the agent back")
            count = done
            await wait_for(lambda: done > count + 20, what="requests after the restarts")
        finally:
            stop.set()
            await asyncio.gather(*load)
            client.close()
        assert failures == []
        assert done > 50
    finally:
        nginx.terminate()
        await asyncio.wait_for(nginx.wait(), 10)


async def test_workers_share_the_port_and_the_pits(
    tmp_path: Path, sim: Simulator, redis_server
) -> None:
    s = System(tmp_path, sim)
    port = free_port()
    log = (tmp_path / "workers.log").open("wb")
    with log as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cloud",
            "serve",
            "--port",
            str(port),
            "--jwks",
            str(s.jwks),
            "--redis-url",
            redis_server.url,
            "--workers",
            "2",
            "--node-id",
            "w",
            "--client-rate",
            "0",
            "--client-miss-rate",
            "0",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
        )
    try:
        s.relay_port = port
        seen: set[str] = set()

        async def both_workers() -> bool:
            http = tornado.httpclient.AsyncHTTPClient(force_instance=True)  # new connections
            try:
                got = await http.fetch(f"{s.url}/readyz", raise_error=False, request_timeout=2)
                if got.code == 200:
                    seen.add(json.loads(got.body)["node"])
            except OSError:
                pass
            finally:
                http.close()
            return seen == {"w-0", "w-1"}

        await wait_for(both_workers, timeout=30, what="both workers answering")
        await s.start_agent(wait=False)
        await wait_for(lambda: s.agent.state.ws_connected, what="the agent")
        path = f"{s.url}/pits/{s.pits_id}/httpfiles/Channels.json"

        async def served() -> bool:
            for _ in range(4):  # new connections: either worker may answer each
                http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
                try:
                    if (await http.fetch(path, raise_error=False)).code != 200:
                        return False
                finally:
                    http.close()
            return True

        # The worker that holds the link announces it to the other through Redis: for a few
        # milliseconds after the agent is linked, the other may not know yet (503, retried).
        await wait_for(served, what="a fetch through whichever worker answers")
        for _ in range(20):
            http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
            try:
                got = await http.fetch(path, raise_error=False)
            finally:
                http.close()
            assert got.code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await s.stop_agent()
        if proc.returncode is None:
            # SIGTERM: the first process stops its workers too (a SIGKILL would leave them).
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        s.http.close()


def test_workers_need_redis(tmp_path: Path) -> None:
    from cloud.keys import keygen

    keygen(tmp_path / "jwks.json", "k")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud",
            "serve",
            "--jwks",
            str(tmp_path / "jwks.json"),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "--redis-url" in done.stderr
