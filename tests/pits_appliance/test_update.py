"""Updates end to end on the box's side: a real HTTP bundle endpoint on loopback, the Updater,
and a stand-in `rauc` program that records what it was asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pitlink_testkit.bundles import (
    FakeRauc,
    make_bundle,
    offer_for,
    report_states,
)
from pitlink_testkit.bundles import make_updater as shared_updater
from pitlink_testkit.waiting import wait_for
from pits_appliance import update_local
from pits_appliance.rauc import (
    Rauc,
    RaucError,
    booted_slot,
    box_compatible,
    image_version,
    rauc_message,
)
from pits_appliance.state import AgentState
from pits_appliance.status_view import view
from pits_appliance.update import MAX_LOCAL_CHECKED, Updater, bundles_url
from wire.messages import Offer, UpdateReport

COMPAT = "pitlink-amd64"
OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"
BUNDLE = "a1b2c3"
pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_updater(
    tmp_path: Path, rauc: FakeRauc, url: str = "", *, slot: str | None = "A", **kw: object
) -> tuple[Updater, list[UpdateReport]]:
    kw.setdefault("version", OLD)
    return shared_updater(
        tmp_path / "state",
        rauc,
        url,
        slot=slot,
        compatible=COMPAT,
        **kw,  # type: ignore[arg-type]
    )


def final(updater: Updater, *states: str):
    return lambda: updater.report is not None and updater.report.state in states


async def offer_and_wait(updater: Updater, offer: Offer, *states: str) -> UpdateReport:
    updater.offer(offer)
    await wait_for(final(updater, *states), timeout=20, what=f"the update to end {states}")
    assert updater.report is not None
    return updater.report


async def test_a_cut_download_resumes_from_what_is_on_disk_and_installs(
    tmp_path: Path, served
) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW, size=200_000)
    s.bundles[BUNDLE] = data
    s.cut_at = 90_000  # the link drops in the middle of the first answer
    updater, sent = make_updater(tmp_path, rauc, server.url + "/", chunk=128 * 1024)
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    report = await offer_and_wait(updater, offer, "installed", "failed", "refused")
    assert report.state == "installed", report
    assert report.version == NEW and "slot B" in report.message
    # Asked in chunks; after the cut, from the byte the file had reached.
    assert s.ranges[0] == "bytes=0-131071"
    resumed = s.ranges[1]
    assert len(s.ranges) == 2 and resumed is not None
    assert resumed.startswith("bytes=") and resumed.endswith(f"-{len(data) - 1}")
    assert 0 < int(resumed[6:].split("-")[0]) <= 90_000
    assert rauc.verbs() == ["info", "install"]
    assert report_states(sent) == ["offered", "downloading", "installing", "installed"]
    done = [r for r in sent if r.state == "downloading"]
    assert done[-1].done == done[-1].total == len(data)
    # The bundle is deleted once RAUC has written it; the slot waits for its restart.
    assert list((tmp_path / "state" / "update").iterdir()) == []
    assert updater.pending is not None and updater.pending.to_slot == "B"
    saved = json.loads((tmp_path / "state" / "update-report.json").read_text())
    assert saved["state"] == "installed"


async def test_a_download_picks_up_a_part_left_by_an_agent_restart(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW)
    s.bundles[BUNDLE] = data
    s.fail_next = [503]  # and the relay has a bad moment first
    part = tmp_path / "state" / "update" / f"{BUNDLE}.raucb.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:100_000])
    updater, _ = make_updater(tmp_path, rauc, server.url)
    report = await offer_and_wait(
        updater,
        offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW),
        "installed",
        "failed",
        "refused",
    )
    assert report.state == "installed", report
    assert s.ranges == [f"bytes=100000-{len(data) - 1}"] * 2


async def test_a_download_that_does_not_match_its_sha256_is_refused_and_deleted(
    tmp_path: Path, served
) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW)
    s.bundles[BUNDLE] = data[:-1] + b"X"  # same size, other bytes
    s.etag = None
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    s.etag = f'"sha256:{offer.sha256}"'
    updater, _ = make_updater(tmp_path, rauc, server.url)
    report = await offer_and_wait(updater, offer, "installed", "failed", "refused")
    assert report.state == "refused"
    assert "does not match the sha256" in report.message
    assert list((tmp_path / "state" / "update").iterdir()) == []
    assert rauc.verbs() == []
    updater.offer(offer)  # offered again: not downloaded again
    assert len(s.ranges) == 1


async def test_a_box_without_room_says_how_much_it_needs(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW)
    s.bundles[BUNDLE] = data
    updater, _ = make_updater(tmp_path, rauc, server.url, keep_free=1 << 50)
    report = await offer_and_wait(
        updater, offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW), "failed"
    )
    assert report.message.startswith("The update needs ")
    assert " MB free, has " in report.message
    assert s.ranges == []


async def test_another_architecture_is_refused_before_any_download(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible="pitlink-arm64", version=NEW)
    s.bundles[BUNDLE] = data
    updater, sent = make_updater(tmp_path, rauc, server.url)
    updater.offer(offer_for(data, bundle=BUNDLE, compatible="pitlink-arm64", version=NEW))
    assert [r.state for r in sent] == ["refused"]
    assert sent[0].message == "The bundle is for pitlink-arm64; this box is pitlink-amd64."
    assert s.ranges == []


async def test_a_bundle_whose_inside_says_another_architecture_is_refused(
    tmp_path: Path, served
) -> None:
    """The offer is the relay's word; what RAUC reads in the signed bundle decides."""
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible="pitlink-arm64", version=NEW)
    s.bundles[BUNDLE] = data
    updater, _ = make_updater(tmp_path, rauc, server.url)
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    report = await offer_and_wait(updater, offer, "installed", "failed", "refused")
    assert report.state == "refused" and "pitlink-arm64" in report.message
    assert rauc.verbs() == ["info"]
    assert list((tmp_path / "state" / "update").iterdir()) == []


