"""The chaos drill: a live race, an agent behind faulty links, a hundred spectators.

The relay and the agent run as real processes (so that their memory and descriptors can be
read from /proc); the simulator, the fault proxies and the spectators run in the test's loop.
Faults come from a schedule drawn from a seeded random generator, printed with the seed, so a
failing run can be replayed exactly (`PITLINK_CHAOS_SEED=<seed>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.age_notice import AgeNotice
from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.keys import make_keys
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import TimedOut, wait_for
from wire.canonical import prepare_body

REPO = Path(__file__).resolve().parents[2]
# How long the task count may take to come back after the crowd stops: a few of the relay's
# fetch deadlines (8 s), for the fetches a late fault left running.
TASKS_SETTLE_S = 30.0


def etag(data: bytes) -> str:
    return '"sha256:' + hashlib.sha256(data).hexdigest() + '"'


class RecordingSimulator(Simulator):
    """The simulator, remembering the canonical ETag of every version of every file it wrote."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.history: dict[str, set[str]] = {}
        self.snapshot()

    def snapshot(self) -> None:
        for file in self.root.rglob("*"):
            if not file.is_file():
                continue
            path = "/" + file.relative_to(self.root).as_posix()
            try:
                _, tag = prepare_body(path, file.read_bytes())
            except Exception:
                continue  # a file mid-write is not a version anybody may serve
            self.history.setdefault(path, set()).add(tag)

    def advance(self) -> None:
        super().advance()
        self.snapshot()

    def largest_file(self) -> int:
        """The size of the biggest event file now: the agent's memory follows it."""
        return max((f.stat().st_size for f in self.root.rglob("*.json")), default=0)

    def known(self, path: str, tag: str) -> bool:
        if path == "/":
            return True  # the index page is rewritten per request (event id substituted)
        if path.endswith("/Results.json") and tag == etag(b"[]"):
            return True  # no results yet: the origin's empty answer
        return tag in self.history.get(path, set())


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Spectator:
    """One browser-like client: one keep-alive connection, its paths polled once a second."""

    def __init__(self, drill: Drill, paths: list[str], rng: random.Random):
        self.drill = drill
        self.paths = paths
        self.rng = rng
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.drill.relay_port)

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def run(self, until: float) -> None:
        await asyncio.sleep(self.rng.random())  # spread the spectators over the second
        while time.monotonic() < until:
            started = time.monotonic()
            for path in self.paths:
                try:
                    status, headers, body = await asyncio.wait_for(self.get(path), 15)
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    TimeoutError,
                    ValueError,
                    IndexError,
                ) as exc:
                    self.close()
                    self.drill.record(path, None, {}, b"", type(exc).__name__)
                    continue
                self.drill.record(path, status, headers, body, None)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        self.close()


@dataclass
class Fault:
    at: float
    kind: str
    length: float


