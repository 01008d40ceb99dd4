"""A whole update on the Raspberry Pi image, booted through: dist/pitlink-arm64.img in qemu's
emulated Raspberry Pi 3 (U-Boot, the card's boot.scr, slot A's kernel; see guests.pi_guest),
linked to a real relay behind TLS, updated from bundles in an update folder, with the box's own
RAUC, the boot script's trial boot and its health check.

One box, one story:
1. It boots slot A and links to the relay.
2. It finds a new version (9.0.0) in its update folder: RAUC checks it and writes it into slot
   B (the install hook copies B's kernel to b/ on the boot partition, where nothing was
   before), the box tells the relay it is installed. The organiser presses Install now on the
   status page; the box restarts; the boot script uses up B's trial and starts b/vmlinuz with
   B's root; Linux's own command line says slot B; the box links from B running 9.0.0, its
   health check marks B good, and its status page says so.
3. The box is switched off, and 9.1.0 put in the folder, a version whose agent runs and
   answers on its status page but never links (it dials a relay that is not there, on a
   network with a gateway: see updating.box_conf's `routed`). Switched
   on, the box boots B, installs 9.1.0 into A; Install now; A's trial boot; the health check
   gives up, the box restarts, the boot script finds A's trial spent and starts B again; the
   box links from B and tells the relay that 9.1.0 was rolled back.

How the bundles reach the box: a bundle the agent finds in one of its update folders (the
boot partition, a USB stick) goes through the same steps as one it downloaded from the relay
(RAUC's checks, the install, the report, Install now, the trial). Here the folder is one on
the state partition (`UPDATE_DIR`), written while the box is off. The other ways are too slow or too small on the emulated Pi: qemu's Pi
has one USB port and puts a USB 1.1 hub on it for what is plugged in, so the agent's TLS
download through the network adapter runs at 50 to 130 KB/s, over 20 minutes for a bundle
of this size, and the 256 MiB boot partition has not the room for the bundle beside two
slots' kernels. The download through the relay is the PC's story
(tests/image/test_field_update.py), with the same agent. The emulated Pi cannot reset itself
(see guests.pi_guest): updating.Box starts it again.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from appliance import (
    built_image,
    fat_get,
    fat_names,
    partition_table,
    prepare_disk,
    relay_front,
)
from guests import (
    Ports,
    console_tail,
    pi_guest,
    plain,
    prepare_pi_card,
)
from updating import Box, Updates, box_conf, image_bundles, image_version, state_put

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port

pytestmark = [pytest.mark.image]

PITS_ID = "club-9"
STATUS_PIN = "864200"
# The trial boot, short for the test (the defaults are 600 s and 60 s), long enough for the
# emulated Pi to link from the new slot (a few seconds after its health check starts, alone).
TRIAL = 100
HEALTHY = 10
# Seconds between the box's looks in its update folders (the default is 60), and the folder.
SCAN = 5
FOLDER = "bundles"  # on the state partition, which the box mounts at /var/lib/pitlink

BOOT_TIMEOUT = 900.0
# Finding, checking and writing a bundle of about 190 MB into a slot, inside the emulated Pi.
INSTALL_TIMEOUT = 1200.0


@pytest.mark.timeout(4500)
async def test_a_pi_installs_into_slot_b_boots_its_kernel_and_rolls_back_a_slot_that_never_links(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    image = built_image("arm64")
    version_a = image_version(image)
    made = time.monotonic()
    bundles = await asyncio.to_thread(
        image_bundles, image, tmp_path, "arm64",
        {"good": ("9.0.0", None), "bad": ("9.1.0", "never-links")},
    )  # fmt: skip
    made = time.monotonic() - made

    async with relay_front(tmp_path, sim, PITS_ID) as front:
        s = front.system
        ports = Ports(
            status=free_port(), tls=front.tls, plain=front.plain, sim=urlsplit(sim.url).port or 0
        )
        u = Updates(s, PITS_ID, f"http://127.0.0.1:{ports.status}", STATUS_PIN)
        token = s.keys.issue(sub=PITS_ID, role="pits", ttl=7200)
        conf = box_conf(
            token, pin=STATUS_PIN, trial=TRIAL, healthy=HEALTHY, scan=SCAN,
            update_dir=f"/var/lib/pitlink/{FOLDER}", routed=True,
        )  # fmt: skip
        disk = tmp_path / "disk.img"
        await asyncio.to_thread(prepare_disk, image, disk, conf, front.ca.ca, selftest=False)
        # As flashed, only slot A has a kernel on the boot partition.
        assert "a/" in fat_names(disk) and "b/" not in fat_names(disk), fat_names(disk)
        boot = await asyncio.to_thread(prepare_pi_card, disk)
        await asyncio.to_thread(state_put, disk, FOLDER, bundles["good"])
        roots = {"A": partition_table(disk).partitions[1].uuid}
        roots["B"] = partition_table(disk).partitions[2].uuid
        pi = Box(disk, tmp_path, lambda serial: pi_guest(disk, boot, serial, ports))
        booting = BOOT_TIMEOUT + TRIAL + 240

        times: dict[str, float] = {}
        watcher: asyncio.Task[None] | None = None
        try:
            started = time.monotonic()
            pi.start()
            watcher = asyncio.ensure_future(u.keep_on(pi))
            first = await u.linked("A", version_a, "the Pi on slot A, linked", timeout=booting)
            times["boot"] = time.monotonic() - started
            assert first["update"] is None
            assert started_slot(pi.console(), "A", "a", roots["A"], "A good, B bad")

            # -- a new version in the update folder, into slot B -------------------------------
            started = time.monotonic()
            await u.installed("9.0.0", "B", timeout=INSTALL_TIMEOUT)
            times["install"] = time.monotonic() - started
            status = await u.status_json()
            assert status is not None
            assert row(status, "update")["title"] == "Version 9.0.0 is ready", status
            before = u.connection()
            started = time.monotonic()
            await u.install_now()
            await u.linked(
                "B", "9.0.0", "the Pi on slot B with the new version", since=before,
                timeout=booting,
            )  # fmt: skip
            # U-Boot used up B's trial and started B's own kernel (b/ was written by the
            # install) with B's root; Linux's command line names slot B.
            console = pi.console()
            assert started_slot(console, "B", "b", roots["B"], "A good, B tried"), console_tail(
                console
            )
            assert re.search(
                rf"Kernel command line: root=PARTUUID={roots['B']} .*rauc\.slot=B", plain(console)
            ), console_tail(console)
            report = await u.update_state("9.0.0", "good", "rolled-back", timeout=TRIAL + 120)
            assert report["state"] == "good", report
            times["restart into B, marked good"] = time.monotonic() - started
            assert "slot B is healthy" in pi.console(), console_tail(pi.console())
            # What the box itself says, on its status page.
            status = await u.status_json()
            assert status is not None
            assert row(status, "update")["title"] == "Version 9.0.0 in slot B", status
            assert row(status, "software")["text"].startswith("Pitlink 9.0.0,"), status

            # -- a version whose agent never links, into slot A: tried once, then back to B ----
            before = u.connection()
            pi.power_cut(
                lambda: state_put(disk, FOLDER, bundles["bad"], remove=(bundles["good"].name,))
            )
            await u.linked("B", "9.0.0", "the Pi on slot B again", since=before, timeout=booting)
            started = time.monotonic()
            await u.installed("9.1.0", "A", timeout=INSTALL_TIMEOUT)
            times["second install"] = time.monotonic() - started
            boots = len(pi.boots)
            before = u.connection()
            started = time.monotonic()
            await u.install_now()
            row_b = await u.linked(
                "B", "9.0.0", "the Pi back on slot B after the slot that never linked",
                since=before, timeout=2 * booting,
            )  # fmt: skip
            report = await u.update_state("9.1.0", "rolled-back", "good", timeout=120)
            assert report["state"] == "rolled-back", report
            times["rollback from the slot that never linked"] = time.monotonic() - started
            # Two boots: A on trial, never linked; then B.
            assert len(pi.boots) == boots + 2, len(pi.boots)
            trial, back = (boot.console() for boot in pi.boots[-2:])
            assert started_slot(trial, "A", "a", roots["A"], "A tried, B good"), console_tail(trial)
            assert "agent health: 503 (not linked to the relay)" in trial, console_tail(trial)
            assert "slot A did not become healthy" in trial, console_tail(trial)
            assert started_slot(back, "B", "b", roots["B"], "A tried, B good"), console_tail(back)
            assert row_b["slot"] == "B"
            status = await u.status_json()
            assert status is not None
            assert row(status, "update")["title"] == "Version 9.1.0 was rolled back", status
            with capsys.disabled():
                print(
                    f"\nupdates (arm64, emulated Pi 3): bundles made in {made:.0f} s "
                    f"({bundles['good'].stat().st_size / 1e6:.0f} MB); "
                    + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
                    + f"; {pi.restarts} restarts"
                )
        except BaseException:
            print(f"serial console (end):\n{console_tail(pi.console(), 150)}", file=sys.stderr)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            u.close()
            pi.stop()

    # The card afterwards: B is the slot to start and good; A's trial is spent; B's kernel on
    # the boot partition is the one the bundle brought.
    states = dict(
        line.split("=", 1)
        for line in fat_get(disk, "pitlink-boot.txt").decode().splitlines()
        if "=" in line
    )
    assert states["pitlink_B"] == "good", states
    assert states["pitlink_A"] in ("tried", "bad"), states
    assert fat_get(disk, "b/vmlinuz") == root_file(image, "/boot/vmlinuz")


def started_slot(console: str, slot: str, folder: str, root: str, states: str) -> bool:
    """The boot script said it starts `slot` from `folder`/vmlinuz with that root."""
    return (
        f"Pitlink: starting slot {slot} ({folder}/vmlinuz, root PARTUUID={root}; {states})"
        in plain(console)
    )


def row(status: dict[str, object], key: str) -> dict[str, str]:
    rows = status["rows"]
    assert isinstance(rows, list)
    found = [r for r in rows if r["key"] == key]
    assert len(found) == 1, rows
    return dict(found[0])


def root_file(image: Path, path: str) -> bytes:
    """A file from slot A's root filesystem in the image."""
    part = partition_table(image).partitions[1]
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={part.start}"],
        capture_output=True, timeout=120, check=True,
    ).stdout  # fmt: skip
