"""What the benchmarks start, and how they stop it: processes, ports, polling, wrk, metrics.

Every process is started in a session of its own, so that the suite stops it (and whatever it
forked: `cloud-relay serve --workers 2`, nginx's worker) by its process group, in order, even
when the suite itself is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitlink_testkit.loopback import free_port
from pitlink_testkit.redis_server import RedisServer
from pitlink_testkit.waiting import poll

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PITS_ID = "bench"


class BenchError(Exception):
    """A comparison could not run: a part did not start or answered wrongly."""


class Skip(BenchError):
    """A comparison cannot run here (a tool is missing); said in the table, not a failure."""


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise Skip(
            f"{', '.join(missing)} not installed (./scripts/bench installs "
            f"{'them' if len(missing) > 1 else 'it'} with apt-get)"
        )


def raise_nofile() -> int:
    """Raise this process's open-files limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def http_get(
    url: str, *, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET without raising: (status, headers, body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except (OSError, ValueError):
        return 0, {}, b""


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of one Prometheus metric over the label sets that have `labels`."""
    status, _, body = http_get(base_url + "/metrics")
    if status != 200:
        raise BenchError(f"{base_url}/metrics answered {status}")
    pattern = re.compile(rf"^{re.escape(name)}(?:{{([^}}]*)}})? ([0-9.eE+-]+)$", re.M)
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(value)
        for label_text, value in pattern.findall(body.decode())
        if all(w in label_text for w in wanted)
    )


def rss_kib(pid: int) -> int:
    """Resident memory of one process, KiB (VmRSS of /proc/<pid>/status)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN when there is nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- processes -------------------------------------------------------------------------------


class Stack:
    """Every process one comparison started; stop() ends them all, newest first."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(
        self, name: str, args: Sequence[str], *, nofile: int | None = None, stdin: Any = None
    ) -> subprocess.Popen[bytes]:
        if nofile is not None and shutil.which("prlimit"):
            # prlimit sets the limit on itself and execs, so the pid is the program's own.
            args = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *args]
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the suite, which stops these in order
            )
        self.procs.append((name, proc))
        return proc

    def log(self, name: str, tail: int = 15) -> str:
        path = self.tmp / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:])

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with {proc.returncode}:\n{self.log(name) or '(no output)'}"
                )

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """poll `check`, failing at once (with its log) if one of the processes died."""

        def alive_and(check: Callable[[], Any] = check) -> Any:
            self.check_alive()
            return check()

        return poll(alive_and, what=what, timeout=timeout)

    def stop_one(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group too: a forked worker must not outlive its parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop_one(proc)


# --- Pitlink's parts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    jwks: Path
    token_file: Path

    def issue(self, sub: str, ttl: float = 30 * 86400) -> str:
        from cloud.keys import KeySet

        return KeySet.load(self.jwks).issue(sub=sub, role="pits", ttl=ttl)


@dataclass(frozen=True)
class Settings:
    """How long each comparison runs: `quick` for a smoke test."""

    quick: bool
    tmp: Path

    @property
    def wrk_seconds(self) -> float:
        return 2.0 if self.quick else 5.0

    @property
    def rounds(self) -> int:
        return 2 if self.quick else 5


def make_keys(tmp: Path) -> Keys:
    from cloud.keys import keygen

    jwks = tmp / "jwks.json"
    if not jwks.exists():
        keygen(jwks, "bench")
    keys = Keys(jwks, tmp / "token")
    keys.token_file.write_text(keys.issue(PITS_ID))
    return keys


@dataclass
class Sim:
    url: str
    root: Path
    event_id: str

    def path(self, name: str) -> str:
        """The public path of one of the event's files, e.g. "Event.json"."""
        if name == "Channels.json":
            return "/httpfiles/Channels.json"
        return f"/events/{self.event_id}/{name}"

    def races(self) -> list[Path]:
        return sorted((self.root / "events" / self.event_id).glob("*/Race.json"))

    def biggest(self) -> str:
        """The event's largest JSON file (a whole race on the real event): the hit-test body."""
        files = (self.root / "events" / self.event_id).rglob("*.json")
        biggest = max(files, key=lambda p: p.stat().st_size)
        return self.path(str(biggest.relative_to(self.root / "events" / self.event_id)))

    def current_race(self) -> str:
        """The race being run now: the Race.json written last (rewritten at each lap)."""
        newest = max(self.races(), key=lambda p: p.stat().st_mtime_ns)
        return self.path(f"{newest.parent.name}/Race.json")


FIXTURES = ROOT / "tests" / "fixtures" / "fpvtrackside"


def start_sim(
    stack: Stack,
    *,
    lap_interval: float = 0.0,
    root: Path | None = None,
    name: str = "sim",
    notification_url: str | None = None,
    version: str | None = None,
) -> Sim:
    """The FPVTrackside simulator: a generated event (live when `lap_interval`), or `root`;
    with `notification_url`, its ExtensionMode PUTs every race event there."""
    port = free_port()
    args = [sys.executable, "scripts/fpvtrackside_sim.py", "--port", str(port)]
    args += ["--root", str(root)] if root else ["--lap-interval", str(lap_interval)]
    if notification_url is not None:
        args += ["--extension-mode", "--notification-url", notification_url]
    if version is not None:
        args += ["--fpvtrackside-version", version]
    stack.start(name, args)
    line = re.compile(r"\(web root (.+)\) event (\S+)")

    def announced() -> re.Match[str] | None:
        return line.search(stack.log(name, tail=50))

    found = stack.wait(announced, "the simulator")
    return Sim(f"http://127.0.0.1:{port}", Path(found.group(1)), found.group(2))


def event_sim(stack: Stack) -> Sim:
    """A quiet origin with realistic files: the real event when the fixtures are there."""
    return start_sim(stack, root=FIXTURES if (FIXTURES / "events").is_dir() else None)


@dataclass
class Relay:
    url: str
    proc: subprocess.Popen[bytes]

    def data(self, path: str) -> str:
        return f"{self.url}/pits/{PITS_ID}{path}"


def start_relay(
    stack: Stack,
    keys: Keys,
    name: str,
    *flags: str,
    nofile: int | None = None,
    profile: Path | None = None,
) -> Relay:
    """A relay process; with `profile`, run under cProfile, which writes there when it stops."""
    port = free_port()
    program = [str(BIN / "cloud-relay")]
    if profile is not None:
        program = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "cloud"]
    cmd = [
        *program,
        "serve",
        "--port",
        str(port),
        "--jwks",
        str(keys.jwks),
        "--log-level",
        "WARNING",
        "--grace-period",
        "1",
        *flags,
    ]
    proc = stack.start(name, cmd, nofile=nofile)
    url = f"http://127.0.0.1:{port}"
    stack.wait(lambda: http_get(url + "/readyz", timeout=2)[0] == 200, f"relay {name}")
    return Relay(url, proc)


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    status_url: str  # its status port: /healthz, /metrics


