"""The appliance image, booted: dist/pitlink-amd64.img under qemu, against a real relay.

The image is built by ./scripts/build-image (once: reused while it is newer than every file it
is made from), copied, given a pitlink.conf with mtools (no mounting), and booted with
qemu-system-x86_64 in software emulation (TCG) with UEFI firmware (OVMF), as a PC would boot
it from a USB stick. The guest's network is qemu's user-mode network with restrict=on: it
reaches nothing but what the test forwards to it, namely

    guest 10.0.2.100:8000  ->  the relay on the host's loopback      (CLOUD_URL)
    guest 10.0.2.101:8080  ->  the FPVTrackside simulator, likewise   (FPVTRACKSIDE)
    host 127.0.0.1:<port>  ->  guest port 80, the status page

guestfwd starts `socat` for each connection the guest opens (its plain form forwards a single
connection for qemu's whole life, and the agent opens many).

The agent is killed once inside the guest, to see systemd bring it back: the image's
pitlink-selftest service (only active when the boot partition holds a file named
pitlink-selftest-kill) kills it with SIGKILL when the status page's "Pause" is pressed. Before
that it prints on the serial console what cannot be seen from outside: the mounts (read-only
root, RAM for the rest), the journal's place, swap, timers, failed units, the hardware
watchdog, the mDNS name, and the agent's memory use.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tornado.httpclient

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "dist" / "pitlink-amd64.img"
# What the image is made from: a change to any of these makes the test build it again.
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
OVMF = Path("/usr/share/ovmf/OVMF.fd")
PITS_ID = "club-42"
RELAY_IN_GUEST = "10.0.2.100:8000"
SIM_IN_GUEST = "10.0.2.101:8080"
# Seconds the image took to build, when this run built it (for the figures at the end).
BUILT: list[float] = []
# Software emulation is slow: the boot takes about a minute here, more on a busy machine.
BOOT_TIMEOUT = 420.0


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


@pytest.fixture(scope="module")
def image() -> Path:
    """dist/pitlink-amd64.img, built now unless it is newer than everything it is made from."""
    for tool in ("qemu-system-x86_64", "socat", "mcopy", "sfdisk"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    need(OVMF.is_file(), f"{OVMF} is missing (apt-get install ovmf): ./scripts/test installs it")
    if IMAGE.is_file() and IMAGE.stat().st_mtime > newest_input():
        return IMAGE
    need(os.geteuid() == 0, "building the image needs root: sudo ./scripts/build-image amd64")
    started = time.monotonic()
    # The compressed copy is for people; the test boots the raw image.
    done = subprocess.run(
        [str(REPO / "scripts" / "build-image"), "amd64", "--no-compress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=780,
    )
    if done.returncode != 0:
        pytest.fail(f"build-image failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    BUILT.append(time.monotonic() - started)
    return IMAGE


def boot_partition_offset(disk: Path) -> int:
    """Byte offset of partition 1 (the FAT boot partition), from the partition table."""
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    return int(table["partitions"][0]["start"]) * int(table.get("sectorsize", 512))


def mcopy(disk: Path, offset: int, source: Path, name: str) -> None:
    """Copy a file onto the FAT partition inside the disk image, without mounting anything."""
    subprocess.run(
        ["mcopy", "-o", "-i", f"{disk}@@{offset}", str(source), f"::{name}"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
        capture_output=True,
        timeout=60,
    )


def prepare_disk(image: Path, disk: Path, conf: bytes) -> None:
    """A copy of the image with this pitlink.conf, and the self-test hook armed."""
    # --sparse: the image's empty space stays holes, so the copy takes a second.
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True, timeout=120)
    offset = boot_partition_offset(disk)
    files = disk.parent / "boot-files"
    files.mkdir()
    (files / "pitlink.conf").write_bytes(conf)
    (files / "pitlink-selftest-kill").write_bytes(b"")
    for name in ("pitlink.conf", "pitlink-selftest-kill"):
        mcopy(disk, offset, files / name, name)


class Guest:
    """qemu booting a disk image, its serial console in a file; stop() always ends it."""

    def __init__(self, disk: Path, serial: Path, *, status_port: int, relay: int, sim: int):
        self.serial = serial
        forward = "cmd:socat STDIO TCP:127.0.0.1:{}"
        netdev = ",".join(
            [
                "user,id=net0,restrict=on",
                f"hostfwd=tcp:127.0.0.1:{status_port}-:80",
                f"guestfwd=tcp:{RELAY_IN_GUEST}-{forward.format(relay)}",
                f"guestfwd=tcp:{SIM_IN_GUEST}-{forward.format(sim)}",
            ]
        )
        self.argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-smp",
            "2",
            "-m",
            "1024",
            "-bios",
            str(OVMF),
            "-drive",
            f"file={disk},format=raw,if=virtio",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=net0",
            # A hardware watchdog for systemd's RuntimeWatchdogSec to feed.
            "-device",
            "i6300esb",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{serial}",
        ]
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


def check_inside(console: str) -> None:
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
    # systemd feeds the (emulated i6300esb) hardware watchdog.
    assert reported(console, "watchdog") == "active"
    # The mDNS name: pitlink-<first 8 characters of the pits id>.local.
    assert f"Host name is pitlink-{PITS_ID}.local" in reported(console, "avahi")
    # No unit failed or waited in vain on the way up.
    for mark in ("[FAILED]", "[DEPEND]", "[ TIME ]"):
        assert mark not in plain(console), console_tail(console)


@pytest.fixture
def guest_factory(tmp_path: Path) -> Iterator[list[Guest]]:
    guests: list[Guest] = []
    yield guests
    for guest in guests:
        guest.stop()


async def test_image_boots_serves_the_status_page_relays_and_restarts_the_agent(
    tmp_path: Path,
    sim: Simulator,
    image: Path,
    guest_factory: list[Guest],
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = System(tmp_path, sim, pits_id=PITS_ID)
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        await s.start_relay()
        assert s.relay is not None
        token = s.keys.issue(sub=PITS_ID, role="pits", ttl=3600)

        # As a laptop might leave it: Notepad's byte order mark and CRLF line endings.
        conf = (
            "\ufeff# written by tests/image/test_boot.py\r\n"
            f"CLOUD_URL=http://{RELAY_IN_GUEST}\r\n"
            f"TOKEN={token}\r\n"
            f"FPVTRACKSIDE=http://{SIM_IN_GUEST}\r\n"
        ).encode()
        disk = tmp_path / "disk.img"
        await asyncio.to_thread(prepare_disk, image, disk, conf)

        status_port = free_port()
        sim_port = int(urlsplit(sim.url).port or 0)
        guest = Guest(
            disk, tmp_path / "serial.log", status_port=status_port, relay=s.relay_port, sim=sim_port
        )
        guest_factory.append(guest)
        status = f"http://127.0.0.1:{status_port}"

        async def fetch(path: str, **kwargs: object) -> tornado.httpclient.HTTPResponse | None:
            guest.check_running()
            try:
                return await http.fetch(
                    status + path, raise_error=False, request_timeout=10, **kwargs
                )
            except (OSError, tornado.httpclient.HTTPClientError):
                # Not up yet: qemu accepts the forwarded connection, then resets it or the
                # guest never answers.
                return None

        async def page_up() -> bool:
            r = await fetch("/")
            return r is not None and r.code == 200 and b"<title>Pitlink box</title>" in r.body

        try:
            started = time.monotonic()
            guest.start()
            await wait_for(
                page_up, timeout=BOOT_TIMEOUT, interval=1.0, what="the status page (boot)"
            )
            booted = time.monotonic() - started

            await wait_for(
                lambda: s.relay.registry.get(PITS_ID),
                timeout=120,
                interval=0.5,
                what="the agent in the guest to connect to the relay",
            )
            first = s.relay.registry.get(PITS_ID)
            linked = time.monotonic() - started

            # Spectators' side: the relay fetches through the guest's agent from the simulator.
            got = await s.get(f"/pits/{PITS_ID}/httpfiles/Channels.json")
            assert got.code == 200, got.body
            direct = await http.fetch(sim.url + "/httpfiles/Channels.json")
            assert json.loads(got.body) == json.loads(direct.body)
            assert json.loads(got.body), "the simulator serves channels"
            assert got.headers["ETag"].startswith('"sha256:')

            health = await fetch("/healthz")
            assert health is not None and health.code == 200, health and health.body
            body = json.loads(health.body)
            assert body["wsConnected"] is True
            assert body["pitsId"] == PITS_ID
            assert body["originReachable"] is True

            # The box named itself after its pits id, for mDNS.
            await wait_for(
                lambda: f"this box is pitlink-{PITS_ID}," in guest.console(),
                timeout=120,
                interval=1.0,
                what="the host name line on the console",
            )

            # Pausing from the status page arms the self-test hook: it kills the agent.
            paused = await fetch(
                "/api/pause",
                method="POST",
                body=b"",
                headers={"X-Pitlink-Action": "1", "Origin": status},
            )
            assert paused is not None and paused.code == 200, paused and paused.body
            await wait_for(
                lambda: "pitlink-selftest: killed" in guest.console(),
                timeout=150,
                interval=0.5,
                what="the self-test hook to kill the agent",
            )
            killed = time.monotonic()

            # systemd starts it again (Restart=always); it dials the relay anew.
            def reconnected() -> bool:
                now = s.relay.registry.get(PITS_ID)
                return now is not None and now is not first

            await wait_for(
                reconnected, timeout=180, interval=0.5, what="the restarted agent to reconnect"
            )
            back = time.monotonic() - killed

            async def healthy_again() -> bool:
                r = await fetch("/healthz")
                return r is not None and r.code == 200 and not json.loads(r.body)["paused"]

            await wait_for(healthy_again, timeout=60, interval=1.0, what="a healthy new agent")
            again = await s.get(f"/pits/{PITS_ID}/httpfiles/Channels.json")
            assert again.code == 200, again.body

            console = guest.console()
            rss = re.search(r"agent rss_kib=(\d+)", console)
            assert rss is not None, "the self-test hook prints the agent's memory use"
            check_inside(console)
            built = f"image built in {BUILT[0]:.0f} s; " if BUILT else ""
            with capsys.disabled():
                print(
                    f"\n{built}image boot: status page after {booted:.0f} s, relay link after {linked:.0f} s,"
                    f" agent back {back:.0f} s after SIGKILL, agent RSS {int(rss.group(1)) / 1024:.1f} MiB"
                )
        except BaseException:
            print(f"serial console (end):\n{console_tail(guest.console())}", file=sys.stderr)
            raise
        finally:
            guest.stop()
    finally:
        http.close()
        await s.close()
