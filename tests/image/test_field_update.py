"""Updates in the field, end to end: the amd64 image under qemu (UEFI, software emulation)
updated through a real relay behind TLS, with RAUC, its two root slots and the trial boot.

One box, one story, in the order a box in the field could live it:
1. It boots slot A and links to the relay.
2. The relay offers a good bundle (a new version of the same root filesystem): the box
   downloads it over HTTPS with its own token, RAUC checks and writes it into slot B, the
   organiser presses Install now on the status page, the box boots B on trial, finds itself
   healthy, marks B good, and says so in its hello (slot B, the new version, "good").
3. A bundle signed with another key is refused, and neither slot is touched.
4. A bundle is being written into slot A when the power goes (qemu killed once it has
   written 256 MiB to the disk since the box said "installing": past the download, mid-slot):
   A's entry is bad, and the boot loader starts B again.
5. A bundle whose agent never starts is installed into A and booted on trial: the health
   check gives up, the box restarts, the boot loader finds the trial spent and starts B, and
   the box reports the rollback to the relay.

The bundles are made here from the image's own root filesystem (partition 2), with debugfs
changing the version file (and, for the bad one, the agent), and signed with the key the test
images trust (tests/image/appliance.py's TEST_KEY_DIR) or, for the refused one, a key made
here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tornado.httpclient
from appliance import (
    RELAY_IN_GUEST,
    REPO,
    SIM_IN_GUEST,
    TEST_KEY_DIR,
    Guest,
    Ports,
    amd64_guest,
    built_image,
    console_tail,
    partition_table,
    plain,
    prepare_disk,
    relay_front,
    signing_key,
)

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
    with image.open("rb") as src, out.open("wb") as dst:
        src.seek(part.start)
        left = blocks * size
        while left:
            chunk = src.read(min(left, 8 << 20))
            dst.write(chunk)
            left -= len(chunk)


def bundle(root: Path, out: Path, version: str, key_dir: Path, *, broken: bool = False) -> Path:
    """A bundle of a copy of `root` saying it is `version` (and with an agent that never
    starts, when `broken`), signed with the key in `key_dir`."""
    fs = out.with_suffix(".ext4")
    subprocess.run(["cp", "--sparse=always", str(root), str(fs)], check=True, timeout=120)
    (out.parent / "version").write_text(version + "\n")
    commands = [
        "rm /usr/lib/pitlink/version",
        f"write {out.parent / 'version'} /usr/lib/pitlink/version",
    ]
    if broken:
        (out.parent / "agent").write_text("#!/bin/sh\necho 'a broken agent' >&2\nexit 1\n")
        agent = "/opt/pitlink/pits-agent/pits-agent"
        commands += [
            f"rm {agent}",
            f"write {out.parent / 'agent'} {agent}",
            f"set_inode_field {agent} mode 0100755",
        ]
    debugfs(fs, *commands)
    key = signing_key(key_dir)
    subprocess.run(
        [str(REPO / "image" / "make-bundle"), "--root", str(fs), "--arch", "amd64",
         "--version", version, "--key", str(key.key), "--cert", str(key.cert), "--out", str(out)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    fs.unlink()
    return out


def foreign_bundle(tmp: Path) -> Path:
    """A small bundle signed with a key no box trusts."""
    tree = tmp / "foreign"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz").write_bytes(os.urandom(4 << 20))
    fs = tmp / "foreign.ext4"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(fs), "16M"], check=True)
    key = signing_key(tmp / "someone-else")
    out = tmp / "foreign.raucb"
    subprocess.run(
        [str(REPO / "image" / "make-bundle"), "--root", str(fs), "--arch", "amd64",
         "--version", "9.0.5", "--key", str(key.key), "--cert", str(key.cert), "--out", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


class Box:
    """The PC, its power cycled at every restart.

    qemu runs with -no-reboot (a restart inside ends qemu) and is started again on the same
    disk. qemu's UEFI firmware (OVMF started with -bios) sometimes hung for good on a warm reset
    after an install, before the boot loader ran; the boot loader's choice, which is what this
    test is about, is made from the files on the disk either way. Each boot's console goes to a
    file of its own.
    """

    def __init__(self, disk: Path, folder: Path, ports: Ports):
        self.disk, self.folder, self.ports = disk, folder, ports
        self.boots: list[Guest] = []
        self.restarts = 0
        self.cutting = False
        self.qmp = folder / "qmp.sock"

    def written(self) -> int:
        """Bytes the PC has written to its disk since qemu started (qemu's own count)."""
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
        guest = amd64_guest(
            self.disk, self.folder / f"serial-{len(self.boots) + 1}.log", self.ports
        )
        self.qmp.unlink(missing_ok=True)
        # qemu's machine protocol, for how much the PC has written to its disk (written()).
        guest.argv += ["-no-reboot", "-qmp", f"unix:{self.qmp},server=on,wait=off"]
        self.boots.append(guest)
        guest.start()

    def poll(self) -> None:
        """Start the PC again when it restarted itself (qemu ended cleanly)."""
        proc = self.guest.proc
        if proc is None or self.cutting or proc.poll() is None:
            return
        if proc.returncode != 0:
            self.guest.check_running()  # says why
        self.guest.stop()
        self.restarts += 1
        self.start()

    def power_cut(self, between: Callable[[], None] = lambda: None) -> None:
        """Kill qemu, run `between` (the PC is off), and start it again."""
        self.cutting = True
        proc = self.guest.proc
        assert proc is not None and proc.poll() is None, "the PC was not running"
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


@pytest.mark.timeout(3000)
async def test_a_box_updates_through_the_relay_rolls_back_a_bad_slot_and_survives_a_power_cut(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    image = built_image("amd64")
    version_a = image_version(image)
    root = tmp_path / "root.ext4"
    await asyncio.to_thread(root_filesystem, image, root)
    made = time.monotonic()
    good = await asyncio.to_thread(bundle, root, tmp_path / "good.raucb", "9.0.0", TEST_KEY_DIR)
    bad = await asyncio.to_thread(
        bundle, root, tmp_path / "bad.raucb", "9.1.0", TEST_KEY_DIR, broken=True
    )
    foreign = await asyncio.to_thread(foreign_bundle, tmp_path)
    root.unlink()
    made = time.monotonic() - made

    async with relay_front(tmp_path, sim, PITS_ID, bundle_dir=tmp_path / "bundles") as front:
        s = front.system
        relay = s.relay
        assert relay is not None
        admin = {"Authorization": f"Bearer {s.keys.issue(sub='ops', role='admin', ttl=7200)}"}
        http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

        async def api(path: str, body: Any = None, **kwargs: Any) -> Any:
            if body is not None:
                kwargs.update(
                    method="POST", body=body if isinstance(body, bytes) else json.dumps(body)
                )
            got = await s.get(f"/admin/api/{path}", headers=admin, request_timeout=300, **kwargs)
            assert got.code == 200, (path, got.code, got.body[:500])
            return json.loads(got.body)

        ids = {}
        for name, path, version in (
            ("good", good, "9.0.0"),
            ("bad", bad, "9.1.0"),
            ("foreign", foreign, "9.0.5"),
        ):
            meta = await api(f"bundles/upload?version={version}&arch=amd64", path.read_bytes())
            ids[name] = meta["id"]

        token = s.keys.issue(sub=PITS_ID, role="pits", ttl=7200)
        conf = (
            f"CLOUD_URL=https://{RELAY_IN_GUEST}\nCLOUD_CA=relay-ca.pem\nTOKEN={token}\n"
            f"FPVTRACKSIDE=http://{SIM_IN_GUEST}\n"
            f"UPDATE_TRIAL_SECONDS={TRIAL}\nUPDATE_HEALTHY_SECONDS={HEALTHY}\n"
            f"STATUS_PIN={STATUS_PIN}\n"
            # The simulator's race never ends and the test's own fetches count as spectators:
            # the box would wait for the race to end (tests/integration/test_update_race.py
            # shows it does). Here the update itself is under test.
            "UPDATE_DURING_RACES=yes\n"
        ).encode()
        disk = tmp_path / "disk.img"
        await asyncio.to_thread(prepare_disk, image, disk, conf, front.ca.ca, selftest=False)
        ports = Ports(
            status=free_port(), tls=front.tls, plain=front.plain, sim=urlsplit(sim.url).port or 0
        )
        status = f"http://127.0.0.1:{ports.status}"
        pc = Box(disk, tmp_path, ports)

        async def keep_on() -> None:
            while True:
                pc.poll()
                await asyncio.sleep(0.5)

        def box() -> dict[str, Any] | None:
            conn = relay.registry.get(PITS_ID)
            return conn.describe() if conn is not None and conn.hello is not None else None

        async def linked(
            slot: str, version: str, what: str, *, since: Any = None
        ) -> dict[str, Any]:
            def there() -> bool:
                now = relay.registry.get(PITS_ID)
                row = box()
                return (
                    now is not None
                    and now is not since
                    and row is not None
                    and row["slot"] == slot
                    and row["swVersion"] == version
                )

            await wait_for(there, timeout=BOOT_TIMEOUT + TRIAL + 240, interval=1.0, what=what)
            row = box()
            assert row is not None
            return row

        async def update_state(
            version: str, *states: str, timeout: float = INSTALL_TIMEOUT
        ) -> dict[str, Any]:
            """The box's report for `version` once it is one of `states`."""

            def reached() -> bool:
                row = box()
                report = (row or {}).get("update") or {}
                return report.get("version") == version and report.get("state") in states

            await wait_for(
                reached, timeout=timeout, interval=1.0, what=f"the box to report {version} {states}"
            )
            row = box()
            assert row is not None
            return row["update"]

        def reports(state: str) -> float:
            """How many reports in `state` the relay has had from boxes."""
            got = relay.metrics.registry.get_sample_value(
                "pitlink_update_reports_total", {"state": state}
            )
            return got or 0.0

        async def install_now() -> None:
            """Install now, as the status page presses it: the box's PIN, then the button."""
            page = {"X-Pitlink-Action": "1", "Origin": status}
            unlocked = await http.fetch(
                status + "/api/pin", method="POST", body=json.dumps({"pin": STATUS_PIN}),
                headers=page, request_timeout=30,
            )  # fmt: skip
            page["Cookie"] = unlocked.headers["Set-Cookie"].split(";", 1)[0]
            got = await http.fetch(
                status + "/api/install", method="POST", body=b"", raise_error=False,
                headers=page, request_timeout=30,
            )  # fmt: skip
            assert got.code == 200, got.body

        times: dict[str, float] = {}
        watcher: asyncio.Task[None] | None = None
        try:
            started = time.monotonic()
            pc.start()
            watcher = asyncio.ensure_future(keep_on())
            first = await linked("A", version_a, "the box on slot A, linked")
            times["boot"] = time.monotonic() - started
            assert first["update"] is None

            # -- a good bundle, through the relay -------------------------------------------------
            started = time.monotonic()
            await api(f"bundles/{ids['good']}/offer", {"pitsIds": [PITS_ID]})
            report = await update_state("9.0.0", "installed", "failed", "refused")
            assert report["state"] == "installed", report
            times["download and install"] = time.monotonic() - started
            before = relay.registry.get(PITS_ID)
            started = time.monotonic()
            await install_now()
            row = await linked("B", "9.0.0", "the box on slot B with the new version", since=before)
            report = await update_state("9.0.0", "good", "rolled-back", timeout=TRIAL + 120)
            assert report["state"] == "good", report
            assert report["version"] == "9.0.0"
            times["restart into B, marked good"] = time.monotonic() - started

            # -- a bundle signed with a key the box does not trust ----------------------------------
            await api(f"bundles/{ids['foreign']}/offer", {"pitsIds": [PITS_ID]})
            report = await update_state("9.0.5", "refused", "failed", "installed")
            assert report["state"] == "refused", report
            assert "signature" in report["message"].lower(), report

            # -- the power goes while a bundle is being written --------------------------------------
            # The cut comes once the PC has written CUT_AFTER bytes to its disk since the box
            # said "installing" (RAUC checking the signature, nothing written yet): more than
            # the whole downloaded bundle whose writing may still be under way, and less than
            # the root filesystem RAUC writes into slot A. So RAUC is cut mid-slot.
            await api(f"bundles/{ids['bad']}/offer", {"pitsIds": [PITS_ID]})
            report = await update_state("9.1.0", "installing", "installed", "failed", "refused")
            assert report["state"] == "installing", report
            installing = await asyncio.to_thread(pc.written)
            writing = time.monotonic()

            async def into_the_slot() -> bool:
                return await asyncio.to_thread(pc.written) - installing >= CUT_AFTER

            await wait_for(into_the_slot, timeout=INSTALL_TIMEOUT, interval=0.2, what="writes")
            cut_at = await asyncio.to_thread(pc.written) - installing
            times["installing until the cut"] = time.monotonic() - writing
            report = (box() or {}).get("update") or {}
            assert report.get("state") == "installing", report  # not finished: mid-write
            before = relay.registry.get(PITS_ID)
            entries: list[str] = []
            started = time.monotonic()
            pc.power_cut(lambda: entries.extend(boot_entries(disk)))
            # RAUC marked A bad before writing it; B, good, boots.
            assert entries == ["pitlink-a+0.conf", "pitlink-b.conf"], entries
            await linked("B", "9.0.0", "the box back on slot B after the power cut", since=before)
            times["back after the power cut"] = time.monotonic() - started
            after_cut = plain(pc.guest.console())
            assert "rauc.slot=B" in after_cut and "rauc.slot=A" not in after_cut, after_cut[-3000:]

            # -- a bundle whose agent never starts: tried once, then back to B ----------------------
            # The relay offered the bad bundle again when the box came back, and the box may be
            # downloading it: withdrawing makes the box report "failed" for 9.1.0, and that
            # report may reach the relay after the new offer is sent. So the new attempt's
            # state is read only once the box has said "offered" again (or, had it already
            # been writing the bundle, which a withdrawal does not stop, is still at it).
            await api("bundles/withdraw", {"pitsIds": [PITS_ID]})
            offered = reports("offered")
            await api(f"bundles/{ids['bad']}/offer", {"pitsIds": [PITS_ID]})

            def taken() -> bool:
                report = (box() or {}).get("update") or {}
                going = report.get("state") in ("installing", "installed")
                return reports("offered") > offered or (going and report.get("version") == "9.1.0")

            await wait_for(taken, timeout=120, interval=0.5, what="the box to take the new offer")
            report = await update_state("9.1.0", "installed", "failed", "refused")
            assert report["state"] == "installed", report
            before = relay.registry.get(PITS_ID)
            started = time.monotonic()
            await install_now()
            # Slot A on trial never links (its agent exits at once); the health check gives up
            # after TRIAL seconds and restarts; the boot loader starts B again.
            row = await linked(
                "B", "9.0.0", "the box back on slot B after the bad slot", since=before
            )
            report = await update_state("9.1.0", "rolled-back", "good", timeout=120)
            assert report["state"] == "rolled-back", report
            assert report["version"] == "9.1.0"
            times["rollback from the bad slot"] = time.monotonic() - started
            console = pc.console()
            assert "did not become healthy" in console, console_tail(console)
            assert row["slot"] == "B"
            with capsys.disabled():
                print(
                    f"\nupdates (amd64, TCG): bundles made in {made:.0f} s ("
                    f"{good.stat().st_size / 1e6:.0f} MB); "
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
            http.close()
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


def image_version(image: Path) -> str:
    part = partition_table(image).partitions[1]
    done = subprocess.run(
        ["debugfs", "-R", "cat /usr/lib/pitlink/version", f"{image}?offset={part.start}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    version = done.stdout.strip()
    assert re.fullmatch(r"[0-9A-Za-z.+~_-]{1,64}", version), done
    return version
