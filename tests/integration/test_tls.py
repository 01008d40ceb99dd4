"""The box dials a relay behind TLS (nginx with deploy/'s config), trusting what it should."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.nginx import nginx_config, start_nginx, stop_nginx
from pitlink_testkit.system import System
from pitlink_testkit.tls import RelayCA, make_ca
from pitlink_testkit.waiting import wait_for
from pits_appliance import ConfigError
from pits_appliance.dialing import relay_tls


@pytest.fixture
async def behind_tls(tmp_path: Path, sim: Simulator) -> AsyncIterator[tuple[System, RelayCA, str]]:
    """A relay behind nginx terminating TLS with a certificate from a CA of the test's own."""
    s = System(tmp_path, sim)
    await s.start_relay(freshness=0.0, client_rate=None, pits_fetch_rate=None)
    ca = make_ca(tmp_path / "ca")
    port = free_port()
    conf = nginx_config(
        tmp_path, upstreams=[s.relay_port], plain=free_port(), tls=port, certificate=ca
    )
    nginx = await start_nginx(conf)
    url = f"https://127.0.0.1:{port}"
    http = s.http

    async def up() -> bool:
        try:
            got = await http.fetch(url + "/healthz", ca_certs=str(ca.ca), raise_error=False)
        except OSError:
            return False  # nginx is not listening yet
        return got.code == 200

    await wait_for(up, what="nginx in front of the relay")
    try:
        yield s, ca, url
    finally:
        await s.close()
        await stop_nginx(nginx)


async def test_a_box_trusting_the_relays_ca_dials_it_over_tls(behind_tls) -> None:
    s, ca, url = behind_tls
    await s.start_agent(cloud_url=url, cloud_ca=ca.ca)
    got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
    assert got.code == 200
    assert s.agent.state.cloud_error is None
    await wait_for(lambda: s.agent.state.connectivity == "full", what="the HTTPS check")


async def test_a_certificate_the_box_cannot_verify_is_said_plainly(behind_tls, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.pits.link")
    s, _, url = behind_tls
    await s.start_agent(cloud_url=url, wait=False)  # the public CAs only: the test CA is not one
    await wait_for(lambda: s.agent.state.cloud_failure == "certificate", what="the refusal")
    assert "certificate" in (s.agent.state.cloud_error or "")
    assert "does not verify" in (s.agent.state.cloud_error or "")
    assert s.relay.registry.get(s.pits_id) is None
    lines = [r for r in caplog.records if r.getMessage() == "cannot connect to the relay"]
    assert [r.kind for r in lines] == ["certificate"]


async def test_a_private_ca_without_cloud_ca_names_it_and_tornado_warns_once_a_minute(
    behind_tls, procs, tmp_path: Path
) -> None:
    """The agent as a process, as on the box: its log has one line naming CLOUD_CA=, and one
    of tornado's `SSL Error` warnings, not one per dial and per check."""
    s, _, url = behind_tls
    status_port = free_port()
    log = tmp_path / "agent.log"
    procs.start(
        [
            "-m",
            "pits_appliance",
            "--cloud-url",
            url,
            "--token-file",
            str(s.token_file),
            "--fpvtrackside",
            s.sim.url,
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(status_port),
            "--reconnect-base",
            "0.05",
            "--reconnect-cap",
            "0.2",
            "--check-interval",
            "0.5",
            "--internet-check-url",
            "",
        ],
        log,
    )

    def attempts() -> int:
        try:
            got = urllib.request.urlopen(f"http://127.0.0.1:{status_port}/healthz", timeout=5)
        except urllib.error.HTTPError as exc:
            return int(json.loads(exc.read())["reconnects"])
        except OSError:
            return 0
        raise AssertionError(f"connected: {got.read()!r}")

    await wait_for(lambda: attempts() >= 8, what="several dials", timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    ssl_errors = [r for r in lines if r["event"].startswith("SSL Error")]
    assert len(ssl_errors) == 1, ssl_errors
    assert ssl_errors[0]["logger"] == "tornado.general" and ssl_errors[0]["held_back"] == 0
    failed = [r for r in lines if r["event"] == "cannot connect to the relay"]
    assert len(failed) == 1, failed
    assert failed[0]["kind"] == "certificate"
    assert "copy it beside pitlink.conf on the card's boot partition" in failed[0]["error"]
    assert "CLOUD_CA=relay-ca.pem" in failed[0]["error"]


def test_a_ca_file_that_is_not_a_certificate_is_a_settings_error(tmp_path: Path) -> None:
    bad = tmp_path / "relay-ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"CLOUD_CA .* is not a CA certificate"):
        relay_tls(bad)
    with pytest.raises(ConfigError, match="CLOUD_CA"):
        relay_tls(tmp_path / "missing.pem")


def test_the_system_bundle_is_named_when_debian_has_one(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    context = relay_tls(system=ca.ca)  # stands for /etc/ssl/certs/ca-certificates.crt
    assert any(c["subject"][0][0][1] == "Pitlink test CA" for c in context.get_ca_certs())