def start_agent(
    stack: Stack,
    keys: Keys,
    cloud_url: str,
    sim: Sim,
    name: str = "agent",
    *flags: str,
    port: int | None = None,
    fpvtrackside: str | None = None,
) -> Agent:
    """An agent; `port` its status port (FPVTrackside's ExtensionMode PUTs there), and
    `fpvtrackside` where it reaches FPVTrackside when not at the simulator itself (a proxy)."""
    port = port or free_port()
    proc = stack.start(
        name,
        [
            str(BIN / "pits-agent"),
            "--cloud-url",
            cloud_url,
            "--token-file",
            str(keys.token_file),
            "--fpvtrackside",
            fpvtrackside or sim.url,
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(port),
            "--log-level",
            "WARNING",
            *flags,
        ],
    )
    return Agent(proc, f"http://127.0.0.1:{port}")


def wait_data(stack: Stack, url: str, what: str = "data through the relay") -> bytes:
    """Poll until `url` answers 200; its body."""
    found: list[bytes] = []

    def ok() -> bool:
        status, _, body = http_get(url, timeout=5)
        if status == 200:
            found.append(body)
        return status == 200

    stack.wait(ok, what)
    return found[0]


def start_redis(stack: Stack, name: str = "redis") -> str:
    """redis-server, started and stopped with the stack; its URL.

    Unbounded (no maxmemory), as the benches have always measured it.
    """
    server = RedisServer(stack.tmp / name, maxmemory=None)
    server.start(lambda command: stack.start(name, command))
    return server.url


