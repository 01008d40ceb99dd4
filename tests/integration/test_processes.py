"""The programs as they are run: real processes, signals, exit codes and their log output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.websocket

from cloud.keys import KeySet, keygen
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import poll

REPO = Path(__file__).resolve().parents[2]


def http_get(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


async def hello_with(port: int, token: str) -> str:
    """Open a control connection with `token` and return the type of the first frame."""
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{port}/control?role=pits&version=1",
        headers={"Authorization": f"Bearer {token}"},
    )
    ws = await tornado.websocket.websocket_connect(request)
    try:
        return json.loads(await ws.read_message())["type"]
    finally:
        # Read to the end of the closing handshake: asyncio.run ends the loop as soon as this
        # returns, and a socket still open then is left to the garbage collector, whose
        # ResourceWarning fails whichever later test it happens to land in.
        ws.close()
        while await asyncio.wait_for(ws.read_message(), 5) is not None:
            pass


def test_relay_and_agent_processes_end_to_end(tmp_path, procs) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "k1")
    token_file = tmp_path / "token"
    token_file.write_text(KeySet.load(jwks).issue(sub="box", role="pits", ttl=30 * 86400))
    sim_port, relay_port, status_port = free_port(), free_port(), free_port()
    sim = procs.start(
        ["scripts/fpvtrackside_sim.py", "--port", str(sim_port)],
        tmp_path / "sim.log",
    )
    relay = procs.start(
        ["-m", "cloud", "serve", "--port", str(relay_port), "--jwks", str(jwks)],
        tmp_path / "relay.log",
    )
    env_config = tmp_path / "agent.conf"
    env_config.write_text(
        f"# written by the test\nCLOUD_URL=http://127.0.0.1:{relay_port}\n"
        f"TOKEN_FILE={token_file}\nFPVTRACKSIDE=127.0.0.1:{sim_port}\n"
    )
    agent = procs.start(
        [
            "-m",
            "pits_appliance",
            "--config",
            str(env_config),
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(status_port),
            "--reconnect-base",
            "0.1",
        ],
        tmp_path / "agent.log",
    )
    relay_url = f"http://127.0.0.1:{relay_port}"
    poll(lambda: http_get(f"http://127.0.0.1:{status_port}/healthz")[0] == 200, what="the agent")
    status, body = http_get(f"{relay_url}/pits/box/httpfiles/Channels.json")
    assert status == 200
    assert isinstance(json.loads(body), list)

    # SIGHUP re-reads the key set: a token from a brand-new key works at once.
    keygen(jwks, "k2")
    relay.send_signal(signal.SIGHUP)
    new_token = KeySet.load(jwks).issue(sub="other-box", role="pits", ttl=30 * 86400)
    assert asyncio.run(hello_with(relay_port, new_token)) == "hello"
    assert json.loads(http_get(f"{relay_url}/healthz")[1])["connections"] == 1

    for proc in (agent, relay, sim):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    # A field named like the line's own keys must not overwrite them: the event's id is its own.
    agent_lines = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()]
    [opened] = [r for r in agent_lines if r["event"] == "FPVTrackside event"]
    assert opened["event_id"] and opened["logger"] == "pitlink.pits.agent"
    for name in ("relay", "agent"):
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert lines, name
        for line in lines:
            record = json.loads(line)  # every line is one JSON object
            assert {"ts", "level", "logger", "event"} <= record.keys()
            assert "Traceback" not in line
        text = "\n".join(lines)
        assert new_token not in text and token_file.read_text().strip() not in text


def run_agent_once(conf: Path) -> subprocess.CompletedProcess[str]:
    """The agent with this pitlink.conf, at a terminal: it says what is wrong and exits."""
    return subprocess.run(
        [sys.executable, "-m", "pits_appliance", "--config", str(conf), "--error-hold", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_agent_with_a_bad_config_says_so_in_one_line(tmp_path) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_text(
        "CLOUD_URL=https://relay.example\nTOKEN_FILE=/nonexistent\nPING_INTERVAL=soon\n"
    )
    done = run_agent_once(conf)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "PING_INTERVAL" in done.stderr and "Traceback" not in done.stderr


def test_a_key_typo_says_its_line_and_the_setting_it_means(tmp_path) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_text(
        "CLOUD_URL=https://relay.example\nTOKEN_FILE=/nonexistent\nFPVTRACSIDE=10.0.0.5:8080\n"
    )
    done = run_agent_once(conf)
    assert done.returncode == 2
    assert done.stderr == (
        f"pits-agent: {conf} line 3: unknown setting FPVTRACSIDE: did you mean FPVTRACKSIDE?\n"
    )


def test_a_settings_error_at_a_terminal_exits_at_once(tmp_path) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_text("# CLOUD_URL forgotten\nFPVTRACKSIDE=192.168.1.20:8080\n")
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "NOTIFY_SOCKET")}
    done = subprocess.run(  # with a 10-minute hold: only exiting at once beats the timeout
        [sys.executable, "-m", "pits_appliance", "--config", str(conf), "--error-hold", "600"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "CLOUD_URL" in line


def test_settings_error_is_shown_on_the_status_page(tmp_path) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_text("# CLOUD_URL forgotten\nFPVTRACKSIDE=192.168.1.20:8080\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pits_appliance",
            "--config",
            str(conf),
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(port),
            "--error-hold",
            "120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=dict(os.environ, INVOCATION_ID="0123456789abcdef"),  # as systemd runs it
    )
    try:
        poll(lambda: http_get(f"http://127.0.0.1:{port}/status.json")[0] == 200, what="the page")
        status = json.loads(http_get(f"http://127.0.0.1:{port}/status.json")[1])
        assert status["configError"] is True
        (row,) = status["rows"]
        assert row["mark"] == "red" and "CLOUD_URL" in row["text"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 2
        assert proc.stderr is not None
        first, second = proc.stderr.read().decode().splitlines()
        assert "CLOUD_URL" in first
        assert second == f"pits-agent: shown on http://127.0.0.1:{port}/ for 120 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize(
    ("scheme", "kind", "words"),
    [
        ("http", "not_a_relay", "does not look like a Pitlink relay"),
        ("https", "tls", "TLS failed with https://127.0.0.1:{port}: is the relay https?"),
    ],
)
def test_a_wrong_cloud_url_is_said_once_in_the_log_and_plainly_on_the_page(
    tmp_path, procs, scheme: str, kind: str, words: str
) -> None:
    """An ordinary web server where the relay should be: not a portal, not 'HTTP 599'."""
    web_port, status_port = free_port(), free_port()
    procs.start(
        ["-m", "http.server", str(web_port), "--bind", "127.0.0.1"],
        tmp_path / "web.log",
    )
    poll(lambda: http_get(f"http://127.0.0.1:{web_port}/")[0] == 200, what="the web server")
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "k")
    token = tmp_path / "token"
    token.write_text(KeySet.load(jwks).issue(sub="club-9", role="pits", ttl=86400))
    url = f"{scheme}://127.0.0.1:{web_port}"
    log = tmp_path / "agent.log"
    procs.start(
        [
            "-m",
            "pits_appliance",
            "--cloud-url",
            url,
            "--token-file",
            str(token),
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(status_port),
            "--reconnect-base",
            "0.05",
            "--reconnect-cap",
            "0.2",
        ],
        log,
    )

    def attempts() -> int:
        code, body = http_get(f"http://127.0.0.1:{status_port}/healthz")
        return int(json.loads(body)["reconnects"]) if code == 503 else 0

    poll(lambda: attempts() >= 8, what="several attempts", timeout=60)
    status = json.loads(http_get(f"http://127.0.0.1:{status_port}/status.json")[1])
    [cloud] = [row for row in status["rows"] if row["key"] == "cloud"]
    assert cloud["mark"] == "red"
    assert words.format(port=web_port) in cloud["text"]
    assert "sign-in" not in cloud["text"] and "599" not in cloud["text"]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "cannot connect to the relay"]
    assert len(failed) == 1, failed  # once, not once per attempt
    assert (failed[0]["kind"], failed[0]["url"], failed[0]["level"]) == (kind, url, "WARNING")
    assert words.format(port=web_port) in failed[0]["error"]
