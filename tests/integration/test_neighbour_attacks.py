"""Attacks on a box from its own network and through its settings (security issue 25, items 7
and 8), each performed for real: the agent as its own process, requests from a plain HTTP
client as `curl` sends them.

- A neighbour on the venue Wi-Fi presses the status page's buttons. The page's `Origin` and
  `X-Pitlink-Action` checks stop other web sites, not a neighbour who sets both headers: the
  buttons need the session the box's PIN opens, and guessing the PIN is slowed down.
- A box given `CLOUD_URL=http://` to another machine (a typo, or a relay behind a plain
  listener) would send its token in clear: it refuses to start, and says to use `https://`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from pitlink_testkit.keys import make_keys
from pitlink_testkit.loopback import free_port
from pitlink_testkit.processes import Processes
from pitlink_testkit.waiting import poll, wait_for

REPO = Path(__file__).resolve().parents[2]


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request to the box's status port; status 0 if it could not be made."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


class Box:
    """The agent as its own process, configured by a pitlink.conf as on a card."""

    def __init__(self, tmp: Path, procs: Processes):
        _, keys = make_keys(tmp)
        self.token = keys.issue(sub="club-42", role="pits", ttl=30 * 86400)
        self.conf = tmp / "card" / "pitlink.conf"
        self.conf.parent.mkdir()
        # A relay nobody answers at: the buttons act all the same.
        self.conf_text = (
            f"CLOUD_URL=http://127.0.0.1:{free_port()}\r\n"
            f"TOKEN={self.token}\r\n"
            f"STATE_DIR={tmp / 'state'}\r\n"
        )
        self.conf.write_bytes(self.conf_text.encode())
        self.port = free_port()
        self.log = tmp / "agent.log"
        self.proc = procs.start(
            ["-m", "pits_appliance", "--config", str(self.conf),
             "--status-host", "127.0.0.1", "--status-port", str(self.port)],
            self.log,
        )  # fmt: skip
        poll(lambda: self.get("/status.json")[0] == 200, what="the status page")
        self.origin = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return request(self.port, "GET", path)

    def paused(self) -> bool:
        return bool(json.loads(self.get("/healthz")[2])["paused"])

    def curl(self, path: str, body: bytes = b"", **headers: str) -> tuple[int, dict[str, str], Any]:
        """`curl -X POST -H 'Origin: http://<box>:<port>' -H 'X-Pitlink-Action: 1' ...`"""
        sent = {"Origin": self.origin, "X-Pitlink-Action": "1", **headers}
        code, got, data = request(self.port, "POST", path, body, sent)
        return code, got, json.loads(data)

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_neighbour_with_curl_cannot_press_the_buttons(tmp_path: Path, procs) -> None:
    box = Box(tmp_path, procs)
    # The attack as it was reproduced: the page's own headers, set by hand.
    for action in ("pause", "reconnect", "install", "resume"):
        code, _, body = box.curl(f"/api/{action}")
        assert (code, body) == (403, {"error": "enter the box's PIN first", "pin": "required"})
    code, _, _ = box.curl("/api/pause", Cookie="pitlink_session=" + "A" * 43)  # a made-up one
    assert code == 403
    assert not box.paused()
    # Reading stays open.
    status = json.loads(box.get("/status.json")[2])
    assert status["unlocked"] is False
    assert status["pinWhere"] == (
        "STATUS_PIN in pitlink.conf on the card's boot partition (the PITLINK drive), "
        "beside the token"
    )

    # The box made its PIN at its first start and put it beside the token, which is intact.
    text = box.conf.read_bytes().decode()
    assert text.startswith(box.conf_text)
    [pin] = re.findall(r"^STATUS_PIN=([0-9]{6})\r$", text, re.MULTILINE)
    [made] = [line for line in box.log_lines() if "PIN" in line["event"]]
    assert made["event"] == "made the status page's PIN and wrote it into the settings file"
    assert pin not in box.log.read_text()

    # The organiser, who has the card, has the PIN.
    code, headers, body = box.curl("/api/pin", json.dumps({"pin": pin}).encode())
    assert (code, body) == (200, {"ok": True, "message": "PIN accepted."})
    cookie = headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert attributes == {"httponly", "samesite", "path"}  # no Max-Age, no Expires: a session
    assert "SameSite=Strict" in cookie
    session = cookie.split(";", 1)[0]
    code, _, body = box.curl("/api/pause", Cookie=session)
    assert (code, body["message"]) == (200, "Paused: the box no longer answers the relay.")
    assert box.paused()
    # The session does not stand in for the page's own headers.
    code, _, body = box.curl("/api/resume", Cookie=session, Origin="http://evil.example")
    assert (code, body) == (403, {"error": "actions come from the status page"})
    assert box.paused()
    code, _, _ = box.curl("/api/resume", Cookie=session)
    assert code == 200 and not box.paused()


def test_guessing_the_pin_is_slowed_down_and_logged_sparingly(tmp_path: Path, procs) -> None:
    box = Box(tmp_path, procs)
    [pin] = re.findall(r"^STATUS_PIN=([0-9]{6})\r$", box.conf.read_bytes().decode(), re.MULTILINE)
    guesses = [f"{n:06d}" for n in range(100_000, 100_005) if f"{n:06d}" != pin]
    for guess in guesses[:5]:
        code, _, body = box.curl("/api/pin", json.dumps({"pin": guess}).encode())
        assert (code, body) == (403, {"error": "wrong PIN"})
    # The right PIN now, from the same neighbour: not even looked at.
    code, headers, body = box.curl("/api/pin", json.dumps({"pin": pin}).encode())
    assert code == 429
    wait = int(headers["Retry-After"])
    assert 50 <= wait <= 60
    assert body == {"error": f"too many wrong PINs: try again in {wait} s"}
    assert "Set-Cookie" not in headers
    # Not a PIN at all: refused before it is counted.
    for junk in (
        b"",
        b"123456",
        b'{"pin": 123456}',
        b'["123456"]',
        b'{"pin": "' + b"1" * 300 + b'"}',
    ):
        code, _, body = box.curl("/api/pin", junk)
        assert (code, body) == (400, {"error": 'send the PIN as JSON: {"pin": "123456"}'})
    # At most a line a second, never the PINs tried.
    wrong = [line for line in box.log_lines() if line["event"] == "wrong status page PIN"]
    assert 1 <= len(wrong) <= len(guesses[:5]), wrong
    assert wrong[0]["level"] == "WARNING" and wrong[0]["peer"] == "127.0.0.1"
    log = box.log.read_text()
    assert not any(guess in log for guess in guesses) and pin not in log
    assert not box.paused()


# -- the token in clear ----------------------------------------------------------------------


async def test_a_plain_relay_address_is_refused_and_the_token_never_leaves(
    tmp_path: Path,
) -> None:
    """A listener stands where a typo'd CLOUD_URL=http://<name> leads: refused, the agent
    sends it nothing; allowed on purpose (a lab), the token arrives in clear, and the status
    page says so."""
    received = bytearray()
    connected = asyncio.Event()

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        received.extend(await reader.read(65536))
        writer.close()

    port = free_port()
    server = await asyncio.start_server(listen, host=None, port=port)  # every address here
    _, keys = make_keys(tmp_path)
    token_file = tmp_path / "token"
    token = keys.issue(sub="club-42", role="pits", ttl=86400)
    token_file.write_text(token)
    # This machine by a name: the agent cannot know where a name leads.
    url = f"http://{socket.gethostname()}:{port}"
    status_port = free_port()
    argv = [sys.executable, "-m", "pits_appliance", "--cloud-url", url,
            "--token-file", str(token_file), "--status-host", "127.0.0.1",
            "--status-port", str(status_port), "--reconnect-base", "0.05"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "NOTIFY_SOCKET")}
    try:
        refused = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            cwd=REPO, env=env,
        )  # fmt: skip
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        assert refused.returncode == 2
        fix = url.replace("http://", "https://")
        assert err.decode().splitlines() == [
            f"pits-agent: CLOUD_URL {url} would send this box's token unencrypted: use {fix} "
            "(ALLOW_PLAIN_HTTP=yes allows it on a test bench)"
        ]
        assert not connected.is_set() and not received

        allowed = await asyncio.create_subprocess_exec(
            *argv, "--allow-plain-http", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, cwd=REPO, env=env,
        )  # fmt: skip
        try:
            await wait_for(lambda: token.encode() in received, timeout=30, what="the token")
            assert f"Authorization: Bearer {token}".encode() in received
            status = await asyncio.to_thread(request, status_port, "GET", "/status.json")
            [plain] = [r for r in json.loads(status[2])["rows"] if r["key"] == "plain"]
            assert plain["mark"] == "amber"
            assert plain["title"] == "The token crosses the network unencrypted"
        finally:
            allowed.terminate()
            await asyncio.wait_for(allowed.wait(), 20)
    finally:
        server.close()
        await server.wait_closed()
