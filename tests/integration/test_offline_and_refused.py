"""Stale never looks live, and a refused box is named: with the relay, the agent and the
simulator as processes, a box that stopped stays on the front page and the admin API as
offline (since when, and why its link ended), and a box refused for an expired token is
logged and listed by the pits id its token claims, marked as not verified."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
import tornado.httpclient
from test_processes import http_get

from cloud.keys import KeySet, keygen
from pitlink_testkit.control import open_control
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import poll


def admin_get(url: str, token: str) -> dict:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())


def log_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_stopped_box_stays_listed_offline_and_a_refused_box_is_named(tmp_path, procs) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "k1")
    keys = KeySet.load(jwks)
    token_file = tmp_path / "token"
    token_file.write_text(keys.issue(sub="club-7", role="pits", ttl=30 * 86400))
    sim_port, relay_port, status_port = free_port(), free_port(), free_port()
    procs.start(["scripts/fpvtrackside_sim.py", "--port", str(sim_port)], tmp_path / "sim.log")
    relay_log = tmp_path / "relay.log"
    relay = procs.start(
        ["-m", "cloud", "serve", "--port", str(relay_port), "--jwks", str(jwks)], relay_log
    )
    config = tmp_path / "agent.conf"
    config.write_text(
        f"CLOUD_URL=http://127.0.0.1:{relay_port}\nTOKEN_FILE={token_file}\n"
        f"FPVTRACKSIDE=127.0.0.1:{sim_port}\n"
    )
    agent = procs.start(
        [
            "-m",
            "pits_appliance",
            "--config",
            str(config),
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
    live = b"<li data-pits=club-7><strong>club-7</strong>"
    poll(lambda: live in http_get(relay_url + "/")[1], what="the box connected")
    admin = keys.issue(sub="operator", role="admin", ttl=600)

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    poll(lambda: b"offline since" in http_get(relay_url + "/")[1], what="the box offline")
    page = http_get(relay_url + "/")[1].decode()
    assert live.decode() not in page and "connected" not in page  # never shown as live
    assert "<li data-pits=club-7 class=offline><strong>club-7</strong>" in page
    assert "last error: <span class=error>closed by the box (" in page
    assert "None yet" not in page
    overview = admin_get(f"{relay_url}/admin/api/overview", admin)
    assert overview["connections"] == []
    [gone] = overview["offline"]
    assert gone["pitsId"] == "club-7" and gone["state"] == "offline"
    assert gone["lastError"].startswith("closed by the box (")
    assert 0 <= time.time() - gone["lastSeenAt"] < 60
    # Its last copies are still served, saying how old they are.
    stale = http_get(f"{relay_url}/pits/club-7/pitlink/race")
    assert stale[0] == 200

    # A box with an expired token, twice: named in the log and on the admin API.
    expired = keys.issue(sub="club-9", role="pits", ttl=60, now=time.time() - 3600)

    async def knock() -> None:
        for _ in range(2):
            with pytest.raises(tornado.httpclient.HTTPClientError):
                await open_control(relay_url, expired)

    asyncio.run(knock())
    [row] = admin_get(f"{relay_url}/admin/api/refused", admin)["refused"]
    assert row["claimedPitsId"] == "club-9" and row["verified"] is False
    assert (row["reason"], row["count"], row["kid"]) == ("expired", 2, "k1")
    assert row["address"] == "127.0.0.1"
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=20) == 0
    refused = [r for r in log_records(relay_log) if r["event"] == "control connection refused"]
    assert len(refused) == 2
    assert refused[-1]["claimedPitsId"] == "club-9"
    assert refused[-1]["verified"] is False
    assert (refused[-1]["reason"], refused[-1]["kid"]) == ("expired", "k1")
    assert expired not in relay_log.read_text()
