"""Live: how soon a lap at the pits reaches a spectator (polled, watched and pushed, or told by
FPVTrackside's ExtensionMode), what that costs the pits' uplink and FPVTrackside, and one relay
fanning a change out to ten thousand feed subscribers.

A lap's moment is when the simulator wrote it: the race file's modification time, read by
polling the file every 2 ms. A spectator has seen it when the detection's id first reaches it:
in a polled body (polling every 10 ms, far more often than any real page), in the body a feed's
`change` names (fetched at once: a cache hit), or in a forwarded `DetectionExt`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.compare_pits import CountingProxy, _host_port
from benchlib.httpc import HTTPConnection, open_connections, spectate
from benchlib.report import Chart, Outcome, Row, ratio
from benchlib.stack import (
    PITS_ID,
    BenchError,
    Settings,
    Sim,
    Stack,
    make_keys,
    median,
    percentile,
    raise_nofile,
    rss_kib,
    start_agent,
    start_relay,
    start_sim,
)
from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import TimedOut, wait_for

ONE_WAY_S = 0.075  # each way over the emulated uplink: a 150 ms round trip
MODES = ("polling", "watching", "ExtensionMode")
FEED = f"/pits/{PITS_ID}/pitlink/live"


class RequestCounter(FaultProxy):
    """In front of the simulator: counts the requests FPVTrackside is sent (the LAN cost)."""

    requests = 0

    async def _pump(self, reader: Any, writer: Any, link: Any) -> None:
        if writer is link[1]:  # towards FPVTrackside
            reader = _Counting(reader, self)
        await super()._pump(reader, writer, link)


class _Counting:
    def __init__(self, reader: asyncio.StreamReader, proxy: RequestCounter):
        self.reader, self.proxy = reader, proxy

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        self.proxy.requests += data.count(b" HTTP/1.1\r\n")
        return data


@dataclass
class Laps:
    """When each detection was written at the pits, and when a spectator first had it."""

    written: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    old: set[str] = field(default_factory=set)  # there before the measurement began

    def saw(self, ids: list[str], at: float) -> None:
        for detection in ids:
            if detection not in self.old:
                self.seen.setdefault(detection, at)

    def latencies_ms(self) -> list[float]:
        return [(self.seen[d] - at) * 1000 for d, at in self.written.items() if d in self.seen]


def _ids(body: bytes) -> list[str]:
    try:
        race = json.loads(body)[0]
        return [str(d["ID"]) for d in race["Detections"]]
    except (ValueError, LookupError, TypeError):
        return []


async def _watch_files(sim: Sim, laps: Laps, current: list[str], stop: asyncio.Event) -> None:
    """The pits' side of the clock: every write of the race file, by its modification time."""
    last_mtime, next_look, first = 0, 0.0, True
    while not stop.is_set():
        if time.monotonic() >= next_look:
            current[0] = sim.current_race()
            next_look = time.monotonic() + 0.2
        path = sim.root / current[0].lstrip("/")
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            if stat.st_mtime_ns != last_mtime:
                last_mtime = stat.st_mtime_ns
                for detection in _ids(path.read_bytes()):
                    if first:
                        laps.old.add(detection)
                    elif detection not in laps.old:
                        laps.written.setdefault(detection, stat.st_mtime_ns / 1e9)
                first = False
        await asyncio.sleep(0.002)


async def _poll(port: int, laps: Laps, current: list[str], stop: asyncio.Event) -> None:
    """Today's spectator at its most eager: the race file every 10 ms."""
    conn = HTTPConnection("127.0.0.1", port)
    while not stop.is_set():
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            status, _, body, _ = await conn.get(f"/pits/{PITS_ID}{current[0]}")
            if status == 200:
                laps.saw(_ids(body), time.time())
        await asyncio.sleep(0.01)
    conn.close()


