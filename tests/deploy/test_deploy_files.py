"""The deploy files are valid, and every metric they name is one the relay exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bpitlink_[a-z0-9_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: ./scripts/test installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def exported() -> set[str]:
    """Every sample name the relay can export: families plus their suffixes."""
    names = set()
    for family in text_string_to_metric_families(Metrics().render().decode()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def test_alert_rules_pass_promtool() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_scrape_config_passes_promtool() -> None:
    done = subprocess.run(
        [promtool(), "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["alerts.yml", "grafana-dashboard.json"])
def test_every_metric_named_is_exported(name: str) -> None:
    text = (DEPLOY / name).read_text()
    named = set(METRIC.findall(text))
    assert named, f"{name} names no metric"
    assert named - exported() == set()


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash["uid"] == "pitlink-relay"
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_relay_unit_runs_the_relay_with_reload() -> None:
    unit = (DEPLOY / "cloud-relay.service").read_text()
    assert "ExecStart=/opt/pitlink/venv/bin/cloud-relay serve" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "Restart=always" in unit
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(DEPLOY / "cloud-relay.service")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # The program exists only on a real host; anything else it says is a problem.
        problems = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and "is not executable" not in line
        ]
        assert problems == [], problems


def test_agent_unit_is_a_notify_service_with_a_watchdog() -> None:
    path = Path(__file__).resolve().parents[2] / "pits_appliance" / "systemd" / "pits-agent.service"
    unit = path.read_text()
    for line in ("Type=notify", "NotifyAccess=all", "Restart=always", "WatchdogSec=30"):
        assert f"\n{line}\n" in unit, line
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        problems = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and "is not executable" not in line
        ]
        assert problems == [], problems
