"""Several real agents on one relay, each with its own stand-in `rauc` and state folder, and a
way to play a box's restart into the new slot (kept) or back into the old one (rolled back).

A restart is what the box does between `restarting` and its next hello: the agent is stopped,
the box's command line and version file say the slot and version it came up with, RAUC's
status says that slot is booted and good, and the agent starts again on the same state folder;
it then reports `good` (came up in the new slot) or `rolled-back` (back in the old one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pitlink_testkit.bundles import FakeRauc, make_bundle
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.rauc import box_compatible

OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"
ARCH = box_compatible().removeprefix("pitlink-")


@dataclass
class FleetBox:
    """One box: its system (the relay shared), stand-in rauc and state folder."""

    s: System
    rauc: FakeRauc
    state: Path

    @property
    def pits_id(self) -> str:
        return self.s.pits_id

    async def start(self, *, slot: str, version: str) -> None:
        self.rauc.set_status(booted=slot, boot_status="good")
        # The simulator's race never stops: these boxes update whatever runs (the race gate has
        # tests of its own), and pull only, so that what is counted is what the tests cause.
        await self.s.start_agent(
            state_dir=self.state,
            update_during_races=True,
            no_push=True,
            **self.rauc.box(slot=slot, version=version),
        )

    def report(self) -> dict[str, Any] | None:
        """The box's update as the relay sees it (its last report, or its hello's)."""
        relay = self.s.relay
        conn = None if relay is None else relay.registry.get(self.pits_id)
        return None if conn is None or conn.update is None else conn.update.payload()

    def state_of(self) -> str | None:
        report = self.report()
        return None if report is None else report["state"]

    async def restart_into(self, *, slot: str, version: str) -> None:
        """Press Install now, then come back up from `slot` running `version`."""
        got = await self.s.press("install")
        assert got.code == 200, got.body
        await wait_for(lambda: "reboot" in self.rauc.verbs(), what=f"{self.pits_id} restarting")
        await wait_for(lambda: self.state_of() == "restarting", what="the relay to hear of it")
        await self.s.stop_agent()
        await self.start(slot=slot, version=version)


class Fleet:
    """Boxes `box-1` ... `box-N` on one relay with a bundle folder, all on version OLD in slot A."""

    def __init__(self, tmp: Path, sim: Simulator):
        self.tmp = tmp
        self.s = System(tmp, sim, pits_id="box-1")
        self.boxes: dict[str, FleetBox] = {}
        self.relay_overrides: dict[str, Any] = {}
        self.admin = {
            "Authorization": f"Bearer {self.s.keys.issue(sub='ops', role='admin', ttl=3600)}"
        }

    async def start(self, count: int, **relay: Any) -> None:
        self.relay_overrides = relay
        await self.s.start_relay(bundle_dir=self.tmp / "bundles", **relay)
        for n in range(1, count + 1):
            system = self.s if n == 1 else self.s.sibling(self.s.sim, f"box-{n}")
            folder = system.tmp / "box"
            folder.mkdir()
            (folder / "state").mkdir()
            box = FleetBox(system, FakeRauc(folder), folder / "state")
            await box.start(slot="A", version=OLD)
            self.boxes[system.pits_id] = box

    def box(self, n: int) -> FleetBox:
        return self.boxes[f"box-{n}"]

    async def api(self, path: str, body: Any = None, *, code: int = 200, **kwargs: Any) -> Any:
        if body is not None:
            kwargs.update(method="POST", body=body if isinstance(body, bytes) else json.dumps(body))
        got = await self.s.get(f"/admin/api/{path}", headers=self.admin, **kwargs)
        assert got.code == code, (path, got.code, got.body[:300])
        return json.loads(got.body)

    async def upload(self, version: str = NEW) -> str:
        data = make_bundle(
            self.tmp / f"{version}.raucb", compatible=box_compatible(), version=version
        )
        meta = await self.api(f"bundles/upload?version={quote(version)}&arch={ARCH}", data)
        return str(meta["id"])

    def offers(self) -> dict[str, str]:
        relay = self.s.relay
        assert relay is not None and relay.updates.store is not None
        return relay.updates.store.offers()

    def offered(self, bundle_id: str) -> list[str]:
        return sorted(p for p, b in self.offers().items() if b == bundle_id)

    async def rollout(self, bundle_id: str) -> dict[str, Any]:
        listed = await self.api("bundles")
        (row,) = [b for b in listed["bundles"] if b["id"] == bundle_id]
        return dict(row["rollout"])

    def halted_metric(self, bundle_id: str) -> float | None:
        relay = self.s.relay
        assert relay is not None
        return relay.metrics.registry.get_sample_value(
            "pitlink_rollout_halted", {"bundle": bundle_id}
        )

    async def restart_relay(self) -> None:
        """Stop the relay and start another on the same port and bundle folder; the agents
        dial again by themselves."""
        await self.s.stop_relay()
        await self.s.start_relay(bundle_dir=self.tmp / "bundles", **self.relay_overrides)
        for box in self.boxes.values():
            box.s.relay = self.s.relay
        for box in self.boxes.values():
            await box.s.connected()

    async def close(self) -> None:
        for box in self.boxes.values():
            if box.s is not self.s:
                await box.s.stop_agent()
                box.s.http.close()
        await self.s.close()
