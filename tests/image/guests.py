"""qemu booting a copy of the image (tests/image/appliance.py makes it): the emulated PC (UEFI)
and Raspberry Pi 3 (U-Boot), their serial consoles, their network (only what the test forwards)
and their monitor, through which a device is plugged in while the box runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import RELAY_ADDRESS, RELAY_IN_GUEST, SIM_IN_GUEST, WRONG_CLOCK, fat_get, fat_put

from pitlink_testkit.needs import need

# UEFI firmware for qemu's PC, from Debian's ovmf.
OVMF = Path("/usr/share/ovmf/OVMF.fd")


@dataclass(frozen=True)
class Plug:
    """A device qemu adds once the console shows `after`: `command` for its monitor (HMP)."""

    after: str
    command: str


class Guest:
    """qemu booting a disk image, its serial console in a file; stop() always ends it."""

    def __init__(
        self,
        argv: list[str],
        serial: Path,
        *,
        monitor: Path | None = None,
        plug: Plug | None = None,
    ):
        self.argv = argv
        self.serial = serial
        self.monitor_socket = monitor  # qemu's monitor, where argv opens it (with_monitor)
        self.plug = plug
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
        said = self.monitor(plug.command)
        if said:  # qemu says nothing when the device is added: this is why it was not
            print(f"qemu refused {plug.command!r}: {said}", file=sys.stderr)

    def monitor(self, command: str) -> str:
        """`command` given to qemu's monitor (HMP); what it answered."""
        assert self.monitor_socket is not None, "this guest's qemu has no monitor socket"
        with socket.socket(socket.AF_UNIX) as monitor:
            monitor.settimeout(30)
            monitor.connect(str(self.monitor_socket))
            answer = b""
            while b"(qemu)" not in answer:  # the banner and prompt
                answer += monitor.recv(4096)
            monitor.sendall(command.encode() + b"\n")
            answer = b""
            while "(qemu)" not in plain(answer.decode(errors="replace")).split(command)[-1]:
                answer += monitor.recv(4096)
        said = plain(answer.decode(errors="replace")).split(command, 1)[-1]
        return said.replace("(qemu)", "").strip()

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


COMMON = ["-accel", "tcg", "-display", "none", "-rtc", f"base={WRONG_CLOCK}"]


def with_monitor(disk: Path) -> tuple[list[str], Path]:
    """qemu's monitor on a unix socket beside the disk: the arguments, and the socket (for
    Guest.monitor, through which devices are plugged in while the box runs)."""
    monitor = disk.parent / "monitor.sock"
    monitor.unlink(missing_ok=True)
    return ["-monitor", f"unix:{monitor},server=on,wait=off"], monitor


def amd64_guest(disk: Path, serial: Path, ports: Ports) -> Guest:
    """A PC booting the image from a USB stick, with UEFI."""
    for tool in ("qemu-system-x86_64", "socat"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    need(OVMF.is_file(), f"{OVMF} is missing (apt-get install ovmf): ./scripts/test installs it")
    monitor_args, monitor = with_monitor(disk)
    argv = [
        "qemu-system-x86_64",
        *COMMON,
        *monitor_args,
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
        # A USB 3 controller, for a USB stick plugged in while the box runs.
        "-device", "qemu-xhci,id=xhci",
        "-serial", f"file:{serial}",
    ]  # fmt: skip
    return Guest(argv, serial, monitor=monitor)


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
    monitor_args, monitor = with_monitor(disk)
    argv = [
        "qemu-system-aarch64",
        *COMMON,
        *monitor_args,
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
    plug = Plug("Starting kernel", "device_add usb-net,netdev=net0,id=usbnet")
    return Guest(argv, serial, monitor=monitor, plug=plug)


def arm64_guest(disk: Path, serial: Path, ports: Ports) -> Guest:
    """A copy of the Pi's card made ready and started once (see pi_guest)."""
    return pi_guest(disk, prepare_pi_card(disk), serial, ports)
