"""Never during a race, through the real box: the simulator runs a race, the box reads it from
FPVTrackside's files (or hears ExtensionMode's RaceStart and RaceEnd), and an update's
download, install and restart each wait for that race to end, then go ahead by themselves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pitlink_testkit.bundles import FakeRauc, make_bundle
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.extension import PATH
from pits_appliance.rauc import box_compatible

pytestmark = pytest.mark.timeout(60)
OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"
ARCH = box_compatible().removeprefix("pitlink-")
FILES = "the race now has started and not ended in FPVTrackside's files"


@dataclass
class Box:
    s: System
    sim: Simulator
    agent: Agent
    rauc: FakeRauc
    state: Path

    def held(self) -> str | None:
        held = self.agent.updater.held
        return held["step"] if held else None

    def reported(self) -> dict[str, Any]:
        assert self.s.relay is not None
        conn = self.s.relay.registry.get(self.s.pits_id)
        return ((conn.describe() if conn is not None else {}) or {}).get("update") or {}

    async def row(self) -> dict[str, Any]:
        got = await self.s.http.fetch(f"{self.s.status_url}/status.json")
        return next(r for r in json.loads(got.body)["rows"] if r["key"] == "update")

    async def offer(self, tmp_path: Path, version: str = NEW) -> None:
        data = make_bundle(tmp_path / "b.raucb", compatible=box_compatible(), version=version)
        admin = {"Authorization": f"Bearer {self.s.keys.issue(sub='ops', role='admin', ttl=600)}"}
        got = await self.s.get(
            f"/admin/api/bundles/upload?version={quote(version)}&arch={ARCH}",
            headers=admin,
            method="POST",
            body=data,
        )
        assert got.code == 200, got.body
        bundle = json.loads(got.body)["id"]
        body = json.dumps({"pitsIds": [self.s.pits_id]})
        got = await self.s.get(
            f"/admin/api/bundles/{bundle}/offer", headers=admin, method="POST", body=body
        )
        assert got.code == 200, got.body


async def start_box(tmp_path: Path, sim: Simulator, **overrides: Any) -> Box:
    s = System(tmp_path, sim)
    await s.start_relay(bundle_dir=tmp_path / "bundles")
    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    settings: dict[str, Any] = {
        "state_dir": state,
        "watch_interval": 0.05,
        "race_look_interval": 0.1,
        "update_race_poll": 0.05,
        "update_race_fetch_window": None,  # the race files (or ExtensionMode) decide
        "update_idle_restart": None,  # only Install now restarts
        **rauc.box(slot="A", version=OLD),
        **overrides,
    }
    agent = await s.start_agent(**settings)
    return Box(s, sim, agent, rauc, state)


@pytest.fixture
async def box(tmp_path: Path, sim: Simulator) -> AsyncIterator[Box]:
    b = await start_box(tmp_path, sim)
    yield b
    await b.s.close()


async def test_download_and_restart_wait_for_the_race_in_the_files(
    box: Box, tmp_path: Path
) -> None:
    gate = box.agent.race_gate
    await wait_for(lambda: gate.running() == FILES, what="the box to see the race running")
    await box.offer(tmp_path)
    await wait_for(lambda: box.held() == "downloading", what="the download to wait")
    report = box.reported()
    await wait_for(
        lambda: "Waits for the race to end" in box.reported().get("message", ""),
        what="the relay to hear it waits",
    )
    report = box.reported()
    assert report["state"] == "offered" and report["version"] == NEW
    row = await box.row()
    assert (row["mark"], row["title"]) == ("amber", f"Version {NEW} waits for the race to end")
    assert row["text"].startswith("Nothing is downloading while a race runs (")
    # Not a byte asked for: no part file, RAUC not asked.
    assert [p.name for p in (box.state / "update").iterdir()] == ["highest-version"]
    assert box.rauc.verbs() == []

    box.sim.end_race()
    await wait_for(lambda: box.reported().get("state") == "installed", what="the install")
    assert box.rauc.verbs() == ["info", "install"] and box.held() is None

    box.sim.advance()  # the next race starts
    await wait_for(lambda: gate.running() == FILES, what="the next race seen running")
    got = await box.s.press("install")
    assert got.code == 200, got.body
    assert json.loads(got.body)["message"] == (
        f"Restarts into version {NEW} once the race ends ({FILES})."
    )
    await wait_for(lambda: box.held() == "restarting", what="the restart to wait")
    row = await box.row()
    assert row["text"].startswith("Nothing is restarting while a race runs (")
    assert "reboot" not in box.rauc.verbs()

    box.sim.end_race()
    await wait_for(lambda: "reboot" in box.rauc.verbs(), what="the restart after the race")
    await wait_for(lambda: box.reported().get("state") == "restarting", what="the report")


async def test_an_install_from_a_stick_waits_for_the_race(tmp_path: Path, sim: Simulator) -> None:
    stick = tmp_path / "usb"
    stick.mkdir()
    box = await start_box(tmp_path, sim, update_dirs=(stick,), update_scan_interval=0.05)
    try:
        gate = box.agent.race_gate
        await wait_for(lambda: gate.running() == FILES, what="the box to see the race running")
        make_bundle(stick / "new.raucb", compatible=box_compatible(), version=NEW)
        await wait_for(lambda: box.held() == "installing", what="the install to wait")
        assert "install" not in box.rauc.verbs()
        row = await box.row()
        assert row["text"].startswith("Nothing is installing while a race runs (")
        box.sim.end_race()
        await wait_for(lambda: box.reported().get("state") == "installed", what="the install")
        assert box.rauc.calls()[-1] == ["install", str(stick / "new.raucb")]
    finally:
        await box.s.close()


async def test_extension_mode_says_when_the_race_starts_and_ends(tmp_path: Path) -> None:
    """With ExtensionMode on, its RaceStart and RaceEnd are the box's word for the race."""
    sim = Simulator(seed=11, lap_interval=None)
    await sim.start()
    box = await start_box(tmp_path, sim)
    try:
        sim.notification_url = box.s.status_url + PATH
        sender = await sim.restart_extension()
        await wait_for(lambda: sender.hello_acknowledged, what="the Hello")
        gate = box.agent.race_gate
        sim.end_race()  # RaceEnd: no race runs
        await wait_for(lambda: gate.running() is None, what="the race to end")
        sim.advance()  # the next race starts: RaceStart
        said = "FPVTrackside says a race is running"
        await wait_for(lambda: gate.running() == said, what="RaceStart heard")
        await box.offer(tmp_path)
        await wait_for(lambda: box.held() == "downloading", what="the download to wait")
        assert box.rauc.verbs() == []
        sim.end_race()
        await wait_for(lambda: box.reported().get("state") == "installed", what="the install")
    finally:
        await box.s.close()
        await sim.stop()
