"""Comparisons about the pits side: fan-in, uplink bytes, canonical JSON, held connections,
and how fast a black-holed link is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import time
import urllib.parse
from typing import Any

from benchlib.httpc import HTTPConnection, open_connections, spectate
from benchlib.report import Chart, Outcome, Row, ratio
from benchlib.stack import (
    BIN,
    FIXTURES,
    PITS_ID,
    BenchError,
    Settings,
    Stack,
    cpu_seconds,
    http_get,
    make_keys,
    median,
    metric,
    percentile,
    raise_nofile,
    rss_kib,
    start_agent,
    start_relay,
    start_sim,
    wait_data,
)
from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.waiting import poll


class _CountingReader:
    """A StreamReader stand-in that adds what it reads to one of the proxy's counters."""

    def __init__(self, reader: asyncio.StreamReader, proxy: CountingProxy, up: bool):
        self.reader, self.proxy, self.up = reader, proxy, up

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        if self.up:
            self.proxy.up_bytes += len(data)
        else:
            self.proxy.down_bytes += len(data)
        return data


class CountingProxy(FaultProxy):
    """The tests' fault proxy, counting the bytes it carries each way.

    "Up" is agent to relay (the pits' uplink); "down" is relay to agent.
    """

    up_bytes = 0
    down_bytes = 0

    async def _pump(self, reader: Any, writer: Any, link: Any) -> None:
        counting = _CountingReader(reader, self, up=writer is link[1])
        await super()._pump(counting, writer, link)


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def fanin(settings: Settings) -> Outcome:
    """4. Spectators on one path vs the fetches that reach the pits, 10 to 2,000 spectators."""
    out = Outcome("fanin")
    seconds = 3.0 if settings.quick else 8.0
    tiers = (10, 100, 500, 2000)
    raise_nofile()
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = start_sim(stack, lap_interval=1.0)  # a live race: the file does change
        relay = start_relay(stack, keys, "relay", "--client-rate", "0", "--client-miss-rate", "0")
        start_agent(stack, keys, relay.url, sim)
        path = f"/pits/{PITS_ID}{sim.current_race()}"
        wait_data(stack, relay.url + path)
        host, port = _host_port(relay.url)
        results: dict[int, dict[str, Any]] = {}
        for n in tiers:

            async def tier(n: int = n) -> dict[str, Any]:
                conns = await open_connections(host, port, n)
                before = metric(relay.url, "pitlink_fetches_total")
                began = time.monotonic()
                stats = await spectate(
                    conns, lambda: [path], seconds, sample_latency=max(1, n // 100)
                )
                elapsed = time.monotonic() - began
                fetches = metric(relay.url, "pitlink_fetches_total") - before
                return {
                    "spectators": n,
                    "seconds": round(elapsed, 2),
                    "requests": stats.requests,
                    "requests_per_s": round(stats.requests / elapsed, 1),
                    "ok": stats.ok,
                    "errors": stats.errors,
                    "statuses": stats.statuses,
                    "late_polls": stats.late,
                    "p50_ms": round(median(stats.latencies_ms), 2),
                    "p99_ms": round(percentile(stats.latencies_ms, 99), 2),
                    "fetches": fetches,
                    "fetches_per_s": round(fetches / elapsed, 2),
                }

            results[n] = asyncio.run(tier())
            stack.check_alive()
    out.details = {"path": path, "freshness_s": 1.0, "per_tier": results}
    short = [n for n, r in results.items() if r["requests_per_s"] < 0.9 * n]
    if short:
        r = results[short[0]]
        out.message = (
            f"past saturation from {short[0]:,} spectators: the relay served "
            f"{r['requests_per_s']:,.0f} of {short[0]:,} req/s asked, p50 {r['p50_ms']:,.0f} ms "
            "(spectators, relay, agent and simulator share the 2 cores)"
        )
    for n, r in results.items():
        # One fetch per 1 s window, plus one for a window cut by the start or the end.
        met = r["fetches"] <= r["seconds"] + 1 and r["errors"] == 0
        out.rows.append(
            Row(
                f"fan-in: {n:,} spectators, one path",
                f"{r['fetches_per_s']:.2f} fetch/s (p50 {r['p50_ms']:,.0f} ms)",
                f"{r['requests_per_s']:,.0f} of {n:,} req/s asked",
                ratio(r["fetches"], r["requests"]),
                "<= 1 fetch/s",
                met,
            )
        )
    out.charts = [
        Chart(
            "fan-in: fetches reaching the pits per second",
            "fetches/s (one path, 1 s freshness)",
            {f"{n:,} spect.": r["fetches_per_s"] for n, r in results.items()},
            target=1.0,
        ),
        Chart(
            "fan-in: spectator requests per second",
            "requests/s",
            {f"{n:,} spect.": r["requests_per_s"] for n, r in results.items()},
        ),
    ]
    return out


def uplink(settings: Settings) -> Outcome:
    """5. Bytes over the pits' uplink during a live race with 500 spectators, per hour."""
    out = Outcome("uplink")
    seconds = 10.0 if settings.quick else 60.0
    spectators = 500
    raise_nofile()
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = start_sim(stack, lap_interval=1.0)
        relay = start_relay(stack, keys, "relay", "--client-rate", "0", "--client-miss-rate", "0")

        async def run() -> dict[str, Any]:
            proxy = CountingProxy(*_host_port(relay.url))
            await proxy.start()
            try:
                start_agent(stack, keys, f"http://127.0.0.1:{proxy.port}", sim)
                event = f"/pits/{PITS_ID}{sim.path('Event.json')}"
                for _ in range(300):
                    if (await asyncio.to_thread(http_get, relay.url + event, timeout=5))[0] == 200:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise BenchError(f"no data through the proxy:\n{stack.log('agent')}")
                current = [sim.current_race()]

                async def follow_race() -> None:
                    while True:
                        await asyncio.sleep(0.5)
                        with contextlib.suppress(OSError, ValueError):
                            current[0] = sim.current_race()

                def paths() -> list[str]:
                    return [
                        event,
                        f"/pits/{PITS_ID}{sim.path('Results.json')}",
                        f"/pits/{PITS_ID}{current[0]}",
                    ]

                conns = await open_connections(*_host_port(relay.url), spectators)
                follower = asyncio.ensure_future(follow_race())
                fetches0 = metric(relay.url, "pitlink_fetches_total")
                saved0 = metric(relay.url, "pitlink_cache_bytes_saved_total")
                up0, down0, began = proxy.up_bytes, proxy.down_bytes, time.monotonic()
                stats = await spectate(conns, paths, seconds, sample_latency=50)
                elapsed = time.monotonic() - began
                follower.cancel()
                return {
                    "seconds": round(elapsed, 2),
                    "spectators": spectators,
                    "files_polled_each_second": 3,
                    "uplink_bytes": proxy.up_bytes - up0,
                    "downlink_bytes": proxy.down_bytes - down0,
                    "spectator_bytes": stats.bytes_received,
                    "spectator_body_bytes": stats.body_bytes,
                    "spectator_requests": stats.requests,
                    "spectator_errors": stats.errors,
                    "late_polls": stats.late,
                    "statuses": stats.statuses,
                    "fetches": metric(relay.url, "pitlink_fetches_total") - fetches0,
                    "bytes_saved_by_304": metric(relay.url, "pitlink_cache_bytes_saved_total")
                    - saved0,
                    "p50_ms": round(median(stats.latencies_ms), 2),
                }
            finally:
                await proxy.stop()

        r = asyncio.run(run())
    hour = 3600.0 / r["seconds"]
    per_hour = {
        k: round(r[k] * hour)
        for k in ("uplink_bytes", "downlink_bytes", "spectator_bytes", "bytes_saved_by_304")
    }
    wanted = spectators * r["files_polled_each_second"] * r["seconds"]
    # Past saturation the spectators poll less often than asked; the pits' uplink does not
    # depend on how many ask, what they receive does: scaled to the rate asked for.
    asked = round(per_hour["spectator_bytes"] * wanted / max(1, r["spectator_requests"]))
    out.details = {
        **r,
        "requests_asked_for": round(wanted),
        "per_hour": per_hour,
        "spectator_bytes_per_hour_at_asked_rate": asked,
        "uplink_note": "bytes on the wire: the WebSocket uses permessage-deflate",
    }
    mb = 1e6
    rate = r["spectator_requests"] / r["seconds"]
    out.rows = [
        Row(
            "uplink per hour, 500 spectators, live race",
            f"{per_hour['uplink_bytes'] / mb:,.2f} MB/h",
            f"{asked / mb:,.0f} MB/h to spectators",
            ratio(per_hour["uplink_bytes"], asked),
            "(info)",
        ),
        Row(
            "  spectator requests served",
            f"{rate:,.0f} req/s of {spectators * r['files_polled_each_second']:,} asked",
            f"{per_hour['spectator_bytes'] / mb:,.0f} MB/h received",
        ),
        Row(
            "  bodies kept off the uplink by 304s",
            f"{per_hour['bytes_saved_by_304'] / mb:,.2f} MB/h",
            f"{r['fetches'] / r['seconds']:.1f} fetch/s",
            None,
            f"downlink {per_hour['downlink_bytes'] / mb:,.2f} MB/h",
        ),
    ]
    out.charts = [
        Chart(
            "uplink vs spectators, MB per hour (log)",
            "MB per hour",
            {
                "pits uplink": per_hour["uplink_bytes"] / mb,
                "kept off by 304s": per_hour["bytes_saved_by_304"] / mb,
                "to spectators": asked / mb,
            },
            log=True,
        )
    ]
    return out


def _json_files(settings: Settings) -> tuple[str, list[tuple[str, bytes]]]:
    if (FIXTURES / "events").is_dir():
        root, source = FIXTURES, "real event (tests/fixtures/fpvtrackside)"
    else:
        from pitlink_testkit.fpvtrackside import LiveEvent

        root, source = settings.tmp / "generated", "generated event (simulator, 300 laps)"
        event = LiveEvent(root, seed=1, pilots=6)
        for _ in range(300):
            event.step()
    files = [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*.json"))]
    return source, files


def canonical(settings: Settings) -> Outcome:
    """6. The agent's canonical JSON + ETag (wire.canonical.prepare_body) vs plain SHA-256."""
    from wire.canonical import prepare_body

    out = Outcome("canonical")
    source, files = _json_files(settings)
    total = sum(len(b) for _, b in files)
    sample_s = 0.3 if settings.quick else 1.0
    rounds = 3 if settings.quick else 7

    def canonical_pass() -> None:
        for path, body in files:
            prepare_body(path, body)

    def sha_pass() -> None:
        for _, body in files:
            hashlib.sha256(body).hexdigest()

    def mb_per_s(work: Any) -> float:
        passes, began = 0, time.perf_counter()
        while time.perf_counter() - began < sample_s:
            work()
            passes += 1
        return passes * total / (time.perf_counter() - began) / 1e6

    runs: dict[str, list[float]] = {"canonical JSON + ETag": [], "sha256 only": []}
    for _ in range(rounds):
        runs["canonical JSON + ETag"].append(round(mb_per_s(canonical_pass), 2))
        runs["sha256 only"].append(round(mb_per_s(sha_pass), 2))
    a, b = (median(v) for v in runs.values())
    out.details = {"source": source, "files": len(files), "bytes": total, "mb_per_s": runs}
    out.rows = [
        Row(
            "canonical JSON + ETag vs sha256",
            f"{a:,.1f} MB/s",
            f"{b:,.1f} MB/s",
            ratio(a, b),
            "(info)",
        )
    ]
    out.charts = [
        Chart(
            f"prepare_body vs sha256 ({len(files)} files, {total // 1024} KiB)",
            "MB/s of input",
            {k: median(v) for k, v in runs.items()},
            runs,
        )
    ]
    return out


def _swarm_line(stack: Stack, event: str) -> dict[str, Any] | None:
    for line in reversed(stack.log("swarm", tail=200).splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict) and data.get("event") == event:
                return data
    return None


def conns(settings: Settings) -> Outcome:
    """7. Idle pits connections one relay process holds, and its memory."""
    out = Outcome("conns")
    count = 500 if settings.quick else 5000
    hold = 6.0 if settings.quick else 20.0  # the full run outlasts the 15 s ping timeout
    nofile = raise_nofile()
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        relay = start_relay(
            stack, keys, "relay", "--client-rate", "0", "--client-miss-rate", "0", nofile=nofile
        )
        time.sleep(1.0)
        rss_idle = rss_kib(relay.proc.pid)
        swarm = stack.start(
            "swarm",
            [
                str(BIN / "python"),
                "scripts/benchlib/pits_swarm.py",
                "--url",
                relay.url,
                "--jwks",
                str(keys.jwks),
                "--count",
                str(count),
            ],
            nofile=nofile,
            stdin=subprocess.PIPE,
        )
        ready = stack.wait(
            lambda: _swarm_line(stack, "ready"), f"{count} pits connections", timeout=300
        )
        open_at_ready = metric(relay.url, "pitlink_control_connections", state="open")
        cpu0, began = cpu_seconds(relay.proc.pid), time.monotonic()
        time.sleep(hold)
        cpu = (cpu_seconds(relay.proc.pid) - cpu0) / (time.monotonic() - began)
        rss_held = rss_kib(relay.proc.pid)
        open_after = metric(relay.url, "pitlink_control_connections", state="open")
        assert swarm.stdin is not None
        swarm.stdin.close()
        done = poll(lambda: _swarm_line(stack, "done"), what="the swarm's last word", timeout=30)
    per_conn = (rss_held - rss_idle) / max(1.0, open_after)
    out.details = {
        "requested": count,
        "ready": ready,
        "open_at_relay_when_ready": open_at_ready,
        "open_at_relay_after_hold": open_after,
        "hold_seconds": hold,
        "swarm_done": done,
        "relay_rss_idle_kib": rss_idle,
        "relay_rss_held_kib": rss_held,
        "kib_per_connection": round(per_conn, 1),
        "relay_cpu_while_holding": round(cpu, 3),
        "open_files_limit": nofile,
    }
    out.rows = [
        Row(
            f"idle pits connections held ({hold:g} s)",
            f"{open_after:,.0f} open",
            f"{count:,} dialled",
            ratio(open_after, count),
            ">= 5,000" if not settings.quick else ">= 500 (quick)",
            open_after >= count,
        ),
        Row(
            "  relay RSS holding them",
            f"{rss_held / 1024:,.0f} MiB ({per_conn:.1f} KiB/conn)",
            f"{rss_idle / 1024:,.0f} MiB idle",
            ratio(rss_held, rss_idle),
        ),
        Row(
            "  relay CPU holding them (pings)",
            f"{cpu * 100:.1f} % of a core",
            f"{ready['connect_seconds']:.1f} s to connect all",
        ),
    ]
    out.charts = [
        Chart(
            f"relay memory, {open_after:,.0f} idle pits connections",
            "MiB resident",
            {"no pits": rss_idle / 1024, f"{open_after:,.0f} pits": rss_held / 1024},
        )
    ]
    return out


def blackhole(settings: Settings) -> Outcome:
    """A black-holed link (no FIN, no RST) replaced and data flowing again, default pings."""
    out = Outcome("blackhole")
    trials = 1 if settings.quick else 3
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = start_sim(stack)
        relay = start_relay(stack, keys, "relay", "--client-rate", "0", "--client-miss-rate", "0")
        host, port = _host_port(relay.url)
        probe_base = f"/pits/{PITS_ID}{sim.path('probe')}"

        async def probe(name: str) -> bool:
            conn = HTTPConnection(host, port)
            try:
                status, *_ = await conn.get(f"{probe_base}-{name}.json", timeout=12)
                return status == 200
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                return False
            finally:
                conn.close()

        async def run() -> list[dict[str, Any]]:
            proxy = FaultProxy(host, port)
            await proxy.start()
            results = []
            try:
                start_agent(stack, keys, f"http://127.0.0.1:{proxy.port}", sim)
                for i in range(trials):
                    deadline = time.monotonic() + 60
                    while not await probe(f"ready-{i}-{time.monotonic_ns()}"):
                        if time.monotonic() > deadline:
                            raise BenchError(f"no data through the proxy:\n{stack.log('agent')}")
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(1.0)
                    accepted = proxy.accepted
                    began = time.monotonic()
                    held = proxy.blackhole_existing()
                    recovered: float | None = None
                    tasks: set[asyncio.Task[bool]] = set()
                    k = 0
                    while recovered is None and time.monotonic() - began < 60:
                        task = asyncio.ensure_future(probe(f"{i}-{k}"))
                        tasks.add(task)
                        k += 1
                        await asyncio.sleep(0.25)
                        for t in [t for t in tasks if t.done()]:
                            tasks.discard(t)
                            if t.result() and recovered is None:
                                recovered = time.monotonic() - began
                    for t in tasks:
                        t.cancel()
                    results.append(
                        {
                            "links_held": held,
                            "recovered_after_s": None if recovered is None else round(recovered, 2),
                            "new_links": proxy.accepted - accepted,
                            "probes": k,
                        }
                    )
            finally:
                await proxy.stop()
            return results

        results = asyncio.run(run())
    times = [r["recovered_after_s"] for r in results if r["recovered_after_s"] is not None]
    worst = max(times) if len(times) == len(results) else float("inf")
    out.details = {"ping_interval_s": 5, "ping_timeout_s": 15, "trials": results}
    out.rows = [
        Row(
            "black-holed link: data again after",
            f"{median(times):.1f} s (worst {worst:.1f})" if times else "never",
            "15 s ping timeout",
            ratio(median(times), 15.0) if times else None,
            "<= 20 s",
            worst <= 20.0,
        )
    ]
    out.charts = [
        Chart(
            "black hole to data flowing again",
            "seconds",
            {f"trial {i + 1}": r["recovered_after_s"] or 0.0 for i, r in enumerate(results)},
            target=20.0,
        )
    ]
    return out
