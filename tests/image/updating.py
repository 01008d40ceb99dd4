"""What an update story under emulation needs (tests/image/test_field_update.py on the PC; the
Raspberry Pi's is to come, see docs/image.md): bundles made from the image's own root
filesystem, the box whose power the test holds, and the relay's side of an update (offers, the
box's reports, the status page's Install now).

The bundles are made from the image's own root filesystem (partition 2), with debugfs changing
the version file (and, for a broken one, the agent), and signed with the key the test images
trust (appliance.TEST_KEY_DIR) or, for a refused one, a key made here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tornado.httpclient
from appliance import (
    RELAY_IN_GUEST,
    REPO,
    SIM_IN_GUEST,
    TEST_KEY_DIR,
    partition_table,
    signing_key,
)
from guests import Guest

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

# What a broken bundle's agent does instead of the agent's work: files written into the
# bundle's root filesystem (path: text; every one executable).
AGENT = "/opt/pitlink/pits-agent/pits-agent"
BROKEN = {
    # exits at once, every time systemd starts it
    "exits": {AGENT: "#!/bin/sh\necho 'a broken agent' >&2\nexit 1\n"},
    # starts and is never heard of again: no READY=1, no watchdog pings, no status page, no
    # link (systemd's start timeout and watchdog restart it, again and again)
    "hangs": {AGENT: "#!/bin/sh\necho 'a hung agent' >&2\nexec sleep 1000000\n"},
    # the real agent, running and answering on its status page, but dialling a relay that is
    # not there (its environment beats pitlink.conf): it never links
    "never-links": {
        "/etc/systemd/system/pits-agent.service.d/never-links.conf": (
            "[Service]\nEnvironment=PITLINK_CLOUD_URL=https://10.0.2.100:9\n"
        )
    },
}


def debugfs(fs: Path, *commands: str) -> None:
    """Write into an ext4 image file with debugfs (nothing mounted)."""
    script = fs.parent / "debugfs.cmd"
    script.write_text("\n".join(commands) + "\n")
    done = subprocess.run(
        ["debugfs", "-w", "-f", str(script), str(fs)], capture_output=True, text=True, timeout=120
    )
    complaints = [
        line
        for line in done.stderr.splitlines()[1:]
        if line.strip() and not line.startswith("debugfs:") and "Allocated inode" not in line
    ]
    assert done.returncode == 0 and not complaints, done.stderr


def root_filesystem(image: Path, out: Path) -> None:
    """Slot A's root filesystem from the image: the ext4 in partition 2, at its own size."""
    part = partition_table(image).partitions[1]
    head = subprocess.run(
        ["dumpe2fs", "-h", f"{image}?offset={part.start}"], capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    blocks = int(re.search(r"^Block count:\s+(\d+)", head, re.M).group(1))  # type: ignore[union-attr]
    size = int(re.search(r"^Block size:\s+(\d+)", head, re.M).group(1))  # type: ignore[union-attr]
    copy_range(image, part.start, blocks * size, out, 0)


def copy_range(src: Path, start: int, length: int, dst: Path, at: int) -> None:
    """`length` bytes of `src` from `start` written into `dst` (made if missing) at `at`."""
    with src.open("rb") as read, dst.open("r+b" if dst.exists() else "wb") as write:
        read.seek(start)
        write.seek(at)
        left = length
        while left:
            chunk = read.read(min(left, 8 << 20))
            assert chunk, f"{src} ends before {start + length}"
            write.write(chunk)
            left -= len(chunk)


def image_version(image: Path) -> str:
    """The version slot A of the image runs."""
    part = partition_table(image).partitions[1]
    done = subprocess.run(
        ["debugfs", "-R", "cat /usr/lib/pitlink/version", f"{image}?offset={part.start}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    version = done.stdout.strip()
    assert re.fullmatch(r"[0-9A-Za-z.+~_-]{1,64}", version), done
    return version


def bundle(
    root: Path, out: Path, version: str, key_dir: Path, *, arch: str, broken: str | None = None
) -> Path:
    """A bundle for `arch` of a copy of `root` saying it is `version` (and with an agent that
    does what BROKEN[broken] says, when `broken`), signed with the key in `key_dir`."""
    fs = out.with_suffix(".ext4")
    subprocess.run(["cp", "--sparse=always", str(root), str(fs)], check=True, timeout=120)
    (out.parent / "version").write_text(version + "\n")
    commands = [
        "rm /usr/lib/pitlink/version",
        f"write {out.parent / 'version'} /usr/lib/pitlink/version",
    ]
    for n, (path, text) in enumerate(BROKEN[broken].items() if broken else ()):
        (out.parent / f"broken-{n}").write_text(text)
        folder = path.rsplit("/", 1)[0]
        commands += [
            # the agent replaced; anything else is new, in a folder of its own
            f"rm {path}" if path == AGENT else f"mkdir {folder}",
            f"write {out.parent / f'broken-{n}'} {path}",
            f"set_inode_field {path} mode 0100755",
        ]
    debugfs(fs, *commands)
    key = signing_key(key_dir)
    subprocess.run(
        [str(REPO / "image" / "make-bundle"), "--root", str(fs), "--arch", arch,
         "--version", version, "--key", str(key.key), "--cert", str(key.cert), "--out", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    fs.unlink()
    return out


def foreign_bundle(tmp: Path, *, arch: str) -> Path:
    """A small bundle for `arch` signed with a key no box trusts."""
    tree = tmp / "foreign"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz").write_bytes(os.urandom(4 << 20))
    fs = tmp / "foreign.ext4"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(fs), "16M"], check=True)
    key = signing_key(tmp / "someone-else")
    out = tmp / "foreign.raucb"
    subprocess.run(
        [str(REPO / "image" / "make-bundle"), "--root", str(fs), "--arch", arch,
         "--version", "9.0.5", "--key", str(key.key), "--cert", str(key.cert), "--out", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def image_bundles(
    image: Path, folder: Path, arch: str, wanted: dict[str, tuple[str, str | None]]
) -> dict[str, Path]:
    """For each name, (version, what its agent does: None, or a key of BROKEN), a bundle of the
    image's own root filesystem signed with the key the test images trust; and under "foreign"
    a small one (version 9.0.5) signed with a key no box trusts."""
    root = folder / "root.ext4"
    root_filesystem(image, root)
    made = {
        name: bundle(
            root, folder / f"{name}.raucb", version, TEST_KEY_DIR, arch=arch, broken=broken
        )
        for name, (version, broken) in wanted.items()
    }
    root.unlink()
    made["foreign"] = foreign_bundle(folder, arch=arch)
    return made


def box_conf(
    token: str, *, pin: str, trial: int, healthy: int, scan: int = 60, update_dir: str = "",
    routed: bool = False,
) -> bytes:  # fmt: skip
    """The pitlink.conf of a box in an update test: the relay behind TLS, the simulator, a
    short trial boot (the defaults are 600 s and 60 s), the status page's PIN, a look for
    bundles in the update folders every `scan` seconds (and those folders, if given).

    `routed`: the box's own address and a gateway, as at a venue with a router. qemu's
    restricted network hands out an address and no gateway, and the health check counts a box
    that never had a default route as one with no network to link over, whose trial slot is
    good when its agent answers (image/rootfs/usr/lib/pitlink/pitlink-health)."""
    static = "STATIC_ADDRESS=10.0.2.15/24\nSTATIC_GATEWAY=10.0.2.2\n" if routed else ""
    return (
        static + f"CLOUD_URL=https://{RELAY_IN_GUEST}\nCLOUD_CA=relay-ca.pem\nTOKEN={token}\n"
        f"FPVTRACKSIDE=http://{SIM_IN_GUEST}\n"
        f"UPDATE_TRIAL_SECONDS={trial}\nUPDATE_HEALTHY_SECONDS={healthy}\n"
        f"UPDATE_SCAN_INTERVAL={scan}\nSTATUS_PIN={pin}\n"
        # The simulator's race never ends and the test's own fetches count as spectators:
        # the box would wait for the race to end (tests/integration/test_update_race.py
        # shows it does). Here the update itself is under test.
        "UPDATE_DURING_RACES=yes\n" + (f"UPDATE_DIR={update_dir}\n" if update_dir else "")
    ).encode()


def state_put(disk: Path, folder: str, *bundles: Path, remove: tuple[str, ...] = ()) -> None:
    """Bundles copied into `folder` on the card's state partition (the box is off), and the
    files named in `remove` taken out of it.

    After a power cut the partition's journal waits to be replayed (the box mounts it
    read-write), and the kernel would replay it over what debugfs wrote: so the partition is
    copied out, its journal replayed by e2fsck (which cannot reopen a partition inside a disk
    image after a replay), written to, and copied back."""
    state = partition_table(disk).partitions[3]
    fs = disk.parent / "state.ext4"
    fs.unlink(missing_ok=True)
    copy_range(disk, state.start, state.size, fs, 0)
    checked = subprocess.run(
        ["e2fsck", "-fy", str(fs)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr  # 1: mended
    there = subprocess.run(
        ["debugfs", "-R", f"stat {folder}", str(fs)], capture_output=True, text=True, timeout=60
    )
    commands = [f"mkdir {folder}"] if "File not found" in there.stderr else []
    commands += [f"rm {folder}/{name}" for name in remove]
    commands += [f"write {bundle} {folder}/{bundle.name}" for bundle in bundles]
    debugfs(fs, *commands)
    copy_range(fs, 0, state.size, disk, state.start)
    fs.unlink()


def usb_stick(bundle: Path, out: Path) -> Path:
    """A USB stick's image (FAT32, as sticks come) holding `bundle` and nothing else."""
    size_kib = bundle.stat().st_size // 1024 + (64 << 10)
    out.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.fat", "-F", "32", "-n", "STICK", "-C", str(out), str(size_kib)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    subprocess.run(
        ["mcopy", "-i", str(out), str(bundle), f"::{bundle.name}"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True, capture_output=True,
        timeout=300,
    )  # fmt: skip
    return out


# What Linux prints as it restarts the board. The emulated Pi stays there (see
# guests.pi_guest); the PC's qemu, started with -no-reboot, ends.
RESTARTING = "reboot: Restarting system"


class Box:
    """The box, its power cycled at every restart: qemu runs with -no-reboot (a restart inside
    ends qemu, or on the emulated Pi leaves it at RESTARTING) and is started again on the same
    disk. Each boot's console goes to a file of its own.

    `make(serial)` gives the qemu of one boot. (On the PC, qemu's UEFI firmware (OVMF started
    with -bios) sometimes hung for good on a warm reset after an install, before the boot
    loader ran; the boot loader's choice, which is what the tests are about, is made from the
    files on the disk either way.)
    """

    def __init__(self, disk: Path, folder: Path, make: Callable[[Path], Guest]):
        self.disk, self.folder, self.make = disk, folder, make
        self.boots: list[Guest] = []
        self.restarts = 0
        self.cutting = False
        self.qmp = folder / "qmp.sock"

    def written(self) -> int:
        """Bytes the box has written to its disk since qemu started (qemu's own count)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp))
            lines = sock.makefile("rb")
            json.loads(lines.readline())  # the greeting

            def ask(command: str) -> Any:
                sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while True:  # events may come first
                    answer = json.loads(lines.readline())
                    if "return" in answer or "error" in answer:
                        assert "return" in answer, answer
                        return answer["return"]

            ask("qmp_capabilities")
            return sum(int(d["stats"]["wr_bytes"]) for d in ask("query-blockstats"))

    @property
    def guest(self) -> Guest:
        return self.boots[-1]

    def start(self) -> None:
        guest = self.make(self.folder / f"serial-{len(self.boots) + 1}.log")
        self.qmp.unlink(missing_ok=True)
        # qemu's machine protocol, for how much the box has written to its disk (written()).
        guest.argv += ["-no-reboot", "-qmp", f"unix:{self.qmp},server=on,wait=off"]
        self.boots.append(guest)
        guest.start()

    def plug_stick(self, stick: Path, name: str) -> None:
        """`stick` (usb_stick) plugged into the running box's USB 3 port through qemu's
        monitor (the emulated PC's: guests.amd64_guest), read-only."""
        guest = self.guest
        said = guest.monitor(f"drive_add 0 if=none,id={name},file={stick},format=raw,readonly=on")
        assert said == "OK", said
        said = guest.monitor(f"device_add usb-storage,drive={name},id={name},bus=xhci.0")
        assert said == "", said

    def poll(self) -> None:
        """Start the box again when it restarted itself."""
        proc = self.guest.proc
        if proc is None or self.cutting:
            return
        if proc.poll() is None and RESTARTING not in self.guest.console():
            return
        if proc.poll() is not None and proc.returncode != 0:
            self.guest.check_running()  # says why
        self.guest.stop()
        self.restarts += 1
        self.start()

    def power_cut(self, between: Callable[[], None] = lambda: None) -> None:
        """Kill qemu, run `between` (the box is off), and start it again."""
        self.cutting = True
        proc = self.guest.proc
        assert proc is not None and proc.poll() is None, "the box was not running"
        proc.kill()
        self.guest.stop()
        between()
        self.cutting = False
        self.start()

    def console(self) -> str:
        return "".join(guest.console() for guest in self.boots)

    def stop(self) -> None:
        self.cutting = True
        for guest in self.boots:
            guest.stop()


class Updates:
    """The relay's side of one box's updates: the admin API, what the relay knows of the box,
    and the box's status page (forwarded to `status`) for Install now."""

    def __init__(self, system: System, pits_id: str, status: str, pin: str):
        self.system, self.pits_id, self.status, self.pin = system, pits_id, status, pin
        relay = system.relay
        assert relay is not None
        self.relay = relay
        self.admin = {
            "Authorization": f"Bearer {system.keys.issue(sub='ops', role='admin', ttl=7200)}"
        }
        self.http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    def close(self) -> None:
        self.http.close()

    async def api(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs.update(method="POST", body=body if isinstance(body, bytes) else json.dumps(body))
        got = await self.system.get(
            f"/admin/api/{path}", headers=self.admin, request_timeout=300, **kwargs
        )
        assert got.code == 200, (path, got.code, got.body[:500])
        return json.loads(got.body)

    async def upload(self, path: Path, version: str, arch: str) -> str:
        """The bundle put on the relay; its id."""
        body = await asyncio.to_thread(path.read_bytes)
        meta = await self.api(f"bundles/upload?version={version}&arch={arch}", body)
        return str(meta["id"])

    async def offer(self, bundle_id: str) -> None:
        await self.api(f"bundles/{bundle_id}/offer", {"pitsIds": [self.pits_id]})

    def connection(self) -> Any:
        return self.relay.registry.get(self.pits_id)

    def box(self) -> dict[str, Any] | None:
        """What the relay knows of the box (its hello), while it is linked."""
        conn = self.connection()
        return conn.describe() if conn is not None and conn.hello is not None else None

    async def linked(
        self, slot: str, version: str, what: str, *, timeout: float, since: Any = None
    ) -> dict[str, Any]:
        """The box linked (on a connection other than `since`) from `slot` running `version`."""

        def there() -> bool:
            now = self.connection()
            row = self.box()
            return (
                now is not None
                and now is not since
                and row is not None
                and row["slot"] == slot
                and row["swVersion"] == version
            )

        await wait_for(there, timeout=timeout, interval=1.0, what=what)
        row = self.box()
        assert row is not None
        return row

    async def update_state(self, version: str, *states: str, timeout: float) -> dict[str, Any]:
        """The box's report for `version` once it is one of `states`."""

        def reached() -> bool:
            report = (self.box() or {}).get("update") or {}
            return report.get("version") == version and report.get("state") in states

        await wait_for(
            reached, timeout=timeout, interval=1.0, what=f"the box to report {version} {states}"
        )
        row = self.box()
        assert row is not None
        return dict(row["update"])

    async def installed(self, version: str, slot: str, *, timeout: float) -> dict[str, Any]:
        """The box's report that `version` is installed into `slot` (not failed or refused)."""
        report = await self.update_state(version, "installed", "failed", "refused", timeout=timeout)
        assert report["state"] == "installed", report
        assert f"slot {slot}" in report["message"], report
        return report

    def reports(self, state: str) -> float:
        """How many reports in `state` the relay has had from boxes."""
        got = self.relay.metrics.registry.get_sample_value(
            "pitlink_update_reports_total", {"state": state}
        )
        return got or 0.0

    async def status_json(self) -> dict[str, Any] | None:
        """The box's own status page's data (through qemu's forward), or None while it does
        not answer."""
        try:
            got = await self.http.fetch(
                self.status + "/status.json", raise_error=False, request_timeout=10
            )
        except (OSError, tornado.httpclient.HTTPClientError):
            return None
        return json.loads(got.body) if got.code == 200 else None

    async def install_now(self) -> None:
        """Install now, as the status page presses it: the box's PIN, then the button."""
        page = {"X-Pitlink-Action": "1", "Origin": self.status}
        unlocked = await self.http.fetch(
            self.status + "/api/pin", method="POST", body=json.dumps({"pin": self.pin}),
            headers=page, request_timeout=30,
        )  # fmt: skip
        page["Cookie"] = unlocked.headers["Set-Cookie"].split(";", 1)[0]
        got = await self.http.fetch(
            self.status + "/api/install", method="POST", body=b"", raise_error=False,
            headers=page, request_timeout=30,
        )  # fmt: skip
        assert got.code == 200, got.body

    async def keep_on(self, box: Box) -> None:
        """Start the box again whenever it restarts itself (a task the test cancels)."""
        while True:
            box.poll()
            await asyncio.sleep(0.5)