async def test_a_bad_signature_is_refused_with_raucs_words(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW, signature="bad")
    s.bundles[BUNDLE] = data
    updater, _ = make_updater(tmp_path, rauc, server.url)
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    report = await offer_and_wait(updater, offer, "installed", "failed", "refused")
    assert report.state == "refused"
    assert report.message == "signature verification failed: Verify error: self-signed certificate"
    assert rauc.verbs() == ["info"]
    assert updater.pending is None


async def test_a_failed_install_says_what_rauc_said(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    why = "Failed writing to slot rootfs.1: No space left on device\x1b[0m" + "!" * 2000
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW, install=why)
    s.bundles[BUNDLE] = data
    updater, _ = make_updater(tmp_path, rauc, server.url)
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    report = await offer_and_wait(updater, offer, "installed", "failed", "refused")
    assert report.state == "failed"
    assert report.message.startswith("Failed writing to slot rootfs.1: No space left on device")
    assert "\x1b" not in report.message and len(report.message) <= 300
    assert rauc.verbs() == ["info", "install"]
    assert list((tmp_path / "state" / "update").iterdir()) == []


async def test_a_withdrawn_offer_stops_the_download(tmp_path: Path, served) -> None:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW)
    s.bundles[BUNDLE] = data
    s.fail_next = [503] * 50  # the download keeps retrying until the offer is withdrawn
    updater, _ = make_updater(tmp_path, rauc, server.url, retry_base=0.01)
    updater.offer(offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW))
    await wait_for(lambda: len(s.ranges) >= 2, what="a retry")
    updater.offer(Offer(bundle=None))
    assert updater.report is not None and updater.report.state == "failed"
    assert "withdrew" in updater.report.message
    asked = len(s.ranges)
    await wait_for(lambda: updater._job is not None and updater._job.done(), what="the job")
    assert len(s.ranges) <= asked + 1
    assert rauc.verbs() == []


async def installed(tmp_path: Path, served, **kw: object) -> tuple[Updater, FakeRauc, Clock]:
    s, server = served
    rauc = FakeRauc(tmp_path)
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=NEW)
    s.bundles[BUNDLE] = data
    clock = Clock()
    updater, _ = make_updater(tmp_path, rauc, server.url, now=clock, **kw)
    offer = offer_for(data, bundle=BUNDLE, compatible=COMPAT, version=NEW)
    assert (await offer_and_wait(updater, offer, "installed", "failed", "refused")).state == (
        "installed"
    )
    return updater, rauc, clock


