"""Rollouts in waves through a real relay and four real agents (a stand-in `rauc` each): the
wave first, the rest once the wave is good, a halt on a rollback, resume, cancel, and a relay
restart in the middle (cloud.rollout)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fleet import NEW, OLD, Fleet
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def fleet(tmp_path: Path, sim) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path, sim)
    try:
        await f.start(4)
        yield f
    finally:
        await f.close()


async def installed(fleet: Fleet, *ns: int) -> None:
    for n in ns:
        box = fleet.box(n)
        await wait_for(lambda b=box: b.state_of() == "installed", what=f"{box.pits_id} installed")


async def test_a_wave_of_two_then_the_rest_once_both_are_good(fleet: Fleet) -> None:
    bundle = await fleet.upload()
    got = await fleet.api(f"bundles/{bundle}/rollout", {"wave": 2})
    assert got["rollout"]["wave"] == 2 and got["rollout"]["state"] == "running"
    # The wave: the first two connected boxes by pits id; the other two are offered nothing.
    await wait_for(lambda: fleet.offered(bundle) == ["box-1", "box-2"], what="the wave offered")
    await installed(fleet, 1, 2)
    assert fleet.offered(bundle) == ["box-1", "box-2"]
    assert fleet.box(3).state_of() is None and fleet.box(4).state_of() is None
    await fleet.box(1).restart_into(slot="B", version=NEW)
    await wait_for(lambda: fleet.box(1).state_of() == "good", what="box-1 good")
    rollout = await fleet.rollout(bundle)
    assert (rollout["phase"], rollout["boxes"]["box-1"]) == ("wave", "good")
    assert fleet.offered(bundle) == ["box-1", "box-2"]  # one good is not the whole wave
    await fleet.box(2).restart_into(slot="B", version=NEW)
    # Both good: the rest are offered it, and install it.
    await wait_for(lambda: len(fleet.offered(bundle)) == 4, what="the rest offered")
    await installed(fleet, 3, 4)
    rollout = await fleet.rollout(bundle)
    assert (rollout["phase"], rollout["state"], rollout["members"]) == (
        "rest",
        "running",
        ["box-1", "box-2"],
    )
    assert fleet.halted_metric(bundle) == 0


async def test_a_rollback_in_the_wave_halts_it_then_resume_and_cancel(fleet: Fleet) -> None:
    bundle = await fleet.upload()
    await fleet.api(f"bundles/{bundle}/rollout", {"wave": 2})
    await installed(fleet, 1, 2)
    # box-1 comes back up in its old slot: rolled back. The rollout halts at once.
    await fleet.box(1).restart_into(slot="A", version=OLD)
    await wait_for(lambda: fleet.box(1).state_of() == "rolled-back", what="box-1 rolled back")
    await wait_for(lambda: fleet.halted_metric(bundle) == 1, what="the halt in the metric")
    rollout = await fleet.rollout(bundle)
    assert rollout["state"] == "halted"
    assert (rollout["halt"]["pitsId"], rollout["halt"]["state"]) == ("box-1", "rolled-back")
    assert rollout["halt"]["version"] == NEW
    # box-2 had installed it (its offer stands, a withdrawal would change nothing); box-1's
    # is gone; nothing was offered to box-3 or box-4, and nothing is while it stays halted.
    assert fleet.offered(bundle) == ["box-2"]
    await fleet.box(2).restart_into(slot="B", version=NEW)
    await wait_for(lambda: fleet.box(2).state_of() == "good", what="box-2 good")
    assert fleet.offered(bundle) == ["box-2"]
    assert fleet.box(3).state_of() is None and fleet.box(4).state_of() is None
    assert (await fleet.rollout(bundle))["state"] == "halted"
    # Resumed: box-1 is left out, box-3 fills the wave; box-1 is never offered it again.
    got = await fleet.api(f"bundles/{bundle}/rollout/resume", {})
    assert got["rollout"]["skipped"] == ["box-1"] and got["rollout"]["halt"] is None
    await wait_for(lambda: fleet.offered(bundle) == ["box-2", "box-3"], what="box-3 offered")
    assert fleet.halted_metric(bundle) == 0
    await installed(fleet, 3)

    async def rollout_saw_it() -> bool:  # the rollout takes reports in on the relay's tick
        return (await fleet.rollout(bundle))["boxes"].get("box-3") == "installed"

    await wait_for(rollout_saw_it, what="the rollout to record box-3 installed")
    # Cancelled: box-3 installed it (stays), nothing goes to box-4.
    got = await fleet.api(f"bundles/{bundle}/rollout/cancel", {})
    assert got["rollout"]["state"] == "cancelled" and got["withdrawn"] == []
    await fleet.box(3).restart_into(slot="B", version=NEW)
    await wait_for(lambda: fleet.box(3).state_of() == "good", what="box-3 good")
    assert fleet.box(4).state_of() is None and "box-4" not in fleet.offers()
    assert fleet.box(1).state_of() == "rolled-back"
    # A halted or cancelled rollout cannot be resumed twice; a bad wave is refused.
    await fleet.api(f"bundles/{bundle}/rollout/resume", {}, code=409)
    await fleet.api(f"bundles/{bundle}/rollout", {"wave": 0}, code=400)
    await fleet.api(f"bundles/{bundle}/rollout", {"wave": "2"}, code=400)


async def test_a_relay_restart_mid_rollout_keeps_it(fleet: Fleet) -> None:
    bundle = await fleet.upload()
    await fleet.api(f"bundles/{bundle}/rollout", {"wave": 1})
    await installed(fleet, 1)
    await fleet.restart_relay()
    rollout = await fleet.rollout(bundle)
    assert (rollout["state"], rollout["phase"], rollout["members"]) == (
        "running",
        "wave",
        ["box-1"],
    )
    # The new relay knows box-1 from its hello; once it is good, the rest follow.
    assert fleet.box(1).state_of() == "installed"
    await fleet.box(1).restart_into(slot="B", version=NEW)
    await wait_for(lambda: len(fleet.offered(bundle)) == 4, what="the rest offered")
    await installed(fleet, 2, 3, 4)
    # And a halt survives a restart too, with its metric.
    await fleet.box(2).restart_into(slot="A", version=OLD)
    await wait_for(lambda: fleet.halted_metric(bundle) == 1, what="the halt")
    await fleet.restart_relay()
    await wait_for(lambda: fleet.halted_metric(bundle) == 1, what="the halt after a restart")
    assert (await fleet.rollout(bundle))["halt"]["pitsId"] == "box-2"
