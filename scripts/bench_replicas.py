"""Measure replicas side by side (see scripts/bench-replicas). Numbers, not assertions.

1. Cache-hit throughput: wrk against one relay, then against two replicas at once (one wrk
   per replica), alternating A B A B and taking medians. Every request is a cache hit (the
   freshness window is longer than the run), so this is the relay's own ceiling.
2. Cross-replica fetch latency: with freshness 0 every request revalidates with the pits;
   requests to the replica holding the pits (local) and to the other one (forwarded through
   Redis) alternate, and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pitlink_testkit.loopback import free_port
from pitlink_testkit.redis_server import RedisServer
from pitlink_testkit.waiting import poll

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except Exception:
        return 0, b""


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wrk(url: str, seconds: int, connections: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        stdout=subprocess.PIPE,
        text=True,
    )


def requests_per_second(out: str) -> float:
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds for the throughput")
    parser.add_argument("--samples", type=int, default=300, help="requests per latency series")
    args = parser.parse_args()
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (scripts/bench-replicas installs it)")

    tmp = Path(tempfile.mkdtemp(prefix="pitlink-bench-"))
    stack = Stack(tmp)
    try:
        redis_server = RedisServer(tmp / "redis", maxmemory=None)
        redis_server.start(lambda command: stack.start("redis", list(command)))
        sim_port = free_port()
        stack.start(
            "sim",
            [
                sys.executable,
                "scripts/fpvtrackside_sim.py",
                "--port",
                str(sim_port),
                "--lap-interval",
                "0",
            ],
        )
        jwks = tmp / "jwks.json"
        subprocess.run(
            [str(BIN / "cloud-relay"), "keygen", "--jwks", str(jwks)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        token = subprocess.run(
            [
                str(BIN / "cloud-relay"),
                "token",
                "--jwks",
                str(jwks),
                "--sub",
                "bench",
                "--role",
                "pits",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (tmp / "token").write_text(token)

        def relay(name: str, port: int, freshness: float, redis: bool) -> None:
            cmd = [
                str(BIN / "cloud-relay"),
                "serve",
                "--port",
                str(port),
                "--jwks",
                str(jwks),
                "--client-rate",
                "0",
                "--client-miss-rate",
                "0",
                "--pits-fetch-rate",
                "0",
                "--freshness",
                str(freshness),
                "--log-level",
                "WARNING",
            ]
            if redis:
                cmd += ["--redis-url", redis_server.url, "--node-id", name]
            stack.start(name, cmd)
            poll(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, what=f"relay {name}")

        pa, pb = free_port(), free_port()
        relay("a", pa, 3600.0, True)
        relay("b", pb, 3600.0, True)
        stack.start(
            "agent",
            [
                str(BIN / "pits-agent"),
                "--cloud-url",
                f"http://127.0.0.1:{pa}",
                "--token-file",
                str(tmp / "token"),
                "--fpvtrackside",
                f"http://127.0.0.1:{sim_port}",
                "--status-host",
                "127.0.0.1",
                "--status-port",
                str(free_port()),
                "--log-level",
                "WARNING",
            ],
        )
        path = "/pits/bench/httpfiles/Channels.json"
        poll(lambda: get(f"http://127.0.0.1:{pa}{path}")[0] == 200, what="data through A")
        poll(lambda: get(f"http://127.0.0.1:{pb}{path}")[0] == 200, what="data through B")
        body = get(f"http://127.0.0.1:{pa}{path}")[1]

        one, two = [], []
        for _ in range(args.rounds):
            w = wrk(f"http://127.0.0.1:{pa}{path}", args.seconds, 32)
            one.append(requests_per_second(w.communicate()[0]))
            wa = wrk(f"http://127.0.0.1:{pa}{path}", args.seconds, 32)
            wb = wrk(f"http://127.0.0.1:{pb}{path}", args.seconds, 32)
            two.append(
                requests_per_second(wa.communicate()[0]) + requests_per_second(wb.communicate()[0])
            )

        # Latency: new relays with freshness 0, so every request goes to the pits.
        for proc in stack.procs[-3:]:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        la, lb = free_port(), free_port()
        relay("la", la, 0.0, True)
        relay("lb", lb, 0.0, True)
        stack.start(
            "agent2",
            [
                str(BIN / "pits-agent"),
                "--cloud-url",
                f"http://127.0.0.1:{la}",
                "--token-file",
                str(tmp / "token"),
                "--fpvtrackside",
                f"http://127.0.0.1:{sim_port}",
                "--status-host",
                "127.0.0.1",
                "--status-port",
                str(free_port()),
                "--log-level",
                "WARNING",
            ],
        )
        poll(
            lambda: get(f"http://127.0.0.1:{la}{path}")[0] == 200,
            what="data through the latency pair",
        )
        poll(lambda: get(f"http://127.0.0.1:{lb}{path}")[0] == 200, what="forwarding")
        local, remote = [], []
        for _ in range(args.samples):
            for port, series in ((la, local), (lb, remote)):
                started = time.perf_counter()
                status, _ = get(f"http://127.0.0.1:{port}{path}")
                if status == 200:
                    series.append((time.perf_counter() - started) * 1000)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "body_bytes": len(body),
        "cache_hit_rps": {
            "one_replica": statistics.median(one),
            "two_replicas": statistics.median(two),
            "runs_one": one,
            "runs_two": two,
        },
        "ratio_two_over_one": round(statistics.median(two) / statistics.median(one), 2)
        if statistics.median(one)
        else None,
        "fetch_latency_ms": {
            "local_p50": round(statistics.median(local), 2),
            "forwarded_p50": round(statistics.median(remote), 2),
            "added_p50": round(statistics.median(remote) - statistics.median(local), 2),
            "samples": len(local),
        },
    }
    out = ROOT / "bench" / "replicas.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["fetch_latency_ms"]
    print(f"""
what                                   measured        target
cache hits, one replica (req/s)        {result["cache_hit_rps"]["one_replica"]:>10.0f}
cache hits, two replicas (req/s)       {result["cache_hit_rps"]["two_replicas"]:>10.0f}
two replicas / one                     {result["ratio_two_over_one"]:>10}      >= 1.7
fetch through the holder, p50 (ms)     {lat["local_p50"]:>10}
fetch through the other, p50 (ms)      {lat["forwarded_p50"]:>10}
added by the cross-replica hop (ms)    {lat["added_p50"]:>10}      < 2
(2 cores shared by relays, redis, the agent and wrk; written to {out.relative_to(ROOT)})""")


if __name__ == "__main__":
    main()
