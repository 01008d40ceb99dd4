"""The appliance image under test: built when stale, copied, written to with mtools, booted.

Shared by the boot tests (tests/image/test_boot.py) and the check of the Raspberry Pi's boot
files (tests/image/test_pi_files.py). Nothing here mounts anything: the FAT boot partition is
read and written inside the disk image with mtools, at the offset the partition table gives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# UEFI firmware for qemu's PC, from Debian's ovmf.
OVMF = Path("/usr/share/ovmf/OVMF.fd")
# What the image is made from: a change to any of these makes the tests build it again.
INPUTS = [
    "image",
    "scripts/build-image",
    "scripts/build-agent",
    "scripts/frozen_agent.py",
    "scripts/lib.sh",
    "pits_appliance",
    "wire",
    "setup.cfg",
]
# Seconds each image took to build, when this run built it (for the figures the tests print).
BUILT: dict[str, float] = {}
# Under software emulation: amd64 builds in 3 to 8 minutes here; arm64 runs its packages'
# scripts and PyInstaller through qemu-user, several times slower.
BUILD_TIMEOUT = {"amd64": 900, "arm64": 3000}


def need(ok: bool, why: str) -> None:
    """Skip where a tool is missing, but fail in CI, where ./scripts/test installs them."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def newest_input() -> float:
    newest = 0.0
    for name in INPUTS:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if "__pycache__" not in f.parts:
                newest = max(newest, f.stat().st_mtime)
    return newest


def image_path(arch: str) -> Path:
    return REPO / "dist" / f"pitlink-{arch}.img"


