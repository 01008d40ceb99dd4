"""The downgrade action through the real box: the status page lists the older bundles on a USB
stick (a folder stands in for the read-only mount), and "Install this older version", with the
box's PIN from the page's own origin, writes the one-shot permit, installs, removes the
permit and says so at WARNING with both versions."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from pitlink_testkit.bundles import FakeRauc, make_bundle
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.rauc import box_compatible
from pits_appliance.update_floor import FLOOR, PERMIT

pytestmark = pytest.mark.timeout(60)
OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"


@dataclass
class Box:
    s: System
    agent: Agent
    rauc: FakeRauc
    state: Path
    stick: Path

    async def page(self) -> dict[str, Any]:
        got = await self.s.http.fetch(f"{self.s.status_url}/status.json")
        return json.loads(got.body)

    async def post(self, body: bytes, headers: dict[str, str]) -> tornado.httpclient.HTTPResponse:
        return await self.s.http.fetch(
            f"{self.s.status_url}/api/downgrade",
            method="POST",
            body=body,
            headers=headers,
            raise_error=False,
        )


@pytest.fixture
async def box(tmp_path: Path, sim: Simulator) -> AsyncIterator[Box]:
    s = System(tmp_path, sim)
    await s.start_relay()
    rauc = FakeRauc(tmp_path)
    state, stick = tmp_path / "state", tmp_path / "usb"
    state.mkdir()
    stick.mkdir()
    agent = await s.start_agent(
        state_dir=state,
        update_usb_dir=stick,
        update_scan_interval=0.05,
        update_during_races=True,  # races and updates: test_update_race.py
        **rauc.box(slot="A", version=NEW),
    )
    try:
        yield Box(s, agent, rauc, state, stick)
    finally:
        await s.close()


async def listed(box: Box) -> list[dict[str, Any]]:
    return (await box.page())["usbBundles"]


async def test_an_older_version_from_the_stick_with_the_pin(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    make_bundle(box.stick / "pitlink-old.raucb", compatible=box_compatible(), version=OLD)
    make_bundle(
        box.stick / "unsigned.raucb", compatible=box_compatible(), version=OLD, signature="bad"
    )
    (box.stick / "notes.txt").write_text("not a bundle")
    rows: list[dict[str, Any]] = []

    async def both() -> bool:
        rows[:] = await listed(box)
        return len(rows) == 2

    await wait_for(both, what="the stick's bundles on the page")
    by_name = {r["name"]: r for r in rows}
    assert by_name["pitlink-old.raucb"]["version"] == OLD
    assert by_name["pitlink-old.raucb"]["older"] is True
    assert by_name["unsigned.raucb"]["version"] is None
    assert by_name["unsigned.raucb"]["older"] is False
    assert "signature verification failed" in by_name["unsigned.raucb"]["why"]
    assert (box.state / FLOOR).read_text() == NEW + "\n"

    chosen = json.dumps({"bundle": "pitlink-old.raucb"}).encode()
    page = {"Origin": box.s.status_url, "X-Pitlink-Action": "1"}
    assert (await box.post(chosen, {"Origin": box.s.status_url})).code == 403  # no header
    evil = {"Origin": "http://evil.example", "X-Pitlink-Action": "1"}
    assert (await box.post(chosen, evil)).code == 403
    no_pin = await box.post(chosen, page)
    assert no_pin.code == 403 and json.loads(no_pin.body)["pin"] == "required"
    unlocked = await box.s.unlock()
    for body, code in (
        (b"", 400),
        (b"[1]", 400),
        (json.dumps({"bundle": "../state/token"}).encode(), 409),
        (json.dumps({"bundle": "unsigned.raucb"}).encode(), 409),
        (json.dumps({"bundle": "x" * 2000}).encode(), 400),  # past the body's bound
    ):
        got = await box.post(body, unlocked)
        assert got.code == code, (body[:40], got.body)
    assert "install" not in box.rauc.verbs() and not (box.state / PERMIT).exists()

    caplog.set_level(logging.INFO)
    got = await box.post(chosen, unlocked)
    assert got.code == 200, got.body
    assert json.loads(got.body)["message"].startswith(f"Installing version {OLD} from the USB")
    agent = box.agent
    await wait_for(
        lambda: agent.updater.report is not None and agent.updater.report.state == "installed",
        what="the older version installed",
    )
    assert box.rauc.calls()[-1] == ["install", str(box.stick / "pitlink-old.raucb")]
    assert not (box.state / PERMIT).exists()  # one shot: gone once the install ended
    assert (box.state / FLOOR).read_text() == NEW + "\n"  # the newest it has run, still
    said = [r for r in caplog.records if r.getMessage() == "downgrade chosen on the status page"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert (said[0].running, said[0].version) == (NEW, OLD)  # type: ignore[attr-defined]
    again = await box.post(chosen, unlocked)  # installed and waiting: one at a time
    assert again.code == 409