@dataclass
class Drill:
    tmp: Path
    seed: int
    duration: float
    spectators: int = 100
    warmup: float = 10.0
    recovery: float = 25.0
    outcomes: Counter[str] = field(default_factory=Counter)
    bad_bodies: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    relay_port: int = 0

    def record(
        self, path: str, status: int | None, headers: dict[str, str], body: bytes, error: str | None
    ) -> None:
        if status is None:
            self.outcomes[f"error:{error}"] += 1
            return
        self.outcomes[str(status)] += 1
        if status == 200:
            tag = headers.get("etag", "")
            origin_path = path.split(f"/pits/{self.pits_id}", 1)[1] or "/"
            # An HTML page carries the relay's own age notice (cloud.age_notice): the origin's
            # body is the page without it.
            notice = AgeNotice.tag(f"/pits/{self.pits_id}/")
            origin = body.replace(notice, b"", 1) if AgeNotice.applies(origin_path) else body
            if etag(body) != tag or not self.sim.known(origin_path, etag(origin)):
                self.bad_bodies.append(f"{path} {tag} {headers.get('x-pitlink-cache')}")

    def schedule(self) -> list[Fault]:
        """Faults every 6 to 12 s between warm-up and recovery, drawn from the seed."""
        rng = random.Random(self.seed)
        kinds = [
            "cut",
            "reset",
            "blackhole",
            "latency",
            "origin-stall",
            "half-written",
            "origin-cut",
        ]
        order: list[str] = []
        faults, at = [], self.warmup
        while at < self.duration - self.recovery:
            if not order:  # every kind once, in a random order, then again
                order = rng.sample(kinds, len(kinds))
            faults.append(Fault(at=at, kind=order.pop(), length=rng.uniform(2.0, 6.0)))
            at += rng.uniform(6.0, 12.0)
        return faults

    async def run(self) -> None:
        self.pits_id = "chaos-pits"
        jwks, keys = make_keys(self.tmp)
        token_file = self.tmp / "token"
        token_file.write_text(keys.issue(sub=self.pits_id, role="pits", ttl=86400 * 90))
        self.sim = RecordingSimulator(seed=self.seed, lap_interval=1.0)
        await self.sim.start()
        self.relay_port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with (self.tmp / "relay.log").open("wb") as log:
            relay = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cloud",
                "serve",
                "--port",
                str(self.relay_port),
                "--jwks",
                str(jwks),
                "--client-rate",
                "0",
                "--client-miss-rate",
                "0",
                "--pits-fetch-rate",
                "0",
                "--ping-interval",
                "1",
                "--ping-timeout",
                "3",
                "--fetch-timeout",
                "4",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        to_relay = FaultProxy("127.0.0.1", self.relay_port)
        to_origin = FaultProxy("127.0.0.1", int(self.sim.url.rsplit(":", 1)[1]))
        await to_relay.start()
        await to_origin.start()
        status_port = free_port()
        with (self.tmp / "agent.log").open("wb") as log:
            agent = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pits_appliance",
                "--cloud-url",
                f"http://127.0.0.1:{to_relay.port}",
                "--token-file",
                str(token_file),
                "--fpvtrackside",
                f"http://127.0.0.1:{to_origin.port}",
                "--status-host",
                "127.0.0.1",
                "--status-port",
                str(status_port),
                "--ping-interval",
                "1",
                "--ping-timeout",
                "3",
                "--reconnect-base",
                "0.2",
                "--reconnect-cap",
                "2",
                "--fetch-timeout",
                "2",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        import tornado.httpclient

        http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

        async def health() -> dict[str, Any]:
            got = await http.fetch(
                f"http://127.0.0.1:{status_port}/healthz", raise_error=False, request_timeout=3
            )
            return json.loads(got.body) if got.body else {}

        async def metric(port: int, name: str) -> float:
            got = await http.fetch(f"http://127.0.0.1:{port}/metrics", request_timeout=5)
            for line in got.body.decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return 0.0

        try:

            async def connected() -> bool:
                try:
                    return bool((await health()).get("wsConnected"))
                except OSError:
                    return False

            await wait_for(connected, timeout=30, what="the agent to connect")
            races = json.loads(
                (self.sim.root / "events" / self.sim.event_id / "Event.json").read_text()
            )[0]["Races"]
            origin_paths = [
                f"{self.sim.event_path}/Event.json",
                f"{self.sim.event_path}/Pilots.json",
                f"{self.sim.event_path}/Rounds.json",
                f"{self.sim.event_path}/Results.json",
                "/httpfiles/Channels.json",
                "/",
                *[f"{self.sim.event_path}/{race}/Race.json" for race in races[:4]],
            ][:10]
            paths = [f"/pits/{self.pits_id}{p}" for p in origin_paths]
            for path in paths:  # warm the cache: every path has a good copy before the faults
                await wait_for(lambda p=path: self._ok(http, p), timeout=20, what=f"{path} warm")

            self.faults = self.schedule()
            self.tasks_start = {
                "relay": await metric(self.relay_port, "pitlink_asyncio_tasks"),
                "agent": await metric(status_port, "pitlink_asyncio_tasks"),
            }
            started = time.monotonic()
            until = started + self.duration
            rng = random.Random(self.seed + 1)
            crowd = [
                asyncio.ensure_future(Spectator(self, paths, rng).run(until))
                for _ in range(self.spectators)
            ]
            sample_every = max(5.0, self.duration / 40)

            async def sampler() -> None:
                while time.monotonic() < until:
                    self.memory.append(
                        {
                            "t": round(time.monotonic() - started, 1),
                            "relay": proc_stats(relay.pid),
                            "agent": proc_stats(agent.pid),
                            "largest_kb": self.sim.largest_file() // 1024,
                        }
                    )
                    await asyncio.sleep(sample_every)

            sampling = asyncio.ensure_future(sampler())
            sessions_before: list[float] = []
            for fault in self.faults:
                await asyncio.sleep(max(0.0, started + fault.at - time.monotonic()))
                sessions_before.append(await metric(status_port, "pitlink_reconnects_total"))
                await self.inject(fault, to_relay, to_origin)
            # After the last fault the agent must be back on its own, within its backoff.
            await wait_for(connected, timeout=20, what="the agent back after the faults")
            baseline = {"relay": proc_stats(relay.pid), "agent": proc_stats(agent.pid)}
            self.tasks_mid = {
                "relay": await metric(self.relay_port, "pitlink_asyncio_tasks"),
                "agent": await metric(status_port, "pitlink_asyncio_tasks"),
            }
            await asyncio.gather(*crowd)
            sampling.cancel()
            self.reconnects = await metric(status_port, "pitlink_reconnects_total")
            self.final: dict[str, Any] = {
                "relay": proc_stats(relay.pid),
                "agent": proc_stats(agent.pid),
                "largest_kb": self.sim.largest_file() // 1024,
            }
            self.baseline = baseline
            self.start_stats = self.memory[0] if self.memory else None
            # Work still in flight when the crowd stops (an origin fetch asked for by a link that
            # a late fault has just broken runs to its own deadline) ends by itself; a leak does
            # not. So the task count is read again until it is back near its start, for a while.
            ports = {"relay": self.relay_port, "agent": status_port}
            self.tasks_end: dict[str, float] = {}
            for part, port in ports.items():

                async def settled(part: str = part, port: int = port) -> bool:
                    tasks = await metric(port, "pitlink_asyncio_tasks")
                    return tasks <= self.tasks_start[part] + 5

                with contextlib.suppress(TimedOut):  # check() reports what is left
                    await wait_for(settled, timeout=TASKS_SETTLE_S, interval=0.5)
                self.tasks_end[part] = await metric(port, "pitlink_asyncio_tasks")
            cache = await http.fetch(f"http://127.0.0.1:{self.relay_port}/metrics")
            self.relay_metrics = cache.body.decode()
        finally:
            for proc in (agent, relay):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (agent, relay):
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            http.close()
            await to_relay.stop()
            await to_origin.stop()
            await self.sim.stop()

    async def _ok(self, http: Any, path: str) -> bool:
        got = await http.fetch(
            f"http://127.0.0.1:{self.relay_port}{path}", raise_error=False, request_timeout=10
        )
        return got.code == 200

    async def inject(self, fault: Fault, to_relay: FaultProxy, to_origin: FaultProxy) -> None:
        """Apply one fault for its length, then take it away."""
        if fault.kind == "cut":
            to_relay.reset_all()  # the connection drops (RST), nothing else
        elif fault.kind == "reset":
            to_relay.mode = "refuse"
            to_relay.reset_all()
            await asyncio.sleep(fault.length)
            to_relay.mode = "forward"
        elif fault.kind == "blackhole":
            to_relay.blackhole_existing()
        elif fault.kind == "latency":
            to_relay.delay = 0.3
            await asyncio.sleep(fault.length)
            to_relay.delay = 0.0
        elif fault.kind == "origin-stall":
            self.sim.hold = asyncio.Event()
            await asyncio.sleep(fault.length)
            self.sim.hold.set()
            self.sim.hold = None
        elif fault.kind == "half-written":
            race = next(iter(p for p in self.sim.history if p.endswith("/Race.json")))
            self.sim.half_written.add(race)
            self.sim.half_written.add(f"{self.sim.event_path}/Event.json")
            await asyncio.sleep(fault.length)
            self.sim.half_written.clear()
        elif fault.kind == "origin-cut":
            to_origin.mode = "refuse"
            to_origin.reset_all()
            await asyncio.sleep(fault.length)
            to_origin.mode = "forward"

    def settled(self) -> dict[str, Any]:
        """The first memory sample after every kind of fault has struck once.

        A leak shows as growth from here on. Before it the processes find their working set
        under load: the agent's RSS goes from about 34 MB idle to 39 MB in the first minute of
        faults and then stays there.
        """
        kinds = {fault.kind for fault in self.faults}
        seen: set[str] = set()
        settle_at = 0.0
        for fault in self.faults:
            seen.add(fault.kind)
            if seen == kinds:
                settle_at = fault.at + fault.length + 5.0
                break
        return next((m for m in self.memory if m["t"] >= settle_at), self.memory[-1])

    def report(self) -> str:
        total = sum(self.outcomes.values())
        ok = self.outcomes.get("200", 0)
        lines = [
            f"chaos drill: seed {self.seed}, {self.duration:.0f} s, {self.spectators} spectators",
            f"faults: {', '.join(f'{f.kind}@{f.at:.0f}s' for f in self.faults)}",
            f"requests: {total}, 200: {ok} ({100 * ok / max(total, 1):.2f}%), others: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items()) if k != "200"),
            f"agent reconnects: {getattr(self, 'reconnects', '?')}",
            "memory over time (RSS MB relay/agent, fds relay/agent, largest event file):",
        ]
        if self.memory and self.faults:
            lines.append(f"  settled (every kind of fault struck once) at t={self.settled()['t']}s")
        for sample in self.memory:
            lines.append(
                f"  t={sample['t']:>6}s  {sample['relay']['rss_kb'] / 1024:6.1f} / {sample['agent']['rss_kb'] / 1024:6.1f}"
                f"   fds {sample['relay']['fds']} / {sample['agent']['fds']}"
                f"   {sample['largest_kb']} KB"
            )
        return "\n".join(lines)
