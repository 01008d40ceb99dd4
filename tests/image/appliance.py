"""The appliance image under test: built when stale, copied, written to with mtools; and the
relay behind TLS that a booted copy links to (the qemu that boots it: tests/image/guests.py).

Shared by the boot and update tests and the checks of the boot files. Nothing here mounts
anything: the FAT boot partition is read and written inside the disk image with mtools, at the
offset the partition table gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.needs import need
from pitlink_testkit.nginx import nginx_config, start_nginx, stop_nginx
from pitlink_testkit.system import System
from pitlink_testkit.tls import RelayCA, make_ca
from pitlink_testkit.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
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


@dataclass(frozen=True)
class SigningKey:
    key: Path
    cert: Path


def signing_key(folder: Path) -> SigningKey:
    """An update signing key and its self-signed certificate in `folder`, made if missing."""
    key = SigningKey(folder / "key.pem", folder / "cert.pem")
    if not (key.key.is_file() and key.cert.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "36500", "-subj", f"/O=Pitlink tests/CN={folder.name}",
             "-keyout", str(key.key), "-out", str(key.cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    return key


# The key the test images trust, made by the tests (gitignored, kept between runs with the image).
TEST_KEY_DIR = REPO / "build" / "test-keys"


def built_image(arch: str) -> Path:
    """dist/pitlink-<arch>.img, built now unless it is newer than everything it is made from
    (and than the test signing key it trusts)."""
    image = image_path(arch)
    key = signing_key(TEST_KEY_DIR)
    newest = max(newest_input(), key.cert.stat().st_mtime)
    if image.is_file() and image.stat().st_mtime > newest:
        return image
    need(os.geteuid() == 0, f"building the image needs root: sudo ./scripts/build-image {arch}")
    started = time.monotonic()
    # The compressed copy is for people; the tests read the raw image.
    done = subprocess.run(
        [
            str(REPO / "scripts" / "build-image"),
            arch,
            "--no-compress",
            "--signing-key",
            str(key.key),
            "--signing-cert",
            str(key.cert),
        ],
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
    """The names in the FAT boot partition's top folder (a folder's with a `/` after it)."""
    listing = _mtools("mdir", "-b", "-i", _fat(disk), "::/").stdout.decode()
    return sorted(line.removeprefix("::/") for line in listing.splitlines() if line.strip())


# -- the root slots (pitlink-slots, on a folder standing for the boot partition) --------------

SLOTS_SCRIPT = REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink" / "pitlink-slots"
# Questions pitlink-slots must refuse, and what it says: the boot partition stays as it was.
WRONG_SLOT_QUESTIONS = [
    (["get-state", "C"], "no slot named 'C'"),
    (["set-state", "A", "maybe"], "good or bad"),
    (["set-primary", "../../etc"], "no slot named"),
    (["frobnicate"], "usage"),
]


def run_slots(esp: Path, *args: str, booted: str = "A") -> subprocess.CompletedProcess[str]:
    """pitlink-slots with the boot partition at `esp` and `rauc.slot=<booted>` on the kernel's
    command line (a file beside it)."""
    cmdline = esp.parent / "cmdline"
    cmdline.write_text(f"root=PARTUUID=x ro rauc.slot={booted} quiet\n")
    env = {**os.environ, "PITLINK_ESP": str(esp), "PITLINK_CMDLINE": str(cmdline)}
    return subprocess.run(
        ["bash", str(SLOTS_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )


def slots_out(esp: Path, *args: str, booted: str = "A") -> str:
    """What pitlink-slots says, which must succeed."""
    done = run_slots(esp, *args, booted=booted)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def check_fresh_image(esp: Path) -> None:
    """What pitlink-slots says of a boot partition as flashed, whatever the boot loader."""
    assert slots_out(esp, "get-primary") == "A"
    assert slots_out(esp, "get-state", "A") == "good"
    assert slots_out(esp, "get-state", "B") == "bad"
    assert slots_out(esp, "booted") == "A"
    assert run_slots(esp, "on-trial").returncode == 1  # A was never on trial


def console_line(argv: list[str], serial: Path, prefix: str, *, timeout: float = 180) -> str:
    """Run qemu (argv, its console written to `serial`) until a console line starts with
    `prefix`, then stop it: the rest of that line."""
    serial.unlink(missing_ok=True)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = ""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = serial.read_bytes().decode(errors="replace") if serial.exists() else ""
            for line in text.splitlines():
                if prefix in line:
                    return line.split(prefix, 1)[1]
            assert proc.poll() is None, text[-2000:]
            time.sleep(0.2)
        raise AssertionError(f"no {prefix!r} on the console: {text[-2000:]}")
    finally:
        proc.kill()
        proc.wait()


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


# -- the guest's network and the relay in front of it ------------------------------------------

RELAY_ADDRESS = "10.0.2.100"
RELAY_IN_GUEST = f"{RELAY_ADDRESS}:8000"
SIM_IN_GUEST = "10.0.2.101:8080"
# Where the emulated battery-backed clock starts: years behind.
WRONG_CLOCK = "2020-01-01T00:00:00"
# When the card says it was built (systemd starts the clock no earlier): a box flashed long ago.
BUILT_AT = "20250101000000"


@dataclass
class Front:
    """The relay behind nginx with TLS, and the CA that signed nginx's certificate."""

    system: System
    ca: RelayCA
    tls: int
    plain: int
    not_before: float  # the certificate's first valid second
    conf: Path  # nginx's configuration
    nginx: asyncio.subprocess.Process | None = None

    async def take_away(self) -> None:
        """nginx stopped: the relay out of the boxes' reach (both its ports refuse)."""
        if self.nginx is not None:
            await stop_nginx(self.nginx)
            self.nginx = None

    async def bring_back(self) -> None:
        """nginx started again on the same ports, and answering."""
        if self.nginx is None:
            self.nginx = await start_nginx(self.conf)
        await wait_for(self.answers, what="nginx in front of the relay")

    async def answers(self) -> bool:
        try:
            # Plain HTTP answers only the connectivity check: everything else is a redirect to
            # https, as deploy/nginx-pitlink.conf has it.
            got = await self.system.http.fetch(
                f"http://127.0.0.1:{self.plain}/generate_204",
                raise_error=False,
                follow_redirects=False,
            )
        except OSError:
            return False
        return got.code == 204


