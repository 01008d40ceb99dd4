"""While the slot running is on trial (restarted into an update and not yet marked good, or any
boot RAUC does not count good), the box installs nothing: RAUC writes the slot not running,
and on a trial boot that is the only slot known good, the one the box falls back to. An offer
that comes meanwhile waits and is taken once the slot is good; a bundle in an update folder
is looked at only then; the downgrade action says why it cannot start.

Real HTTP bundle endpoint on loopback, the Updater, the stand-in `rauc` whose `rauc status`
the test sets (the image's health check marks the slot good on a real box)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pitlink_testkit.bundles import (
    FakeRauc,
    make_bundle,
    make_updater,
    offer_for,
    report_states,
)
from pitlink_testkit.waiting import wait_for
from pits_appliance.update import Updater
from pits_appliance.update_floor import PERMIT
from wire.messages import Offer, UpdateReport

COMPAT = "pitlink-amd64"
OLD, NEW, NEWER = "0.1.0+20261101T1200", "0.2.0+20261129T1612", "0.3.0+20261207T1200"
pytestmark = pytest.mark.timeout(30)


def on_trial_in_b(
    tmp_path: Path, rauc: FakeRauc, url: str = "", **kw: object
) -> tuple[Updater, list[UpdateReport]]:
    """A box just restarted from A into NEW in B, which the health check has not marked good."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "update.json").write_text(
        json.dumps({"version": NEW, "fromSlot": "A", "toSlot": "B", "fromVersion": OLD, "atMs": 1})
    )
    rauc.set_status(booted="B", boot_status="bad")  # what RAUC says of a trial boot
    return make_updater(
        state, rauc, url, version=NEW, compatible=COMPAT, slot="B", scan_interval=0.0, **kw
    )


def ended(updater: Updater, *states: str):
    return lambda: updater.report is not None and updater.report.state in states


async def test_an_offer_during_the_trial_waits_for_the_slot_to_be_good(
    tmp_path: Path, served
) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "next.raucb", compatible=COMPAT, version=NEWER, size=50_000)
    s.bundles["abc1"] = data
    updater, sent = on_trial_in_b(tmp_path, rauc, server.url + "/")
    await updater.start()
    assert updater.on_trial and updater.busy
    assert report_states(sent) == ["installed"]  # "running in slot B; marked good once ..."

    offer = offer_for(data, bundle="abc1", compatible=COMPAT, version=NEWER)
    updater.offer(offer)
    updater.offer(offer)  # the relay offers again on each connection: still one held
    for _ in range(3):
        await updater.tick()
    assert s.ranges == [] and rauc.verbs() == []  # not a byte fetched, RAUC not asked
    assert report_states(sent) == ["installed"] and updater.after_good == offer

    rauc.set_status(booted="B", boot_status="good")  # the health check marked B good
    await updater.tick()
    await wait_for(ended(updater, "installed", "failed", "refused"), what="the held offer")
    assert report_states(sent) == [
        "installed",
        "good",
        "offered",
        "downloading",
        "installing",
        "installed",
    ]
    assert updater.report is not None and updater.report.version == NEWER
    assert rauc.verbs() == ["info", "install"] and updater.pending is not None
    assert updater.pending.to_slot == "A"  # now that B is the one known good


async def test_a_bundle_in_an_update_folder_waits_for_the_slot_to_be_good(
    tmp_path: Path,
) -> None:
    rauc = FakeRauc(tmp_path)
    folder = tmp_path / "stick"
    folder.mkdir()
    make_bundle(folder / "next.raucb", compatible=COMPAT, version=NEWER)
    updater, sent = on_trial_in_b(tmp_path, rauc, bundle_dirs=[folder])
    await updater.start()
    for _ in range(3):
        await updater.tick()
    assert rauc.verbs() == [] and report_states(sent) == ["installed"]

    rauc.set_status(booted="B", boot_status="good")
    await updater.tick()
    await wait_for(ended(updater, "installed", "refused", "failed"), what="the bundle's install")
    assert rauc.calls()[-1] == ["install", str(folder / "next.raucb")]
    assert updater.pending is not None and updater.pending.version == NEWER


async def test_any_boot_not_counted_good_holds_offers_and_a_withdrawal_drops_them(
    tmp_path: Path,
) -> None:
    """No restart record (RAUC's own install, an agent that lost its state): RAUC's word is
    enough."""
    rauc = FakeRauc(tmp_path)
    rauc.set_status(booted="A", boot_status="bad")
    updater, sent = make_updater(tmp_path / "state", rauc, version=OLD, compatible=COMPAT)
    await updater.start()
    assert updater.on_trial and sent == []  # nothing to report of a boot it did not ask for
    offer = Offer(bundle="n", version=NEW, compatible=COMPAT, size=10, sha256="0" * 64)
    updater.offer(offer)
    assert updater.after_good == offer
    updater.offer(Offer(bundle=None, version=NEW, compatible=COMPAT, size=0, sha256=""))
    assert updater.after_good is None
    rauc.set_status(booted="A", boot_status="good")
    await updater.check_good()
    assert not updater.on_trial and not updater.busy and sent == []


async def test_the_downgrade_action_says_the_slot_is_on_trial(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    stick = tmp_path / "usb"
    stick.mkdir()
    make_bundle(stick / "old.raucb", compatible=COMPAT, version=OLD)
    updater, _ = on_trial_in_b(tmp_path, rauc, usb_dir=stick)
    await updater.start()
    await updater.look_usb()
    answer = updater.downgrade("old.raucb")
    assert answer["ok"] is False and "on trial" in answer["message"]
    assert rauc.verbs() == ["info"]  # the stick's bundle read for the page, nothing installed
    assert not (tmp_path / "state" / PERMIT).exists()  # no downgrade permitted


async def test_a_box_that_cannot_read_raucs_status_is_not_held(tmp_path: Path) -> None:
    """RAUC unreadable says nothing of a trial: the box goes on as before (an install would
    fail on its own words)."""
    rauc = FakeRauc(tmp_path)
    rauc.status.write_text("not json")
    updater, _ = make_updater(tmp_path / "state", rauc, version=OLD, compatible=COMPAT)
    await updater.start()
    assert not updater.on_trial and not updater.busy
    # Asked again at each look until it answers (RAUC's service may start after the agent).
    rauc.set_status(booted="A", boot_status="bad")
    await updater.tick()
    assert updater.on_trial and updater.trial_known
