"""An update through both real ends: the relay's bundle folder, offer and download endpoint, and
the agent's download, install (a stand-in `rauc`: RAUC is not ours) and restart.

The two halves were built side by side; this is where they must agree (the frames, the
download's token, ranges and ETag, the reports the admin sees).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pitlink_testkit.bundles import FakeRauc, make_bundle
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.rauc import box_compatible

pytestmark = pytest.mark.timeout(60)
OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"
ARCH = box_compatible().removeprefix("pitlink-")


@dataclass
class Chain:
    s: System
    agent: Agent
    rauc: FakeRauc
    admin: dict[str, str]

    async def api(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs.update(method="POST", body=body if isinstance(body, bytes) else json.dumps(body))
        got = await self.s.get(f"/admin/api/{path}", headers=self.admin, **kwargs)
        assert got.code == 200, (path, got.code, got.body[:300])
        return json.loads(got.body)

    def row(self) -> dict[str, Any] | None:
        assert self.s.relay is not None
        conn = self.s.relay.registry.get(self.s.pits_id)
        return conn.describe() if conn is not None and conn.hello is not None else None

    def update_state(self) -> str | None:
        row = self.row()
        return ((row or {}).get("update") or {}).get("state")


@pytest.fixture
async def chain(tmp_path: Path, sim) -> AsyncIterator[Chain]:
    s = System(tmp_path, sim)
    await s.start_relay(bundle_dir=tmp_path / "bundles")
    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    agent = await s.start_agent(
        state_dir=state,
        update_during_races=True,  # races and updates: tests/integration/test_update_race.py
        **rauc.box(slot="A", version=OLD),
    )
    admin = {"Authorization": f"Bearer {s.keys.issue(sub='ops', role='admin', ttl=600)}"}
    try:
        yield Chain(s, agent, rauc, admin)
    finally:
        await s.close()


async def test_an_offer_from_the_admin_api_is_downloaded_installed_and_restarted_into(
    chain: Chain, tmp_path: Path
) -> None:
    row = chain.row()
    assert row is not None
    assert (row["swVersion"], row["slot"], row["arch"]) == (OLD, "A", ARCH)
    data = make_bundle(
        tmp_path / "b.raucb", compatible=box_compatible(), version=NEW, size=3_000_000
    )
    meta = await chain.api(f"bundles/upload?version={quote(NEW)}&arch={ARCH}", data)
    await chain.api(f"bundles/{meta['id']}/offer", {"pitsIds": [chain.s.pits_id]})
    await wait_for(lambda: chain.update_state() == "installed", what="the box to report installed")
    assert chain.rauc.verbs() == ["info", "install"]
    # The admin page's view: the box, its slot, the update's version.
    connections = await chain.api("connections")
    rows = connections if isinstance(connections, list) else connections.get("connections", [])
    mine = next(r for r in rows if r["pitsId"] == chain.s.pits_id)
    assert mine["update"]["state"] == "installed" and mine["update"]["version"] == NEW
    got = await chain.s.press("install")  # as the status page does, with the box's PIN
    assert got.code == 200, got.body
    await wait_for(lambda: "reboot" in chain.rauc.verbs(), what="the restart")
    await wait_for(lambda: chain.update_state() == "restarting", what="the relay to hear of it")


async def test_a_box_already_on_the_offered_version_is_not_sent_it(
    chain: Chain, tmp_path: Path
) -> None:
    data = make_bundle(tmp_path / "b.raucb", compatible=box_compatible(), version=OLD)
    meta = await chain.api(f"bundles/upload?version={quote(OLD)}&arch={ARCH}", data)
    await chain.api(f"bundles/{meta['id']}/offer", {"pitsIds": [chain.s.pits_id]})
    newer = make_bundle(tmp_path / "c.raucb", compatible=box_compatible(), version=NEW)
    meta = await chain.api(f"bundles/upload?version={quote(NEW)}&arch={ARCH}", newer)
    await chain.api(f"bundles/{meta['id']}/offer", {"pitsIds": [chain.s.pits_id]})
    await wait_for(lambda: chain.update_state() == "installed", what="the newer one installed")
    # Only the newer bundle was ever looked at.
    assert chain.rauc.verbs() == ["info", "install"]