@contextlib.asynccontextmanager
async def relay_front(
    tmp_path: Path, sim: Simulator, pits_id: str, **relay: Any
) -> AsyncIterator[Front]:
    """The relay (with these settings) behind nginx with TLS, its certificate valid from now:
    made after the image, so the box's clock (the image's build time when it starts) is
    before the certificate's first second."""
    s = System(tmp_path, sim, pits_id=pits_id)
    await s.start_relay(**relay)
    not_before = time.time() - 1
    ca = make_ca(
        tmp_path / "ca", names=("relay.pitlink.test",), ips=(RELAY_ADDRESS,), not_before=not_before
    )
    tls, plain = free_port(), free_port()
    conf = nginx_config(tmp_path, upstreams=[s.relay_port], plain=plain, tls=tls, certificate=ca)
    front = Front(system=s, ca=ca, tls=tls, plain=plain, not_before=not_before, conf=conf)
    try:
        await front.bring_back()
        yield front
    finally:
        await s.close()
        await front.take_away()


def prepare_disk(image: Path, disk: Path, conf: bytes, ca: Path, *, selftest: bool = True) -> None:
    """A copy of the image with this pitlink.conf, the relay's CA, and the self-test armed
    (unless `selftest` is false)."""
    copy_disk(image, disk)
    set_build_time(disk, BUILT_AT)
    files = disk.parent / "boot-files"
    files.mkdir()
    (files / "pitlink.conf").write_bytes(conf)
    shutil.copy(ca, files / "relay-ca.pem")
    names = ["pitlink.conf", "relay-ca.pem"]
    if selftest:
        (files / "pitlink-selftest-kill").write_bytes(b"")
        names.append("pitlink-selftest-kill")
    for name in names:
        fat_put(disk, files / name, name)