def built_image(arch: str) -> Path:
    """dist/pitlink-<arch>.img, built now unless it is newer than everything it is made from."""
    image = image_path(arch)
    if image.is_file() and image.stat().st_mtime > newest_input():
        return image
    need(os.geteuid() == 0, f"building the image needs root: sudo ./scripts/build-image {arch}")
    started = time.monotonic()
    # The compressed copy is for people; the tests read the raw image.
    done = subprocess.run(
        [str(REPO / "scripts" / "build-image"), arch, "--no-compress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT[arch],
    )
    if done.returncode != 0:
        pytest.fail(f"build-image {arch} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    BUILT[arch] = time.monotonic() - started
    return image


# -- the disk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str
    uuid: str  # the PARTUUID the kernel and /etc/fstab name it by (lower case)
    bootable: bool


@dataclass(frozen=True)
class Table:
    label: str  # "gpt" or "dos"
    id: str
    partitions: list[Partition]


def partition_table(disk: Path) -> Table:
    """The disk's partition table as sfdisk reads it, with each partition's PARTUUID."""
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    label = table["label"]
    disk_id = str(table["id"]).lower()
    parts = []
    for n, p in enumerate(table["partitions"], start=1):
        if label == "dos":
            # An MBR partition's PARTUUID is the disk id (8 hex digits) and its number.
            uuid = f"{disk_id.removeprefix('0x'):0>8}-{n:02d}"
        else:
            uuid = str(p["uuid"]).lower()
        parts.append(
            Partition(
                number=n,
                start=int(p["start"]) * sector,
                size=int(p["size"]) * sector,
                type=str(p["type"]),
                uuid=uuid,
                bootable=bool(p.get("bootable", False)),
            )
        )
    return Table(label=label, id=disk_id, partitions=parts)


def _mtools(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(args),
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
        capture_output=True,
        timeout=60,
    )


def _fat(disk: Path) -> str:
    return f"{disk}@@{partition_table(disk).partitions[0].start}"


def fat_put(disk: Path, source: Path, name: str) -> None:
    """Copy a file onto the FAT boot partition inside the disk image."""
    _mtools("mcopy", "-o", "-i", _fat(disk), str(source), f"::{name}")


def fat_get(disk: Path, name: str) -> bytes:
    """A file from the FAT boot partition inside the disk image."""
    return _mtools("mtype", "-i", _fat(disk), f"::{name}").stdout


def fat_names(disk: Path) -> list[str]:
    """The names in the FAT boot partition's top folder."""
    listing = _mtools("mdir", "-b", "-i", _fat(disk), "::/").stdout.decode()
    return sorted(line.rsplit("/", 1)[-1] for line in listing.splitlines() if line.strip())


def copy_disk(image: Path, disk: Path, *, size: int | None = None) -> None:
    """A copy of the image to boot (sparse: the copy takes a second), grown to `size` bytes."""
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, timeout=120)
    if size is not None and size > disk.stat().st_size:
        os.truncate(disk, size)


def set_build_time(disk: Path, when: str) -> None:
    """Make the card look built at `when` (YYYYMMDDhhmmss, UTC): the mtime of the root
    filesystem's /usr/lib/clock-epoch, the earliest time systemd lets the clock start at.

    A freshly built image starts its clock at "a minute ago", which is close enough to the truth
    to hide a wrong clock; a box in the field was flashed months before. debugfs writes into the
    copy's partition in place (e2fsprogs reads `file?offset=N`), nothing is mounted.
    """
    root = partition_table(disk).partitions[1]
    done = subprocess.run(
        ["debugfs", "-w", "-R", f"set_inode_field /usr/lib/clock-epoch mtime {when}",
         f"{disk}?offset={root.start}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # debugfs exits 0 whatever its command did; it says what went wrong after its banner line.
    complaints = [line for line in done.stderr.splitlines()[1:] if line.strip()]
    assert done.returncode == 0 and not complaints, done.stderr


# -- the guest ---------------------------------------------------------------------------------


class Guest:
    """qemu booting a disk image, its serial console in a file; stop() always ends it."""

    def __init__(self, argv: list[str], serial: Path):
        self.argv = argv
        self.serial = serial
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def console(self) -> str:
        try:
            return self.serial.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            raise AssertionError(f"qemu exited with {self.proc.returncode}: {out[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def plain(text: str) -> str:
    """The serial console without its colour codes ("[\\x1b[0;32m  OK  \\x1b[0m]" -> "[  OK  ]")."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def console_tail(text: str, lines: int = 80) -> str:
    """The end of the serial console, without its colour codes."""
    return "\n".join(plain(text).splitlines()[-lines:])


def reported(console: str, key: str) -> str:
    """What the self-test hook printed on the console for `key` (e.g. "mount /var")."""
    found = re.search(rf"pitlink-selftest: {re.escape(key)} ([^\r\n]*)", console)
    assert found is not None, f"no {key!r} line from the self-test hook:\n{console_tail(console)}"
    return found.group(1).strip()


def check_inside(console: str, pits_id: str, *, watchdog: str = "active") -> None:
    """What the box looked like from inside, as the self-test hook reported it."""
    # Power cuts: the root filesystem read-only, everything that changes in RAM, the token's
    # partition the only one written, the settings partition read-only.
    assert reported(console, "mount /").startswith("ext4 ro,")
    assert reported(console, "mount /var").startswith("tmpfs ")
    assert reported(console, "mount /tmp").startswith("tmpfs ")
    assert reported(console, "mount /var/lib/pitlink").startswith("ext4 rw,")
    assert reported(console, "mount /boot/firmware").startswith("vfat ro,")
    assert reported(console, "journal in") == "/run/log/journal"
    assert reported(console, "swap devices") == "0"
    timers = reported(console, "timers")
    for unwanted in ("apt-daily", "dpkg-db-backup", "e2scrub", "fstrim", "man-db"):
        assert unwanted not in timers, timers
    assert reported(console, "failed units") == "[]", console_tail(console)
    # systemd feeds the hardware watchdog (where the emulated board has one that works).
    assert reported(console, "watchdog") == watchdog
    # The mDNS name: pitlink-<first 8 characters of the pits id>.local.
    assert f"Host name is pitlink-{pits_id}.local" in reported(console, "avahi")
    # No unit failed or waited in vain on the way up.
    for mark in ("[FAILED]", "[DEPEND]", "[ TIME ]"):
        assert mark not in plain(console), console_tail(console)
