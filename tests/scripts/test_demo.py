"""`scripts/demo.py` as a newcomer runs it: what it prints works, and only Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pitlink_testkit.waiting import poll

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_demo_prints_urls_that_work_and_stops_only_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "scripts/demo.py", "--state-dir", str(tmp_path / "state"),
             "--relay-port", "0", "--sim-port", "0", "--status-port", "0", "--lap-interval", "0.3"],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        text = poll(
            lambda: "Press Ctrl-C" in out.read_text() and out.read_text(),
            what="the demo to be up",
            timeout=60,
        )
        urls = dict(re.findall(r"(https?://\S+)\s+(\S.*)", text))
        race_url = next(u for u, note in urls.items() if note.startswith("the race running now"))
        # The live race URL is the race running now: it has started and not ended, and grows.
        code, headers, body = get(race_url)
        assert code == 200 and headers["Content-Type"].startswith("application/json")
        race = json.loads(body)[0]
        assert not race["Start"].startswith("0001/") and race["End"].startswith("0001/")
        status_page = re.search(r"status page:\s+(http://\S+)", text).group(1)
        status = json.loads(get(status_page + "status.json")[2])
        assert status["overall"] == "green", status["rows"]  # no amber token, no red line
        # The PIN it prints opens the page's buttons.
        pin = re.search(r"its PIN, for the buttons: ([0-9]{6}) ", text).group(1)
        unlock = urllib.request.Request(
            status_page + "api/pin",
            data=json.dumps({"pin": pin}).encode(),
            headers={"Origin": status_page.rstrip("/"), "X-Pitlink-Action": "1"},
        )
        with urllib.request.urlopen(unlock, timeout=10) as r:
            assert json.loads(r.read()) == {"ok": True, "message": "PIN accepted."}
        # The live page, and the feed it follows: ExtensionMode's detections and the race file's
        # changes, pushed by the box as they happen.
        live_page = next(u for u, note in urls.items() if note.startswith("the live race"))
        code, headers, _ = get(live_page)
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        feed_url = next(u for u, note in urls.items() if note.startswith("the live feed"))
        seen: set[str] = set()
        with urllib.request.urlopen(feed_url, timeout=30) as feed:
            for line in feed:
                if line.startswith(b"event: "):
                    seen.add(line[7:].strip().decode())
                if b'"type":"DetectionExt"' in line.replace(b" ", b""):
                    seen.add("DetectionExt")
                if {"pits", "race", "change", "DetectionExt"} <= seen:
                    break
        front = re.search(r"front page: (http://\S+)", text).group(1)
        assert b"demo-pits" in get(front)[2]
        # The demo's own hint: stop the agent. The rest runs on and serves the last copies.
        agent_pid = int(re.search(r"kill (\d+)", text).group(1))
        os.kill(agent_pid, signal.SIGTERM)
        poll(lambda: "demo: agent exited" in out.read_text(), what="the demo to say so", timeout=60)
        assert demo.poll() is None
        event_url = race_url.rsplit("/", 2)[0] + "/Event.json"
        stale = poll(
            lambda: (r := get(event_url))[1].get("X-Pitlink-Cache") == "STALE" and r,
            what="a stale copy",
            timeout=60,
        )
        assert stale[0] == 200
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    assert "demo stopped" in out.read_text()
