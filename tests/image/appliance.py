"""The appliance image under test: built when stale, copied, written to with mtools, booted.

Shared by the boot tests (tests/image/test_boot.py) and the check of the Raspberry Pi's boot
files (tests/image/test_pi_files.py). Nothing here mounts anything: the FAT boot partition is
read and written inside the disk image with mtools, at the offset the partition table gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
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
    """The names in the FAT boot partition's top folder."""
    listing = _mtools("mdir", "-b", "-i", _fat(disk), "::/").stdout.decode()
    return sorted(line.rsplit("/", 1)[-1] for line in listing.splitlines() if line.strip())


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


# -- the guest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plug:
    """A device qemu adds once the console shows `after`: `command` for its monitor (HMP) on
    the unix socket `monitor` (the guest's argv must open it there)."""

    after: str
    command: str
    monitor: Path


class Guest:
    """qemu booting a disk image, its serial console in a file; stop() always ends it."""

    def __init__(self, argv: list[str], serial: Path, plug: Plug | None = None):
        self.argv = argv
        self.serial = serial
        self.plug = plug
        self.plugged = ""  # what qemu's monitor answered the plug's command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if self.plug is not None:
            threading.Thread(target=self._plug, args=(self.proc, self.plug), daemon=True).start()

    def _plug(self, proc: subprocess.Popen[bytes], plug: Plug) -> None:
        while plug.after not in self.console():
            if proc.poll() is not None:
                return
            time.sleep(0.2)
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.settimeout(30)
            monitor.connect(str(plug.monitor))
            monitor.recv(4096)  # the banner and prompt
            monitor.sendall(plug.command.encode() + b"\n")
            answer = b""
            while b"(qemu)" not in answer.split(plug.command.encode())[-1]:
                answer += monitor.recv(4096)
        self.plugged = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", answer.decode(errors="replace"))

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


# -- the guest's network and the relay in front of it ------------------------------------------

RELAY_ADDRESS = "10.0.2.100"
RELAY_IN_GUEST = f"{RELAY_ADDRESS}:8000"
SIM_IN_GUEST = "10.0.2.101:8080"
# Where the emulated battery-backed clock starts: years behind.
WRONG_CLOCK = "2020-01-01T00:00:00"
# When the card says it was built (systemd starts the clock no earlier): a box flashed long ago.
BUILT_AT = "20250101000000"


@dataclass(frozen=True)
class Ports:
    status: int  # host port forwarded to the guest's status page
    tls: int  # nginx, TLS
    plain: int  # nginx, plain http
    sim: int  # the FPVTrackside simulator


def netdev(ports: Ports) -> str:
    forward = "cmd:socat STDIO TCP:127.0.0.1:{}"
    return ",".join(
        [
            "user,id=net0,restrict=on",
            f"hostfwd=tcp:127.0.0.1:{ports.status}-:80",
            f"guestfwd=tcp:{RELAY_IN_GUEST}-{forward.format(ports.tls)}",
            f"guestfwd=tcp:{RELAY_ADDRESS}:80-{forward.format(ports.plain)}",
            f"guestfwd=tcp:{SIM_IN_GUEST}-{forward.format(ports.sim)}",
        ]
    )


COMMON = ["-accel", "tcg", "-display", "none", "-monitor", "none", "-rtc", f"base={WRONG_CLOCK}"]


