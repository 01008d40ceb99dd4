"""The frozen agent (PyInstaller --onedir, scripts/build-agent) as it ships: a real process
against a relay and a simulator on loopback, with nothing from the venv behind it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.httpclient

from pitlink_testkit.loopback import free_port
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.canonical import canonical_json, etag_of

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 600.0

# The first test to ask for the build waits for it (about 20 s on two cores, more from a fresh
# venv that installs PyInstaller first), so the tests get a timeout to match.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def frozen_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the frozen agent once per test session, so the tests run what the code is now.

    It is built into this session's own folder rather than dist/: another session (or a person)
    building dist/ at the same time in this work tree would replace the program under us.
    """
    out = tmp_path_factory.mktemp("frozen")
    done = subprocess.run(
        [
            str(REPO / "scripts" / "build-agent"),
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "build"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/build-agent failed ({done.returncode}):\n{done.stderr[-4000:]}")
    program = out / "dist" / "pits-agent" / "pits-agent"
    assert os.access(program, os.X_OK), done.stdout
    return program


def clean_env() -> dict[str, str]:
    """This environment without settings for the agent: only the flags given count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PITLINK_")}


@pytest.fixture
async def rig(tmp_path: Path, sim: object) -> AsyncIterator[System]:
    """A simulator and a relay in this process; the agent is the frozen program."""
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, pits_fetch_rate=None)
    yield s
    await s.close()


async def test_frozen_agent_help_lists_its_flags(frozen_agent: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(frozen_agent),
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    text = out.decode()
    assert text.startswith("usage: pits-agent")
    for flag in ("--cloud-url", "--token-file", "--fpvtrackside", "--status-port", "--log-level"):
        assert flag in text


async def test_frozen_agent_serves_the_relay_and_stops_on_sigterm(
    frozen_agent: Path, rig: System, tmp_path: Path
) -> None:
    status_port = free_port()
    log = tmp_path / "agent.log"
    err = log.open("wb")  # the child has its own copy of the descriptor
    try:
        proc = await asyncio.create_subprocess_exec(
            str(frozen_agent),
            "--cloud-url",
            rig.url,
            "--token-file",
            str(rig.token_file),
            "--fpvtrackside",
            rig.sim.url,
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(status_port),
            "--reconnect-base",
            "0.1",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,  # nothing may come from the work tree
            env=clean_env(),
        )
    finally:
        err.close()
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    status_url = f"http://127.0.0.1:{status_port}"
    try:

        async def healthy() -> dict[str, object] | None:
            if proc.returncode is not None:
                raise AssertionError(f"the agent exited {proc.returncode}: {log.read_text()}")
            try:
                r = await http.fetch(f"{status_url}/healthz", raise_error=False, request_timeout=2)
            except OSError:  # not listening yet
                return None
            if r.code != 200:
                return None
            health: dict[str, object] = json.loads(r.body)
            return health if health.get("wsConnected") is True else None

        await wait_for(healthy, timeout=30, interval=0.05, what="the frozen agent's /healthz")
        assert rig.relay is not None
        await wait_for(
            lambda: rig.relay is not None and rig.relay.registry.get(rig.pits_id),
            what="the relay to see the pits",
        )

        metrics = await http.fetch(f"{status_url}/metrics", raise_error=False)
        assert metrics.code == 200
        assert "pitlink_ws_connected 1.0" in metrics.body.decode()

        r = await rig.get(f"/pits/{rig.pits_id}/httpfiles/Channels.json")
        raw = (rig.sim.root / "httpfiles" / "Channels.json").read_bytes()
        expected = canonical_json(json.loads(raw))
        assert r.code == 200, r.body
        assert isinstance(json.loads(r.body), list) and json.loads(r.body)
        assert r.body == expected
        assert r.headers["ETag"] == etag_of(expected)
        assert r.headers["Content-Type"].startswith("application/json")

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        http.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    lines = log.read_text().splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "event"} <= record.keys(), line
        assert "Traceback" not in line
    assert rig.token_file.read_text().strip() not in log.read_text()
