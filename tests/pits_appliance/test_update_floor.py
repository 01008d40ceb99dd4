"""Versions only go forward (pits_appliance/update_floor.py): the floor file the agent keeps
in STATE_DIR, offers and local bundles not newer than it refused, the one-shot permit. A real
bundle endpoint on loopback and the stand-in `rauc` program."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pitlink_testkit.bundles import FakeRauc, make_bundle, offer_for
from pitlink_testkit.bundles import make_updater as shared_updater
from pitlink_testkit.waiting import wait_for
from pits_appliance.update import Updater
from pits_appliance.update_floor import FLOOR, PERMIT, Floor, refusal
from wire.messages import Offer, UpdateReport

COMPAT = "pitlink-amd64"
OLD, MID, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612", "0.3.0+20261201T0900"
pytestmark = pytest.mark.timeout(30)


def make(
    tmp_path: Path, rauc: FakeRauc, url: str = "", **kw: object
) -> tuple[Updater, list[UpdateReport]]:
    kw.setdefault("version", OLD)
    return shared_updater(tmp_path / "state", rauc, url, compatible=COMPAT, **kw)  # type: ignore[arg-type]


def floor_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / FLOOR


def ended(updater: Updater):
    return lambda: (
        updater.report is not None
        and updater.report.state
        in (
            "installed",
            "failed",
            "refused",
        )
    )


async def test_the_agent_keeps_the_newest_version_it_has_run(tmp_path: Path) -> None:
    rauc = FakeRauc(tmp_path)
    updater, _ = make(tmp_path, rauc)
    await updater.start()
    assert floor_file(tmp_path).read_text() == OLD + "\n"
    assert os.stat(floor_file(tmp_path)).st_mode & 0o777 == 0o600
    # Started again on a newer version: raised. On an older one: kept (never lowered).
    updater, _ = make(tmp_path, rauc, version=NEW, slot="B")
    await updater.start()
    assert floor_file(tmp_path).read_text() == NEW + "\n"
    updater, _ = make(tmp_path, rauc, version=MID)
    await updater.start()
    assert floor_file(tmp_path).read_text() == NEW + "\n"
    assert updater.floor is not None and updater.floor.version == NEW
    # No temp files left beside it.
    assert sorted(p.name for p in floor_file(tmp_path).parent.iterdir()) == ["highest-version"]


@pytest.mark.parametrize("content", [b"", b"not a version\n", b"\xff\xfe", b"9" * 10_000, b"0.1\n"])
async def test_a_damaged_floor_file_is_said_and_replaced_by_the_running_version(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    floor_file(tmp_path).parent.mkdir(parents=True)
    floor_file(tmp_path).write_bytes(content)
    updater, _ = make(tmp_path, FakeRauc(tmp_path))
    await updater.start()
    assert floor_file(tmp_path).read_text() == OLD + "\n"
    assert any(
        r.getMessage() == "an update file holds no version; taken as absent" for r in caplog.records
    )


async def test_an_offer_not_newer_than_the_floor_is_refused_before_any_download(
    tmp_path: Path, served
) -> None:
    s, server = served
    floor_file(tmp_path).parent.mkdir(parents=True)
    floor_file(tmp_path).write_text(NEW + "\n")  # it ran NEW once, and was put back on OLD
    rauc = FakeRauc(tmp_path)
    updater, sent = make(tmp_path, rauc, server.url)
    await updater.start()
    data = make_bundle(tmp_path / "b.raucb", compatible=COMPAT, version=MID)
    s.bundles["ab"] = data
    for _ in range(2):  # offered again on each connection: refused once, said once
        updater.offer(offer_for(data, bundle="ab", compatible=COMPAT, version=MID))
    assert [(r.state, r.version, r.message) for r in sent] == [("refused", MID, refusal(NEW))]
    assert refusal(NEW) == (
        f"older than version {NEW}, the newest this box has run: a downgrade needs a USB "
        "stick and the box's PIN"
    )
    same = make_bundle(tmp_path / "c.raucb", compatible=COMPAT, version=NEW)
    updater.offer(offer_for(same, bundle="cd", compatible=COMPAT, version=NEW))
    assert sent[-1].state == "refused" and sent[-1].version == NEW
    assert s.ranges == [] and rauc.verbs() == []
    # Newer than the floor: taken, and the download leaves the floor file where it is.
    newest = "0.3.1"
    data = make_bundle(tmp_path / "d.raucb", compatible=COMPAT, version=newest)
    s.bundles["ef"] = data
    updater.offer(offer_for(data, bundle="ef", compatible=COMPAT, version=newest))
    await wait_for(ended(updater), what="the install")
    assert updater.report is not None and updater.report.state == "installed", updater.report
    assert floor_file(tmp_path).read_text() == NEW + "\n"


async def test_an_offer_whose_version_cannot_be_ordered_is_refused(tmp_path: Path) -> None:
    updater, sent = make(tmp_path, FakeRauc(tmp_path))
    await updater.start()
    updater.offer(Offer(bundle="ab", version="latest", compatible=COMPAT, size=1, sha256="0" * 64))
    assert sent[-1].state == "refused"
    assert sent[-1].message == "'latest' is not a version this box can order"


async def test_a_bundle_whose_inside_is_older_than_the_floor_is_refused_by_the_agent(
    tmp_path: Path,
) -> None:
    """However a bundle arrives (here a stick in an update folder): RAUC reads its version,
    and the agent refuses it before RAUC writes anything."""
    rauc = FakeRauc(tmp_path)
    stick = tmp_path / "usb"
    stick.mkdir()
    make_bundle(stick / "old.raucb", compatible=COMPAT, version=MID)
    updater, _ = make(tmp_path, rauc, version=NEW, slot="B", bundle_dirs=[stick])
    await updater.start()
    await updater.scan_local()
    await wait_for(ended(updater), what="the refusal")
    assert updater.report is not None
    assert (updater.report.state, updater.report.message) == ("refused", refusal(NEW))
    assert "install" not in rauc.verbs()


def test_the_permit_names_one_version_and_is_removed(tmp_path: Path) -> None:
    floor = Floor(tmp_path)
    assert floor.permitted() is None
    floor.permit(MID)
    assert (tmp_path / PERMIT).read_text() == MID + "\n"
    assert floor.permitted() == MID
    floor.end_permit()
    assert not (tmp_path / PERMIT).exists()
    floor.end_permit()  # gone already: nothing to say


async def test_a_running_version_that_cannot_be_ordered_writes_no_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    updater, _ = make(tmp_path, FakeRauc(tmp_path), version="dev-build")
    await updater.start()
    assert not floor_file(tmp_path).exists()
    assert any(
        r.getMessage() == "the running version is not one updates can be ordered by"
        for r in caplog.records
    )
