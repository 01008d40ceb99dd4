"""Run the simulator, the relay and the agent as real processes and print where to look.

Called by `scripts/demo` inside the project's virtual environment. Keys and tokens for the
demo are made fresh in `.demo/` (ignored by git) on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PITS_ID = "demo-pits"


def free_port(preferred: int) -> int:
    """The preferred port if nothing listens there, else any free one."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_until(what: str, check, timeout: float = 30.0, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for name, proc in procs:
            if proc.poll() is not None:
                sys.exit(f"demo: {name} exited with code {proc.returncode}; see its output above")
        if time.monotonic() > deadline:
            sys.exit(f"demo: timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay-port", type=int, default=8000)
    parser.add_argument("--sim-port", type=int, default=8080)
    parser.add_argument("--status-port", type=int, default=8081)
    parser.add_argument("--lap-interval", type=float, default=2.0)
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".demo", help="keys, logs")
    args = parser.parse_args()

    state = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    jwks = state / "jwks.json"
    jwks.unlink(missing_ok=True)
    relay_cli = [str(VENV_BIN / "cloud-relay")]
    subprocess.run(
        [*relay_cli, "keygen", "--jwks", str(jwks), "--kid", "demo"],
        check=True,
        stdout=subprocess.DEVNULL,
    )

    def token(sub: str, role: str, ttl: int) -> str:
        out = subprocess.run(
            [
                *relay_cli,
                "token",
                "--jwks",
                str(jwks),
                "--sub",
                sub,
                "--role",
                role,
                "--ttl",
                str(ttl),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    admin_token = token("demo-admin", "admin", 86400)
    token_file = state / "pits.token"
    # A box's token as an operator would issue it: months long, so nothing on its page is amber.
    token_file.write_text(token(PITS_ID, "pits", 90 * 86400) + "\n")
    token_file.chmod(0o600)

    sim_port = free_port(args.sim_port)
    relay_port = free_port(args.relay_port)
    status_port = free_port(args.status_port)
    relay = f"http://127.0.0.1:{relay_port}"
    logs = state / "logs"
    logs.mkdir(exist_ok=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        out = open(logs / f"{name}.log", "wb")  # the child keeps it open
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        procs.append((name, proc))
        return proc

    def stop_all(*_: object) -> None:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("\ndemo stopped")
        sys.exit(0)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)

    start(
        "fpvtrackside",
        [
            sys.executable,
            str(ROOT / "scripts" / "fpvtrackside_sim.py"),
            "--port",
            str(sim_port),
            "--lap-interval",
            str(args.lap_interval),
            # As the newest FPVTrackside answers: the status and admin pages say which it is.
            "--fpvtrackside-version",
            "2.76",
            # FPVTrackside's ExtensionMode, turned on as an organiser would: every race event is
            # PUT to the box at once (until the agent is up, Hellos are retried every 2 s).
            "--extension-mode",
            "--notification-url",
            f"http://127.0.0.1:{status_port}/fpvtrackside/events",
        ],
    )
    start(
        "relay",
        [
            *relay_cli,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(relay_port),
            "--jwks",
            str(jwks),
        ],
    )
    wait_until(
        "the simulator and the relay",
        lambda: (
            http_get(f"http://127.0.0.1:{sim_port}/")[0] == 200
            and http_get(f"{relay}/healthz")[0] == 200
        ),
        procs=procs,
    )
    start(
        "agent",
        [
            str(VENV_BIN / "pits-agent"),
            "--cloud-url",
            relay,
            "--token-file",
            str(token_file),
            "--fpvtrackside",
            f"http://127.0.0.1:{sim_port}",
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(status_port),
        ],
    )
    health = f"http://127.0.0.1:{status_port}/healthz"
    wait_until("the agent to connect", lambda: http_get(health)[0] == 200, procs=procs)
    # Without a pitlink.conf the agent keeps the status page's PIN beside its token file.
    pin_file = token_file.parent / "status-pin"
    pin = pin_file.read_text().strip()

    _, page = http_get(f"http://127.0.0.1:{sim_port}/")
    found = re.search(rb'new EventManager\("events/([a-z0-9-]+)"', page)
    event = found.group(1).decode() if found else "?"
    base = f"{relay}/pits/{PITS_ID}"
    race = running_race(f"{base}/events/{event}")
    agent_pid = dict(procs)["agent"].pid
    print(
        f"""
Pitlink demo is running: FPVTrackside simulator (live race), cloud relay, pits agent.

  Spectators, through the relay:
    {base}/pitlink/race                        the live race: every lap as it happens (phones;
                                               add ?overlay=1 for a stream overlay in OBS)
    {base}/pitlink/live                        the live feed (Server-Sent Events) for dashboards
    {base}/                                    FPVTrackside's page: follows the race running now
    {base}/events/{event}/{race}/Race.json   the race running now, a lap at a time
    {base}/events/{event}/Event.json           (Races lists every race, in order)
    {base}/events/{event}/Results.json         grows as races finish
    {relay}/events/{event}/Rounds.json         the same data at the root (the active pits)
  The relay's front page: {relay}/
  The box's status page:  http://127.0.0.1:{status_port}/   (what an organiser sees at the venue)
    its PIN, for the buttons: {pin}   (the agent keeps it in {pin_file})
  Admin page: {relay}/admin   (paste this admin token when it asks)
    {admin_token}

  Try a 304:  curl -si {base}/events/{event}/Event.json  then repeat with
              -H 'If-None-Match: <the ETag it printed>'
  Try stale:  kill {agent_pid}   (the pits agent) and ask again: the relay serves its last copies

  Relay:      {relay}/healthz   {relay}/readyz   {relay}/metrics
  Pits agent: {health}   http://127.0.0.1:{status_port}/metrics
  Origin:     http://127.0.0.1:{sim_port}/  (the simulator, as the pits LAN sees it)
  Logs:       {logs}/

Press Ctrl-C to stop everything."""
    )
    sys.stdout.flush()
    gone: set[str] = set()
    while True:  # only Ctrl-C stops the demo: a part that exits is told, the rest runs on
        for name, proc in procs:
            if proc.poll() is not None and name not in gone:
                gone.add(name)
                what = {
                    "agent": "the relay now serves its last copies, marked stale",
                    "relay": "spectators have nothing to ask",
                    "fpvtrackside": "the relay serves its last copies, marked stale",
                }[name]
                print(
                    f"demo: {name} exited (code {proc.returncode}): {what}; "
                    f"its log is {logs}/{name}.log. Ctrl-C stops the rest.",
                    flush=True,
                )
        time.sleep(0.5)


def running_race(event_url: str) -> str:
    """The id of the race running now: the first of the event's races that has not ended."""
    try:
        races = json.loads(http_get(f"{event_url}/Event.json")[1])[0]["Races"]
        for race in races:
            detail = json.loads(http_get(f"{event_url}/{race}/Race.json")[1])[0]
            if str(detail.get("End", "")).startswith("0001/"):  # .NET's "no date"
                return str(race)
        return str(races[-1])
    except (ValueError, LookupError, TypeError):
        return "<race id>"


if __name__ == "__main__":
    main()