NGINX_TEMPLATE = """{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 10000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{servers}
}}
"""


def start_nginx(stack: Stack, servers: str, name: str = "nginx") -> Path:
    """nginx in the foreground with one worker, a config and prefix of its own; the prefix."""
    prefix = stack.tmp / name
    prefix.mkdir(exist_ok=True)
    # The worker runs as nobody when the master is root: it must be able to read the root.
    for d in (stack.tmp, prefix):
        d.chmod(0o755)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_TEMPLATE.format(user=user, prefix=prefix, servers=servers))
    check = subprocess.run(
        ["nginx", "-t", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise BenchError(f"nginx refused its config:\n{check.stderr}")
    stack.start(
        name, ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
    )
    return prefix


BARE_TORNADO = '''"""The framework's ceiling: a Tornado handler returning fixed bytes, nothing else."""
import asyncio
import sys

import tornado.web

BODY = open(sys.argv[2], "rb").read()
TYPE = sys.argv[3]


class Handler(tornado.web.RequestHandler):
    def get(self, *args):
        self.set_header("Content-Type", TYPE)
        self.finish(BODY)


async def main():
    tornado.web.Application([(r"/(.*)", Handler)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()


asyncio.run(main())
'''


def start_bare_tornado(stack: Stack, body: bytes, content_type: str) -> str:
    script, body_file = stack.tmp / "bare_tornado.py", stack.tmp / "bare_body"
    script.write_text(BARE_TORNADO)
    body_file.write_bytes(body)
    port = free_port()
    stack.start("tornado", [sys.executable, str(script), str(port), str(body_file), content_type])
    url = f"http://127.0.0.1:{port}"
    stack.wait(lambda: http_get(url + "/", timeout=2)[0] == 200, "the bare Tornado app")
    return url


# --- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx/3xx answers plus socket errors
    raw: str = field(repr=False, default="")


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: float, connections: int = 32, threads: int = 1) -> WrkRun:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps or not total:
        raise BenchError(f"wrk gave no figures for {url}:\n{out}")
    bad = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return WrkRun(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        requests=int(total.group(1)),
        bad=bad,
        raw=out,
    )


def wrk_side_by_side(
    targets: dict[str, str],
    *,
    rounds: int,
    seconds: float,
    connections: int = 32,
    warmup: bool = True,
) -> dict[str, list[WrkRun]]:
    """wrk against each target in turn, A B C A B C ..., after one short warm-up run each."""
    if warmup:
        for url in targets.values():
            wrk(url, 1, connections)
    runs: dict[str, list[WrkRun]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, url in targets.items():
            runs[name].append(wrk(url, seconds, connections))
    return runs


def paired_ratio(a: list[WrkRun], b: list[WrkRun]) -> float | None:
    """The median of round-by-round ratios a/b: each pair ran back to back, under like load."""
    pairs = [x.rps / y.rps for x, y in zip(a, b, strict=True) if y.rps]
    return round(median(pairs), 3) if pairs else None


def wrk_summary(runs: list[WrkRun]) -> dict[str, Any]:
    return {
        "rps_median": round(median([r.rps for r in runs]), 1),
        "rps_runs": [r.rps for r in runs],
        "p50_ms_median": round(median([r.p50_ms for r in runs]), 3),
        "p99_ms_median": round(median([r.p99_ms for r in runs]), 3),
        "requests": sum(r.requests for r in runs),
        "bad_responses": sum(r.bad for r in runs),
    }