def amd64_guest(disk: Path, serial: Path, ports: Ports) -> Guest:
    """A PC booting the image from a USB stick, with UEFI."""
    for tool in ("qemu-system-x86_64", "socat"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    need(OVMF.is_file(), f"{OVMF} is missing (apt-get install ovmf): ./scripts/test installs it")
    argv = [
        "qemu-system-x86_64",
        *COMMON,
        # One CPU: with two, TCG's threads now and then livelocked the guest kernel as it
        # patched its own code (both CPUs stuck at a static-branch site in getrandom right
        # after "crng init done", soft lockups for good), a fault of the emulator.
        "-machine", "q35", "-smp", "1", "-m", "1024",
        "-bios", str(OVMF),
        "-drive", f"file={disk},format=raw,if=virtio",
        "-netdev", netdev(ports),
        "-device", "virtio-net-pci,netdev=net0",
        # A hardware watchdog for systemd's RuntimeWatchdogSec to feed.
        "-device", "i6300esb",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    return Guest(argv, serial)


# The Raspberry Pi 3 Model B's device tree, as the firmware would choose it.
PI3_DTB = "bcm2837-rpi-3-b.dtb"


def prepare_pi_card(disk: Path) -> Path:
    """Make the card ready for qemu's emulated Raspberry Pi 3, once (its slots' states are kept
    from boot to boot): what config.txt starts (U-Boot) and the Pi 3's device tree copied out
    into a folder for qemu, which stands in for the GPU firmware; the watchdog's driver kept
    unloaded; the card a power of two in size. Returns the folder."""
    boot = disk.parent / "boot"
    boot.mkdir()
    config = fat_get(disk, "config.txt").decode()
    kernel = re.search(r"^kernel=(\S+)$", config, re.M)
    assert kernel is not None, config
    for name in (kernel.group(1), PI3_DTB):
        (boot / name).write_bytes(fat_get(disk, name))
    (boot / "kernel").write_text(kernel.group(1))
    # qemu's emulated watchdog resets the board the moment the driver arms it, where the real
    # one waits for its timeout: on the emulated board only, the driver stays unloaded, through
    # the boot script's place for more kernel options (pitlink-slots keeps it when it writes).
    # (tests/image/test_pi_files.py checks that the card enables it on every board.)
    states = fat_get(disk, "pitlink-boot.txt") + b"pitlink_args=modprobe.blacklist=bcm2835_wdt\n"
    (boot / "pitlink-boot.txt").write_bytes(states)
    fat_put(disk, boot / "pitlink-boot.txt", "pitlink-boot.txt")
    # qemu's SD card must be a power of two in size, as real cards nearly are.
    os.truncate(disk, 1 << (disk.stat().st_size - 1).bit_length())
    return boot


def pi_guest(disk: Path, boot: Path, serial: Path, ports: Ports) -> Guest:
    """The card (made ready by prepare_pi_card) in qemu's emulated Raspberry Pi 3: U-Boot, which
    runs the card's boot.scr, which starts a slot's kernel, with the Pi 3's device tree as the
    firmware would pass it, the card as its SD card, and a USB network adapter on its USB
    controller.

    Without its watchdog's driver the emulated Pi cannot restart itself: Linux ends with
    "reboot: Restarting system" and the board stays there (a real Pi resets). Whoever restarts
    it (tests/image/updating.py's Box) watches for that line."""
    for tool in ("qemu-system-aarch64", "socat"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    # qemu's monitor on a socket, to plug the network adapter in (below).
    monitor = disk.parent / "monitor.sock"
    monitor.unlink(missing_ok=True)
    common = list(COMMON)
    common[common.index("-monitor") + 1] = f"unix:{monitor},server=on,wait=off"
    argv = [
        "qemu-system-aarch64",
        *common,
        "-machine", "raspi3b",
        # qemu stands in for the GPU firmware: it loads what config.txt names, and the device
        # tree, and passes the latter's address as the firmware does.
        "-kernel", str(boot / (boot / "kernel").read_text()),
        "-dtb", str(boot / PI3_DTB),
        "-drive", f"file={disk},format=raw,if=sd",
        "-netdev", netdev(ports),
        # The first serial port is the PL011 (Bluetooth's on a Pi 3), the second the mini UART
        # on the GPIO header: U-Boot's console, and the kernel's console=ttyS1.
        "-serial", "null", "-serial", f"file:{serial}",
    ]  # fmt: skip
    # The Pi 3's own Ethernet is a chip on its USB bus, which qemu does not model; a USB network
    # adapter is what a Pi 3 A+ or Zero 2 W would use. It is plugged in once U-Boot has handed
    # over to the kernel: U-Boot scans the USB bus at start and, after that, qemu's model of
    # the Pi's USB controller never shows Linux a device that was there all along ("Not
    # connected"), where a real Pi's controller is reset by Linux and finds it.
    plug = Plug("Starting kernel", "device_add usb-net,netdev=net0,id=usbnet", monitor)
    return Guest(argv, serial, plug)


def arm64_guest(disk: Path, serial: Path, ports: Ports) -> Guest:
    """A copy of the Pi's card made ready and started once (see pi_guest)."""
    return pi_guest(disk, prepare_pi_card(disk), serial, ports)


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