async def test_the_box_restarts_once_nobody_has_fetched_for_a_while(tmp_path: Path, served) -> None:
    fetched: list[float | None] = [None]
    updater, rauc, clock = await installed(
        tmp_path, served, idle_restart=600.0, last_fetch=lambda: fetched[0]
    )
    clock.t += 500
    fetched[0] = clock.t  # spectators are watching: the quiet starts again
    clock.t += 599
    assert updater.restart_due(clock.t) is None
    await updater.tick()
    assert "reboot" not in rauc.verbs()
    clock.t += 2
    await updater.tick()
    assert rauc.verbs()[-1] == "reboot"
    assert updater.report is not None and updater.report.state == "restarting"
    record = json.loads((tmp_path / "state" / "update.json").read_text())
    assert record == {
        "version": NEW,
        "fromSlot": "A",
        "toSlot": "B",
        "fromVersion": OLD,
        "atMs": int(clock.t * 1000),
    }
    await updater.tick()
    assert rauc.verbs().count("reboot") == 1


async def test_install_now_restarts_at_once_and_no_idle_restart_when_off(
    tmp_path: Path, served
) -> None:
    updater, rauc, clock = await installed(tmp_path, served, idle_restart=None)
    clock.t += 10 * 86400
    await updater.tick()
    assert "reboot" not in rauc.verbs()
    assert updater.view()["canInstall"]
    said = updater.install_now()
    assert said["ok"] and NEW in said["message"]
    await updater.tick()
    assert rauc.verbs()[-1] == "reboot"
    assert not updater.view()["canInstall"]
    assert updater.install_now()["ok"] is False


async def test_a_failing_restart_command_leaves_the_update_installed(
    tmp_path: Path, served
) -> None:
    updater, _, _ = await installed(tmp_path, served, reboot=["false"])
    updater.install_now()
    await updater.tick()
    assert updater.report is not None and updater.report.state == "installed"
    assert "The restart failed" in updater.report.message
    assert not (tmp_path / "state" / "update.json").exists()


# -- after the restart: what became of it ----------------------------------------------------


def restarted(tmp_path: Path, rauc: FakeRauc, *, slot: str, version: str) -> Updater:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "update.json").write_text(
        json.dumps({"version": NEW, "fromSlot": "A", "toSlot": "B", "fromVersion": OLD, "atMs": 1})
    )
    updater, _ = make_updater(tmp_path, rauc, slot=slot, version=version)
    return updater


