"""Benchmark of the frozen pits agent (dist/pits-agent/, made by scripts/build-agent).

Not a test: it prints a table and writes bench/agent.json. It starts a relay
(`cloud-relay serve`) and the FPVTrackside simulator as processes on loopback, then measures

  (a) start to /healthz 200 (the link to the relay is up), median of 5 runs, for the frozen
      agent and for `python -m pits_appliance`;
  (b) resident memory (VmRSS, summed over the process tree) of the idle agent;
  (c) resident memory while the relay sends it 50 fetches a second for 20 s (relay
      --freshness 0, so every public request becomes a fetch, and no rate limits).

Usage: scripts/bench-agent [--rebuild] [--runs N] [--rate R] [--seconds S] (which makes .venv
first and runs this file in it). The frozen agent is rebuilt when missing, older than the agent's sources, or with --rebuild.
Everything it starts is stopped before it exits, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import poll

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv" / "bin"
FROZEN = REPO / "dist" / "pits-agent" / "pits-agent"
RESULTS = REPO / "bench" / "agent.json"
# What the frozen program is made of: a change to any of these makes the build stale.
SOURCES = [
    REPO / "pits_appliance",
    REPO / "wire",
    REPO / "setup.cfg",
    REPO / "scripts" / "build-agent",
    REPO / "scripts" / "frozen_agent.py",
]
START_TARGET_S = 0.5
RSS_TARGET_MB = 40.0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        files = path.rglob("*") if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                newest = max(newest, f.stat().st_mtime)
    return newest


def build(rebuild: bool) -> float | None:
    """Build the frozen agent unless a current one is there; the build's seconds, or None."""
    current = FROZEN.exists() and FROZEN.stat().st_mtime >= newest_mtime(SOURCES)
    if not rebuild and current:
        print(f"reusing {FROZEN} (newer than its sources; --rebuild to build anyway)")
        return None
    started = time.monotonic()
    subprocess.run([str(REPO / "scripts" / "build-agent")], check=True, cwd=REPO)
    return time.monotonic() - started


def tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in kB (a bootloader may run the program as a
    child process, so the whole tree is what the box pays for)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Processes:
    """Every process the benchmark starts, so that all of them are stopped in the end."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PITLINK_")}
        with open(self.logs / f"{name}.log", "ab") as err:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=self.logs,
                **kwargs,
            )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        return code

    def stop_all(self) -> None:
        for proc in reversed(self.running[:]):
            self.stop(proc)


class Rig:
    """A relay and a simulator as processes, with a key set and a pits token."""

    def __init__(self, procs: Processes, work: Path):
        self.procs = procs
        self.work = work
        jwks = work / "jwks.json"
        subprocess.run(
            [str(VENV / "cloud-relay"), "keygen", "--jwks", str(jwks)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        token = subprocess.run(
            [str(VENV / "cloud-relay"), "token", "--jwks", str(jwks), "--sub", "bench"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.pits_id = "bench"
        self.token_file = work / "token"
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)

        sim_port = free_port()
        self.sim = procs.start(
            "sim",
            [str(VENV / "python"), str(REPO / "scripts" / "fpvtrackside_sim.py"),
             "--port", str(sim_port)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.sim.stdout is not None
        # "FPVTrackside simulator serving http://...:port/ (web root /tmp/...) event <id>"
        banner = self.sim.stdout.readline().decode()
        if "web root" not in banner:
            raise RuntimeError(f"the simulator did not start: {banner!r}")
        self.sim_root = Path(banner.split("(web root ", 1)[1].split(")", 1)[0])
        self.sim_url = f"http://127.0.0.1:{sim_port}"

        self.relay_port = free_port()
        self.relay = procs.start(
            "relay",
            [str(VENV / "cloud-relay"), "serve", "--port", str(self.relay_port),
             "--jwks", str(jwks), "--freshness", "0", "--client-rate", "0",
             "--pits-fetch-rate", "0", "--log-level", "WARNING"],
        )  # fmt: skip
        poll(lambda: http_get(f"{self.relay_url}/healthz")[0] == 200, what="the relay")

    @property
    def relay_url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    def data_paths(self) -> list[str]:
        """Every JSON file the simulator serves, as relay paths of this pits."""
        files = sorted(self.sim_root.rglob("*.json"))
        return [f"/pits/{self.pits_id}/{f.relative_to(self.sim_root).as_posix()}" for f in files]

    def relay_metric(self, name: str) -> float:
        _, body = http_get(f"{self.relay_url}/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def agent_command(kind: str, rig: Rig, status_port: int) -> list[str]:
    program = [str(FROZEN)] if kind == "frozen" else [str(VENV / "python"), "-m", "pits_appliance"]
    return [
        *program,
        "--cloud-url", rig.relay_url,
        "--token-file", str(rig.token_file),
        "--fpvtrackside", rig.sim_url,
        "--status-host", "127.0.0.1",
        "--status-port", str(status_port),
        "--reconnect-base", "0.1",
        "--log-level", "WARNING",
    ]  # fmt: skip


def start_agent(kind: str, rig: Rig) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start an agent; return it, its status port and the seconds until /healthz said 200."""
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    started = time.monotonic()
    proc = rig.procs.start(
        f"agent-{kind}", agent_command(kind, rig, port), stdout=subprocess.DEVNULL
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} agent exited {proc.returncode}; see its log")
        return http_get(healthz, timeout=1.0)[0] == 200

    # Checked often: the time to the first 200 is what is measured.
    poll(up, what=f"the {kind} agent's /healthz", interval=0.005)
    return proc, port, time.monotonic() - started


