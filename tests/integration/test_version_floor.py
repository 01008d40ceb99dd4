"""Versions only go forward, through both real ends: a relay offers a box a version older
than the newest it has run (it was put back onto an older one from a USB stick), and the box
refuses it in words the admin sees, then takes a newer one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pitlink_testkit.bundles import FakeRauc, make_bundle
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.rauc import box_compatible
from pits_appliance.update_floor import FLOOR, refusal

pytestmark = pytest.mark.timeout(60)
OLD, MID, HIGH, NEWEST = "0.1.0+20261101T1200", "0.2.0+20261129T1612", "0.3.0", "0.4.0"
ARCH = box_compatible().removeprefix("pitlink-")


@pytest.fixture
async def s(tmp_path: Path, sim) -> AsyncIterator[System]:
    s = System(tmp_path, sim)
    await s.start_relay(bundle_dir=tmp_path / "bundles")
    yield s
    await s.close()


async def api(s: System, path: str, body: Any) -> Any:
    admin = {"Authorization": f"Bearer {s.keys.issue(sub='ops', role='admin', ttl=600)}"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got = await s.get(f"/admin/api/{path}", headers=admin, method="POST", body=data)
    assert got.code == 200, (path, got.code, got.body[:300])
    return json.loads(got.body)


def reported(s: System) -> dict[str, Any]:
    assert s.relay is not None
    conn = s.relay.registry.get(s.pits_id)
    row = conn.describe() if conn is not None and conn.hello is not None else {}
    return row.get("update") or {}


async def test_the_box_refuses_a_version_older_than_it_has_run(s: System, tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    (state / FLOOR).parent.mkdir(parents=True)
    (state / FLOOR).write_text(HIGH + "\n")
    await s.start_agent(
        state_dir=state, update_during_races=True, **rauc.box(slot="A", version=OLD)
    )
    assert (state / FLOOR).read_text() == HIGH + "\n"  # not lowered to the version running
    data = make_bundle(tmp_path / "b.raucb", compatible=box_compatible(), version=MID)
    meta = await api(s, f"bundles/upload?version={quote(MID)}&arch={ARCH}", data)
    await api(s, f"bundles/{meta['id']}/offer", {"pitsIds": [s.pits_id]})
    await wait_for(lambda: reported(s).get("state") == "refused", what="the refusal")
    assert reported(s)["version"] == MID and reported(s)["message"] == refusal(HIGH)
    assert rauc.verbs() == []  # nothing downloaded, nothing checked
    newer = make_bundle(tmp_path / "c.raucb", compatible=box_compatible(), version=NEWEST)
    meta = await api(s, f"bundles/upload?version={quote(NEWEST)}&arch={ARCH}", newer)
    await api(s, f"bundles/{meta['id']}/offer", {"pitsIds": [s.pits_id]})
    await wait_for(lambda: reported(s).get("state") == "installed", what="the newer install")
    assert reported(s)["version"] == NEWEST
    assert (state / FLOOR).read_text() == HIGH + "\n"  # raised when the box runs it, not before