async def test_the_new_slot_is_installed_until_marked_good_then_good(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    rauc.set_status(booted="B", boot_status="bad")  # not marked good yet
    updater = restarted(tmp_path, rauc, slot="B", version=NEW)
    await updater.start()
    assert updater.report is not None and updater.report.state == "installed"
    assert "running in slot B" in updater.report.message
    rauc.set_status(booted="B", boot_status="good")  # the image's health service said so
    await updater.tick()
    assert updater.report.state == "good"
    assert updater.report.message == f"Version {NEW} is running in slot B and is marked good."
    assert not (tmp_path / "state" / "update.json").exists()
    # It survives the agent's restart, for the next hello.
    again, _ = make_updater(tmp_path, rauc, slot="B", version=NEW)
    await again.start()
    assert again.report is not None and again.report.state == "good"


async def test_back_on_the_old_slot_is_a_rollback(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    updater = restarted(tmp_path, rauc, slot="A", version=OLD)
    await updater.start()
    assert updater.report is not None and updater.report.state == "rolled-back"
    assert updater.report.message == (
        f"Version {NEW} did not come up healthy in slot B; back on slot A (version {OLD})."
    )
    assert not (tmp_path / "state" / "update.json").exists()


async def test_an_installed_update_waits_across_an_agent_restart(tmp_path: Path, served) -> None:
    _, rauc, _ = await installed(tmp_path, served)
    again, _ = make_updater(tmp_path, rauc)
    await again.start()
    assert again.pending is not None and again.pending.version == NEW
    assert again.view()["canInstall"]


async def test_a_box_without_two_slots_says_so_and_refuses_offers(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    updater, sent = make_updater(tmp_path, rauc, slot=None)
    await updater.start()
    assert updater.view()["whyNot"] == (
        "this agent was not started from an appliance image with two slots"
    )
    updater.offer(Offer(bundle="ab", version=NEW, compatible=COMPAT, size=1, sha256="0" * 64))
    assert [r.state for r in sent] == ["refused"]
    await updater.scan_local()
    assert rauc.verbs() == []


# -- bundles without a relay -----------------------------------------------------------------


async def test_a_bundle_on_a_stick_is_installed_once(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    boot, stick = tmp_path / "boot", tmp_path / "usb"
    boot.mkdir()
    stick.mkdir()
    make_bundle(boot / "old.raucb", compatible=COMPAT, version=OLD)  # left after its update
    make_bundle(stick / "new.raucb", compatible=COMPAT, version=NEW)
    (stick / "notes.txt").write_text("not a bundle")
    updater, _ = make_updater(tmp_path, rauc, bundle_dirs=[boot, tmp_path / "none", stick])
    await updater.scan_local()
    await wait_for(final(updater, "installed", "failed", "refused"), what="the install")
    assert updater.report is not None and updater.report.state == "installed"
    assert rauc.calls()[-1] == ["install", str(stick / "new.raucb")]
    assert (stick / "new.raucb").exists()  # a read-only boot partition: never deleted
    # The box restarts (a new updater); the same bundle is not installed again, and the old
    # one holds the version running.
    (tmp_path / "state" / "update-report.json").unlink()
    again, _ = make_updater(tmp_path, rauc, bundle_dirs=[boot, stick], version=NEW, slot="B")
    await again.start()
    for _ in range(2):
        await again.scan_local()
        await wait_for(lambda: again._job is None or again._job.done(), what="the scan")
    assert rauc.verbs().count("install") == 1
    assert again.report is None


async def test_a_stick_full_of_bundles_costs_a_few_hashes_and_installs_the_newest(
    tmp_path: Path,
) -> None:
    """Each bundle is hashed to be known again: only the newest few are, whatever the stick
    holds (a real bundle is hundreds of MB)."""
    rauc = FakeRauc(tmp_path)
    stick = tmp_path / "usb"
    stick.mkdir()
    many = MAX_LOCAL_CHECKED + 4
    for n in range(many):
        path = stick / f"b{n:02d}.raucb"
        make_bundle(path, compatible=COMPAT, version=f"0.2.{n}", size=1000)
        os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))
    updater, _ = make_updater(tmp_path, rauc, bundle_dirs=[stick])
    await updater.scan_local()
    await wait_for(final(updater, "installed", "failed", "refused"), what="the install")
    assert rauc.calls()[-1] == ["install", str(stick / f"b{many - 1:02d}.raucb")]
    assert len(updater._sha_cache) == MAX_LOCAL_CHECKED


async def test_an_update_folder_is_listed_no_further_than_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stick may hold any number of files: only so many names are looked at in one folder
    (a bound of 3 here, 1,000 on the box), so only those can be hashed or installed."""
    monkeypatch.setattr(update_local, "MAX_LOCAL_LISTED", 3)
    rauc = FakeRauc(tmp_path)
    stick = tmp_path / "usb"
    stick.mkdir()
    for n in range(6):
        make_bundle(stick / f"b{n}.raucb", compatible=COMPAT, version=f"0.2.{n}", size=1000)
    updater, _ = make_updater(tmp_path, rauc, bundle_dirs=[stick])
    await updater.scan_local()
    await wait_for(final(updater, "installed", "failed", "refused"), what="the install")
    assert len(updater._sha_cache) == 3
    assert rauc.verbs().count("install") == 1


# -- the pieces --------------------------------------------------------------------------------


def test_what_the_box_knows_of_itself(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 root=PARTUUID=1 rauc.slot=B quiet\n")
    assert booted_slot(cmdline) == "B"
    cmdline.write_text("console=ttyS0 rauc.slot=B;rm quiet\n")
    assert booted_slot(cmdline) is None
    assert booted_slot(tmp_path / "missing") is None
    version = tmp_path / "version"
    assert image_version(version, "0.1.0") == "0.1.0"
    version.write_text(NEW + "\nsecond line\n")
    assert image_version(version, "0.1.0") == NEW
    version.write_text("x" * 500)
    assert len(image_version(version, "0.1.0")) <= 64
    assert box_compatible("x86_64") == "pitlink-amd64"
    assert box_compatible("aarch64") == "pitlink-arm64"
    assert bundles_url("wss://relay.example/control", "ab") == (
        "https://relay.example/pits-api/bundles/ab"
    )
    assert bundles_url("http://127.0.0.1:9/", "ab") == "http://127.0.0.1:9/pits-api/bundles/ab"
    assert rauc_message(b"", 3) == "RAUC failed (exit status 3) without saying why"


# -- what the status page says ---------------------------------------------------------------


def update_row_for(**update: object) -> dict[str, object]:
    state = AgentState(
        sw_version=OLD, update={"available": True, "slot": "A", "version": OLD, **update}
    )
    return next(r for r in view(state, now=0.0)["rows"] if r["key"] == "update")


def test_the_update_line_in_plain_words() -> None:
    down = update_row_for(
        state="downloading", updateVersion=NEW, done=30 * 2**20, total=120 * 2**20
    )
    assert (down["mark"], down["title"]) == ("amber", f"Downloading version {NEW}")
    assert down["text"].startswith("30 MB of 120 MB (25%).")
    assert (down["done"], down["total"]) == (30 * 2**20, 120 * 2**20)
    back = update_row_for(state="rolled-back", updateVersion=NEW, message="back on slot A.")
    assert (back["mark"], back["title"]) == ("red", f"Version {NEW} was rolled back")
    good = update_row_for(state="good", updateVersion=OLD, message="marked good.")
    assert (good["mark"], good["title"]) == ("green", f"Version {OLD} in slot A")
    ready = update_row_for(state="installed", updateVersion=NEW, canInstall=True, message="x")
    assert ready["title"] == f"Version {NEW} is ready" and ready["canInstall"]
    refused = update_row_for(state="refused", updateVersion=NEW, message="signature failed.")
    assert refused["title"] == f"Update to version {NEW} refused"
    assert refused["text"] == "signature failed. The box keeps running the version it has."
    none = view(AgentState(sw_version=OLD, update={"available": False, "whyNot": "no slots"}))
    row = next(r for r in none["rows"] if r["key"] == "update")
    assert row["text"] == "No updates on this box: no slots." and not none["canInstall"]


# -- damaged state (issue 25): what the box reads from disk never raises past its reader ------


DEEP_VERSION = b'{"version": ' + b"[" * 900 + b"]" * 900 + b', "toSlot": "B"}'


async def test_damaged_state_files_are_absent_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, str() of a deep `version` raised RecursionError out of start(): the agent
    could not start, and systemd restarted it into the same file."""
    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "update.json").write_bytes(DEEP_VERSION)
    (state / "update-report.json").write_bytes(b"[" * 100_000)
    (state / "update-handled.json").write_bytes(b'{"sha256": "\xff"}')
    for _ in range(2):  # the agent restarts: nothing more is said of the same files
        updater, _ = make_updater(tmp_path, rauc)
        await updater.start()
        assert updater.report is None and updater.pending is None
        assert updater.files.handled() == []
    lines = [r for r in caplog.records if r.getMessage().startswith("update state file")]
    assert sorted(Path(r.path).name for r in lines) == [  # type: ignore[attr-defined]
        "update-handled.json",
        "update-report.json",
        "update.json",
    ]


async def test_a_damaged_rauc_answer_is_a_rauc_error(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    for answer in (b"[" * 100_000, b'{"booted": ' + b"[" * 900 + b"]" * 900 + b"}", b"[]"):
        rauc.status.write_bytes(answer)
        with pytest.raises(RaucError, match="RAUC's answer is not"):
            await Rauc(rauc.command).boot_status()