def start_times(kind: str, rig: Rig, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        proc, _, seconds = start_agent(kind, rig)
        times.append(seconds)
        if rig.procs.stop(proc) != 0:
            raise RuntimeError(f"the {kind} agent did not exit 0 on SIGTERM")
    return times


def idle_rss(proc: subprocess.Popen[bytes], seconds: float = 3.0) -> float:
    """Peak RSS in MB over `seconds` of an agent that nobody asks for anything."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.1)
    return peak / 1024


def load_rss(
    proc: subprocess.Popen[bytes], rig: Rig, rate: float, seconds: float
) -> dict[str, Any]:
    """Public requests at `rate` a second for `seconds`, round robin over the simulator's
    files; RSS sampled every 0.25 s. Bounded in count and time: rate * seconds requests."""
    paths = rig.data_paths()
    total = int(rate * seconds)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    samples: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def one(path: str) -> None:
        t0 = time.monotonic()
        status, _ = http_get(rig.relay_url + path, timeout=10.0)
        with lock:
            statuses[status] += 1
            latencies.append(time.monotonic() - t0)

    def sampler() -> None:
        while not done.is_set():
            samples.append(tree_rss_kb(proc.pid))
            done.wait(0.25)

    fetches_before = rig.relay_metric("pitlink_fetches_total")
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        for i in range(total):
            # A fixed schedule, not "as fast as it goes": request i leaves at began + i / rate.
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, paths[i % len(paths)])
    elapsed = time.monotonic() - began
    done.set()
    watcher.join()
    fetches = rig.relay_metric("pitlink_fetches_total") - fetches_before
    latencies.sort()
    return {
        "requests": total,
        "seconds": round(elapsed, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "fetches_to_pits": int(fetches),
        "latency_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "latency_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1),
        "rss_peak_mb": round(max(samples) / 1024, 1),
        "rss_end_mb": round(samples[-1] / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build even if current")
    parser.add_argument("--runs", type=int, default=5, help="start-up runs per kind (5)")
    parser.add_argument("--rate", type=float, default=50.0, help="fetches a second (50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load (20)")
    args = parser.parse_args()
    # SIGTERM stops the benchmark like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    build_seconds = build(args.rebuild)
    dist = FROZEN.parent
    dist_mb = sum(f.stat().st_size for f in dist.rglob("*") if f.is_file()) / 1024 / 1024

    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    procs = Processes(work)
    try:
        rig = Rig(procs, work)
        print(f"relay {rig.relay_url}, simulator {rig.sim_url}, logs in {work}")
        start = {kind: start_times(kind, rig, args.runs) for kind in ("frozen", "python")}

        rss: dict[str, float] = {}
        load: dict[str, Any] = {}
        for kind in ("python", "frozen"):
            proc, _, _ = start_agent(kind, rig)
            rss[kind] = round(idle_rss(proc), 1)
            if kind == "frozen":
                load = load_rss(proc, rig, args.rate, args.seconds)
            procs.stop(proc)
        procs.stop_all()
    except BaseException:
        procs.stop_all()
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)

    medians = {kind: statistics.median(times) for kind, times in start.items()}
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Other work on the machine moves these numbers: the load says how much there was.
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "dist_mb": round(dist_mb, 1),
        "start_to_healthz_s": {
            kind: {"median": round(medians[kind], 3), "runs": [round(t, 3) for t in times]}
            for kind, times in start.items()
        },
        "idle_rss_mb": rss,
        "load": {"rate": args.rate, **load},
        "targets": {"start_s": START_TARGET_S, "rss_mb": RSS_TARGET_MB},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    def verdict(value: float, target: float) -> str:
        return "ok" if value < target else "OVER"

    rows = [
        ("start to /healthz 200, frozen (median)", f"{medians['frozen']:.3f} s",
         f"< {START_TARGET_S} s", verdict(medians["frozen"], START_TARGET_S)),
        ("start to /healthz 200, python -m (median)", f"{medians['python']:.3f} s", "", ""),
        ("RSS idle, frozen", f"{rss['frozen']:.1f} MB",
         f"< {RSS_TARGET_MB:.0f} MB", verdict(rss["frozen"], RSS_TARGET_MB)),
        ("RSS idle, python -m", f"{rss['python']:.1f} MB", "", ""),
        (f"RSS peak at {args.rate:g} fetches/s for {args.seconds:g} s, frozen",
         f"{load['rss_peak_mb']:.1f} MB",
         f"< {RSS_TARGET_MB:.0f} MB", verdict(load["rss_peak_mb"], RSS_TARGET_MB)),
        ("  requests: statuses / fetches to the pits",
         f"{load['statuses']} / {load['fetches_to_pits']}", "", ""),
        ("  latency p50 / p99", f"{load['latency_p50_ms']} / {load['latency_p99_ms']} ms", "", ""),
        ("dist/pits-agent/ size", f"{dist_mb:.1f} MB", "", ""),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:.2f}", "", ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>14}  {target:>9}  {ok}")
    print(f"\nwritten to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