async def _follow(port: int, laps: Laps, stop: asyncio.Event) -> None:
    """A feed subscriber: a `change` of a race file is fetched at once, a `DetectionExt` is
    the lap itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {FEED} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    fetcher = HTTPConnection("127.0.0.1", port)
    buffer = b""
    try:
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                raise BenchError("the feed ended")
            at = time.time()
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                kind, data = "", b""
                for line in block.split(b"\n"):
                    if line.startswith(b"event: "):
                        kind = line[7:].decode()
                    elif line.startswith(b"data: "):
                        data = line[6:]
                if kind == "change":
                    path = json.loads(data)["path"]
                    if path.endswith("/Race.json"):
                        _, _, body, _ = await fetcher.get(f"/pits/{PITS_ID}{path}")
                        laps.saw(_ids(body), at)
                elif kind == "fpvtrackside":
                    event = json.loads(data)
                    if event.get("type") == "DetectionExt":
                        laps.saw([str(event.get("detectionId"))], at)
    finally:
        writer.close()
        fetcher.close()


@dataclass
class Setup:
    mode: str
    sim: Sim
    relay_url: str
    uplink: CountingProxy
    lan: RequestCounter
    laps: Laps = field(default_factory=Laps)
    current: list[str] = field(default_factory=lambda: [""])


async def _start(stack: Stack, keys: Any, mode: str, lap_interval: float) -> Setup:
    status = free_port()
    extension = f"http://127.0.0.1:{status}/fpvtrackside/events"
    name = mode.lower()
    sim = start_sim(
        stack,
        lap_interval=lap_interval,
        name=f"sim-{name}",
        notification_url=extension if mode == "ExtensionMode" else None,
        version="2.76",  # the newest: it answers /current (the race selected now)
    )
    flags = ["--client-rate", "0", "--client-miss-rate", "0"]
    relay = start_relay(
        stack, keys, f"relay-{name}", *flags, *(["--no-push"] if mode == "polling" else [])
    )
    uplink = CountingProxy(*_host_port(relay.url))
    await uplink.start()
    uplink.delay = ONE_WAY_S
    lan = RequestCounter(*_host_port(sim.url))
    await lan.start()
    start_agent(
        stack,
        keys,
        f"http://127.0.0.1:{uplink.port}",
        sim,
        f"agent-{name}",
        port=status,
        fpvtrackside=f"http://127.0.0.1:{lan.port}",
    )
    return Setup(mode, sim, relay.url, uplink, lan)


def live(settings: Settings) -> Outcome:
    """A lap to a spectator over a 150 ms round trip, polled vs pushed, side by side."""
    out = Outcome("live")
    seconds = 20.0 if settings.quick else 90.0
    lap_interval = 0.5
    crowd = 50  # spectators polling the race, the results and the event each second
    raise_nofile()
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:

        async def run() -> dict[str, Any]:
            setups = [await _start(stack, keys, mode, lap_interval) for mode in MODES]
            stop = asyncio.Event()
            tasks: list[asyncio.Future[Any]] = []
            try:
                for s in setups:
                    s.current[0] = s.sim.current_race()
                    port = _host_port(s.relay_url)[1]
                    await _wait_linked(stack, s)
                    tasks.append(
                        asyncio.ensure_future(_watch_files(s.sim, s.laps, s.current, stop))
                    )
                    if s.mode == "polling":
                        tasks.append(asyncio.ensure_future(_poll(port, s.laps, s.current, stop)))
                    else:
                        tasks.append(asyncio.ensure_future(_follow(port, s.laps, stop)))
                await asyncio.sleep(3.0)  # everything warm: the first laps are not measured
                begin = {s.mode: (s.uplink.up_bytes, s.lan.requests) for s in setups}
                began = time.monotonic()
                crowds = [
                    _crowd(s, crowd, seconds) for s in setups
                ]  # the same crowd at every relay: what pulling costs depends on it
                await asyncio.gather(*crowds)
                elapsed = time.monotonic() - began
                stop.set()
                result = {}
                for s in setups:
                    up0, lan0 = begin[s.mode]
                    lat = s.laps.latencies_ms()
                    result[s.mode] = {
                        "laps_measured": len(lat),
                        "p50_ms": round(median(lat), 1) if lat else None,
                        "p95_ms": round(percentile(lat, 95), 1) if lat else None,
                        "uplink_bytes_per_hour": round((s.uplink.up_bytes - up0) * 3600 / elapsed),
                        "lan_requests_per_s": round((s.lan.requests - lan0) / elapsed, 1),
                    }
                result["seconds"] = round(elapsed, 1)
                return result
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                for s in setups:
                    await s.uplink.stop()
                    await s.lan.stop()

        r = asyncio.run(run())
    out.details = {
        **r,
        "one_way_ms": ONE_WAY_S * 1000,
        "seconds_per_detection": lap_interval,
        "crowd": f"{crowd} spectators at each relay polling 3 files a second",
    }
    one_way = ONE_WAY_S * 1000
    targets = {"watching": one_way + 250, "ExtensionMode": one_way + 100}
    poll = r["polling"]
    for mode in MODES:
        m = r[mode]
        target = targets.get(mode)
        out.rows.append(
            Row(
                f"a lap to a spectator, {mode}"
                + (" (a poll every 10 ms)" if mode == "polling" else ""),
                f"p50 {m['p50_ms']} ms, p95 {m['p95_ms']} ms",
                "-" if mode == "polling" else f"polling p95 {poll['p95_ms']} ms",
                None
                if mode == "polling" or not poll["p95_ms"] or not m["p95_ms"]
                else ratio(m["p95_ms"], poll["p95_ms"]),
                "(today)" if target is None else f"p95 <= {target:.0f} ms",
                None if target is None or m["p95_ms"] is None else m["p95_ms"] <= target,
            )
        )
    for mode in ("watching", "ExtensionMode"):
        m = r[mode]
        out.rows.append(
            Row(
                f"  uplink per hour, {mode} vs polling",
                f"{m['uplink_bytes_per_hour'] / 1e6:,.2f} MB/h",
                f"{poll['uplink_bytes_per_hour'] / 1e6:,.2f} MB/h",
                ratio(m["uplink_bytes_per_hour"], poll["uplink_bytes_per_hour"]),
                "<= 2x",
                m["uplink_bytes_per_hour"] <= 2 * poll["uplink_bytes_per_hour"],
            )
        )
    out.rows.append(
        Row(
            "  requests to FPVTrackside (LAN)",
            ", ".join(f"{mode} {r[mode]['lan_requests_per_s']}/s" for mode in MODES),
            "-",
            None,
            "<= 20/s (the box's budget)",
            all(r[mode]["lan_requests_per_s"] <= 20 for mode in MODES),
        )
    )
    out.charts = [
        Chart(
            "a lap to a spectator, 150 ms round trip: p95, ms",
            "ms",
            {mode: r[mode]["p95_ms"] or 0.0 for mode in MODES},
        )
    ]
    return out


async def _wait_linked(stack: Stack, s: Setup) -> None:
    conn = HTTPConnection(*_host_port(s.relay_url))
    try:
        for _ in range(300):
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                status, _, _, _ = await conn.get(f"/pits/{PITS_ID}{s.current[0]}")
                if status == 200:
                    return
            await asyncio.sleep(0.1)
    finally:
        conn.close()
    raise BenchError(f"no data through {s.mode}:\n{stack.log('agent-' + s.mode.lower())}")


async def _crowd(s: Setup, count: int, seconds: float) -> None:
    host, port = _host_port(s.relay_url)
    conns = await open_connections(host, port, count)
    event = f"/pits/{PITS_ID}{s.sim.path('Event.json')}"
    results = f"/pits/{PITS_ID}{s.sim.path('Results.json')}"
    await spectate(conns, lambda: [event, results, f"/pits/{PITS_ID}{s.current[0]}"], seconds)


def feedfan(settings: Settings) -> Outcome:
    """10,000 feed subscribers on one relay process: how soon a change reaches them all, and
    what each costs the relay in memory."""
    out = Outcome("feedfan")
    subscribers = 2000 if settings.quick else 10_000
    changes = 5
    raise_nofile()
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = start_sim(stack, lap_interval=0.0, name="sim")
        relay = start_relay(
            stack,
            keys,
            "relay",
            "--client-rate", "0",
            "--feed-max-subscribers", str(subscribers + 100),
            "--feed-per-client", str(subscribers + 100),
            nofile=subscribers + 1024,
        )  # fmt: skip
        start_agent(stack, keys, relay.url, sim)
        host, port = _host_port(relay.url)
        race = sim.current_race()

        async def run() -> dict[str, Any]:
            conn = HTTPConnection(host, port)
            for _ in range(300):
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                    if (await conn.get(f"/pits/{PITS_ID}{race}"))[0] == 200:
                        break
                await asyncio.sleep(0.1)
            conn.close()
            rss0 = rss_kib(relay.proc.pid)
            arrivals: dict[str, list[float]] = {}
            readers = await _open_feeds(host, port, subscribers, arrivals)
            await asyncio.sleep(2.0)  # the snapshot every subscriber gets first, taken
            rss1 = rss_kib(relay.proc.pid)
            arrivals.clear()
            spreads, totals, reached = [], [], []
            path = sim.root / race.lstrip("/")
            for _ in range(changes):
                known = set(arrivals)
                # A lap at FPVTrackside: the race file is rewritten, the box reads and pushes.
                _add_lap(path)
                written = os.stat(path).st_mtime_ns / 1e9

                def fresh(known: set[str] = known) -> list[float]:
                    new = [times for key, times in arrivals.items() if key not in known]
                    return new[0] if new else []

                with contextlib.suppress(TimedOut):  # reported below: how many it reached
                    await wait_for(lambda: len(fresh()) >= subscribers, timeout=30)
                times = fresh()
                if not times:
                    raise BenchError(f"a change reached no subscriber:\n{stack.log('agent')}")
                reached.append(len(times))
                spreads.append((max(times) - min(times)) * 1000)
                totals.append((max(times) - written) * 1000)
                await asyncio.sleep(1.0)
            for task in readers:
                task.cancel()
            return {
                "subscribers": subscribers,
                "rss_kib_before": rss0,
                "rss_kib_with_subscribers": rss1,
                "kib_per_subscriber": round((rss1 - rss0) / subscribers, 2),
                "reached": reached,
                "reached_all_ms": [round(t) for t in totals],
                "first_to_last_ms": [round(t) for t in spreads],
            }

        r = asyncio.run(run())
    out.details = r
    worst = max(r["reached_all_ms"])
    out.rows = [
        Row(
            f"a change to {subscribers:,} feed subscribers (one relay process)",
            f"all within {median(r['reached_all_ms']):,.0f} ms (median), worst {worst:,} ms",
            f"first to last {median(r['first_to_last_ms']):,.0f} ms",
            None,
            "<= 1000 ms",
            worst <= 1000,
        ),
        Row(
            "  relay memory per subscriber",
            f"{r['kib_per_subscriber']} KiB",
            f"{r['rss_kib_before'] / 1024:,.0f} MiB before",
        ),
    ]
    return out


def _add_lap(path: Path) -> None:
    """One more detection in a race file, rewritten in place as FPVTrackside does."""
    race = json.loads(path.read_bytes())
    record = race[0]
    record.setdefault("Detections", []).append(
        {"ID": f"bench-{time.time_ns()}", "Pilot": "bench", "LapNumber": 99, "Valid": True}
    )
    path.write_bytes(json.dumps(race).encode())


async def _open_feeds(
    host: str, port: int, count: int, arrivals: dict[str, list[float]]
) -> list[asyncio.Task[None]]:
    gate = asyncio.Semaphore(100)
    opened: list[None] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {FEED} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            first = await reader.read(65536)
        opened.append(None)
        buffer = b""
        try:
            chunk = first
            while chunk:
                if buffer == b"" and chunk is first:
                    chunk = chunk.partition(b"\r\n\r\n")[2]
                at = time.time()
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    if b"event: change" in block:
                        key = next(
                            (
                                ln[4:].decode()
                                for ln in block.split(b"\n")
                                if ln.startswith(b"id: ")
                            ),
                            "?",
                        )
                        arrivals.setdefault(key, []).append(at)
                chunk = await reader.read(65536)
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    deadline = time.monotonic() + 120
    while len(opened) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise BenchError(f"a feed subscriber failed: {failed[0].exception()!r}")
    return tasks
