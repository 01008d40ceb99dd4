"""Updates in the field, end to end: the amd64 image under qemu (UEFI, software emulation)
updated through a real relay behind TLS, with RAUC, its two root slots and the trial boot.

One box, one story, in the order a box in the field could live it:
1. It boots slot A and links to the relay.
2. The relay offers a good bundle (a new version of the same root filesystem): the box
   downloads it over HTTPS with its own token, RAUC checks and writes it into slot B, the
   organiser presses Install now on the status page, the box boots B on trial, finds itself
   healthy, marks B good, and says so in its hello (slot B, the new version, "good").
3. A bundle signed with another key is refused, and neither slot is touched; the same bundle
   on a USB stick plugged into the running box is found there and refused the same way.
4. A bundle is being written into slot A when the power goes (qemu killed once it has
   written 256 MiB to the disk since the box said "installing": past the download, mid-slot):
   A's entry is bad, and the boot loader starts B again.
5. A bundle whose agent hangs (it starts and is never heard of again) is installed into A and
   booted on trial: the health check gives up, the box restarts, the boot loader finds the
   trial spent and starts B, and the box reports the rollback to the relay.

The bundles are made as tests/image/updating.py says. The health check's own cases (an agent
that exits, hangs, or runs and never links) are tests/image/test_health_script.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from appliance import (
    built_image,
    partition_table,
    prepare_disk,
    relay_front,
)
from guests import (
    Ports,
    amd64_guest,
    console_tail,
    plain,
)
from updating import Box, Updates, box_conf, image_bundles, image_version, usb_stick

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import wait_for

pytestmark = [pytest.mark.image]

PITS_ID = "club-7"
STATUS_PIN = "975310"  # set in pitlink.conf: tests/image/test_boot.py sees the box make one
# The trial boot, made short for the test (the defaults are 600 s and 60 s): the bad slot
# gives up after TRIAL seconds of its health check, a good one is good after HEALTHY.
TRIAL = 90
HEALTHY = 10
BOOT_TIMEOUT = 420.0
# Bytes written to the disk after the box says "installing", at which the power is cut: over
# the bundle's size (its download may still be reaching the disk), well under the root
# filesystem's (about 570 MiB).
CUT_AFTER = 256 << 20
# Downloading and installing a bundle of about 160 MB inside the emulated PC.
INSTALL_TIMEOUT = 900.0


@pytest.mark.timeout(3000)
async def test_a_box_updates_through_the_relay_rolls_back_a_bad_slot_and_survives_a_power_cut(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    image = built_image("amd64")
    version_a = image_version(image)
    made = time.monotonic()
    bundles = await asyncio.to_thread(
        image_bundles, image, tmp_path, "amd64",
        {"good": ("9.0.0", None), "bad": ("9.1.0", "hangs")},
    )  # fmt: skip
    made = time.monotonic() - made

    async with relay_front(tmp_path, sim, PITS_ID, bundle_dir=tmp_path / "bundles") as front:
        s = front.system
        ports = Ports(
            status=free_port(), tls=front.tls, plain=front.plain, sim=urlsplit(sim.url).port or 0
        )
        u = Updates(s, PITS_ID, f"http://127.0.0.1:{ports.status}", STATUS_PIN)
        ids = {
            name: await u.upload(bundles[name], version, "amd64")
            for name, version in (("good", "9.0.0"), ("bad", "9.1.0"), ("foreign", "9.0.5"))
        }
        token = s.keys.issue(sub=PITS_ID, role="pits", ttl=7200)
        conf = box_conf(token, pin=STATUS_PIN, trial=TRIAL, healthy=HEALTHY)
        disk = tmp_path / "disk.img"
        await asyncio.to_thread(prepare_disk, image, disk, conf, front.ca.ca, selftest=False)
        pc = Box(disk, tmp_path, lambda serial: amd64_guest(disk, serial, ports))
        booting = BOOT_TIMEOUT + TRIAL + 240

        times: dict[str, float] = {}
        watcher: asyncio.Task[None] | None = None
        try:
            started = time.monotonic()
            pc.start()
            watcher = asyncio.ensure_future(u.keep_on(pc))
            first = await u.linked("A", version_a, "the box on slot A, linked", timeout=booting)
            times["boot"] = time.monotonic() - started
            assert first["update"] is None

            # -- a good bundle, through the relay -------------------------------------------------
            started = time.monotonic()
            await u.offer(ids["good"])
            await u.installed("9.0.0", "B", timeout=INSTALL_TIMEOUT)
            times["download and install"] = time.monotonic() - started
            before = u.connection()
            started = time.monotonic()
            await u.install_now()
            row = await u.linked(
                "B", "9.0.0", "the box on slot B with the new version", since=before,
                timeout=booting,
            )  # fmt: skip
            report = await u.update_state("9.0.0", "good", "rolled-back", timeout=TRIAL + 120)
            assert report["state"] == "good", report
            assert report["version"] == "9.0.0"
            times["restart into B, marked good"] = time.monotonic() - started

            # -- a bundle signed with a key the box does not trust ----------------------------------
            await u.offer(ids["foreign"])
            report = await u.update_state(
                "9.0.5", "refused", "failed", "installed", timeout=INSTALL_TIMEOUT
            )
            assert report["state"] == "refused", report
            assert "signature" in report["message"].lower(), report

            # -- the same bundle on a USB stick, plugged in ----------------------------------------
            # udev mounts the stick read-only at /media/usb, the agent finds the bundle there
            # and hands it to RAUC, which refuses it as it did the download; the box says so to
            # the relay (a local bundle's version is "?" until RAUC has read it).
            stick = await asyncio.to_thread(usb_stick, bundles["foreign"], tmp_path / "stick.img")
            pc.plug_stick(stick, "stick")
            report = await u.update_state("?", "refused", "failed", timeout=INSTALL_TIMEOUT)
            assert report["state"] == "refused", report
            assert "signature" in report["message"].lower(), report

            # -- the power goes while a bundle is being written --------------------------------------
            # The cut comes once the PC has written CUT_AFTER bytes to its disk since the box
            # said "installing" (RAUC checking the signature, nothing written yet): more than
            # the whole downloaded bundle whose writing may still be under way, and less than
            # the root filesystem RAUC writes into slot A. So RAUC is cut mid-slot.
            await u.offer(ids["bad"])
            report = await u.update_state(
                "9.1.0", "installing", "installed", "failed", "refused", timeout=INSTALL_TIMEOUT
            )
            assert report["state"] == "installing", report
            installing = await asyncio.to_thread(pc.written)
            writing = time.monotonic()

            async def into_the_slot() -> bool:
                return await asyncio.to_thread(pc.written) - installing >= CUT_AFTER

            await wait_for(into_the_slot, timeout=INSTALL_TIMEOUT, interval=0.2, what="writes")
            cut_at = await asyncio.to_thread(pc.written) - installing
            times["installing until the cut"] = time.monotonic() - writing
            report = (u.box() or {}).get("update") or {}
            assert report.get("state") == "installing", report  # not finished: mid-write
            before = u.connection()
            entries: list[str] = []
            started = time.monotonic()
            pc.power_cut(lambda: entries.extend(boot_entries(disk)))
            # RAUC marked A bad before writing it; B, good, boots.
            assert entries == ["pitlink-a+0.conf", "pitlink-b.conf"], entries
            await u.linked(
                "B", "9.0.0", "the box back on slot B after the power cut", since=before,
                timeout=booting,
            )  # fmt: skip
            times["back after the power cut"] = time.monotonic() - started
            after_cut = plain(pc.guest.console())
            assert "rauc.slot=B" in after_cut and "rauc.slot=A" not in after_cut, after_cut[-3000:]

            # -- a bundle whose agent hangs: tried once, then back to B -----------------------------
            # The relay offered the bad bundle again when the box came back, and the box may be
            # downloading it: withdrawing makes the box report "failed" for 9.1.0, and that
            # report may reach the relay after the new offer is sent. So the new attempt's
            # state is read only once the box has said "offered" again (or, had it already
            # been writing the bundle, which a withdrawal does not stop, is still at it).
            await u.api("bundles/withdraw", {"pitsIds": [PITS_ID]})
            offered = u.reports("offered")
            await u.offer(ids["bad"])

            def taken() -> bool:
                report = (u.box() or {}).get("update") or {}
                going = report.get("state") in ("installing", "installed")
                return u.reports("offered") > offered or (
                    going and report.get("version") == "9.1.0"
                )

            await wait_for(taken, timeout=120, interval=0.5, what="the box to take the new offer")
            await u.installed("9.1.0", "A", timeout=INSTALL_TIMEOUT)
            before = u.connection()
            started = time.monotonic()
            await u.install_now()
            # Slot A on trial never links (its agent starts and is never heard of again:
            # systemd restarts it when its start times out); the health check gives up after
            # TRIAL seconds and restarts; the boot loader starts B again.
            row = await u.linked(
                "B", "9.0.0", "the box back on slot B after the bad slot", since=before,
                timeout=booting,
            )  # fmt: skip
            report = await u.update_state("9.1.0", "rolled-back", "good", timeout=120)
            assert report["state"] == "rolled-back", report
            assert report["version"] == "9.1.0"
            times["rollback from the hung agent's slot"] = time.monotonic() - started
            console = pc.console()
            assert "did not become healthy" in console, console_tail(console)
            assert row["slot"] == "B"
            with capsys.disabled():
                print(
                    f"\nupdates (amd64, TCG): bundles made in {made:.0f} s ("
                    f"{bundles['good'].stat().st_size / 1e6:.0f} MB); "
                    + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
                    + f"; {pc.restarts} restarts; cut {cut_at / 2**20:.0f} MiB into the"
                    " install"
                )
        except BaseException:
            print(f"serial console (end):\n{console_tail(pc.console(), 150)}", file=sys.stderr)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            u.close()
            pc.stop()


def boot_entries(disk: Path) -> list[str]:
    """The boot entries on the disk's boot partition (read with mtools while qemu is off)."""
    start = partition_table(disk).partitions[0].start
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{disk}@@{start}", "::/loader/entries"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    return sorted(line.rsplit("/", 1)[-1] for line in listing.splitlines() if line.strip())
