"""The appliance image, booted under qemu against a real relay behind TLS, with a wrong clock.

Both images are booted the same way: dist/pitlink-amd64.img as a PC boots it from a USB stick
(qemu-system-x86_64, UEFI firmware from Debian's ovmf), dist/pitlink-arm64.img in qemu's
emulated Raspberry Pi 3 (`raspi3b`), which starts U-Boot and the device tree from the card's
FAT partition as the Pi's firmware would; U-Boot runs the card's boot.scr, which starts slot
A's kernel. The card is the Pi's SD card, its network a USB adapter (the Pi 3's own Ethernet is
a USB chip qemu does not model). Each image is built by ./scripts/build-image when
it is older than what it is made from (tests/image/appliance.py), copied, and given a
pitlink.conf and the test's CA with mtools (no mounting).

The relay sits behind nginx with deploy/nginx-pitlink.conf, terminating TLS with a certificate
from a CA the test makes, which the box trusts through `CLOUD_CA=relay-ca.pem` on its boot
partition. The certificate is valid from the moment the test starts, and the box starts with
its clock wrong: the PC's emulated RTC years behind (`-rtc base=`), the Pi with no clock at
all, so systemd starts it at the image's build time, which the test moves back to 2025 in its copy (a freshly built image would
start the clock a minute before the truth, close enough to hide the problem; a card in the
field was flashed months ago). TLS can only come up once the box has taken the time from the
relay's `Date` (pits_appliance.clock); /healthz then says `"clock": "set"`.

The guest's network is qemu's user-mode network with restrict=on: it reaches nothing but what
the test forwards to it, namely

    guest 10.0.2.100:8000  ->  nginx's TLS port on the host's loopback   (CLOUD_URL=https://...)
    guest 10.0.2.100:80    ->  nginx's plain port (the connectivity check's http probe)
    guest 10.0.2.101:8080  ->  the FPVTrackside simulator                (FPVTRACKSIDE)
    host 127.0.0.1:<port>  ->  guest port 80, the status page

guestfwd starts `socat` for each connection the guest opens (its plain form forwards a single
connection for qemu's whole life, and the agent opens many).

The agent is killed once inside the guest, to see systemd bring it back: the image's
pitlink-selftest service (only active when the boot partition holds a file named
pitlink-selftest-kill) kills it with SIGKILL when the status page's "Pause" is pressed. Before
that it prints on the serial console what cannot be seen from outside: the mounts (read-only
root, RAM for the rest), the journal's place, swap, timers, failed units, the hardware
watchdog, the saved time, the mDNS name, and the agent's memory use.

On the emulated Pi the hardware watchdog's driver stays unloaded: qemu's model of it resets the
board the moment it is armed, where the real one waits for its timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tornado.httpclient
from appliance import (
    BUILT,
    RELAY_IN_GUEST,
    REPO,
    SIM_IN_GUEST,
    TEST_KEY_DIR,
    Front,
    built_image,
    fat_get,
    fat_put,
    partition_table,
    prepare_disk,
    relay_front,
    signing_key,
)
from guests import (
    Guest,
    Ports,
    amd64_guest,
    arm64_guest,
    check_inside,
    console_tail,
    plain,
    reported,
)

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import wait_for

pytestmark = [pytest.mark.image]

PITS_ID = "club-42"

# Software emulation is slow: the amd64 box answers about a minute after qemu starts, arm64
# later; more on a busy machine.
BOOT_TIMEOUT = {"amd64": 420.0, "arm64": 900.0}
# What the box's hardware watchdog looks like from inside: qemu's PC has one (i6300esb); the
# emulated Pi's stays unloaded (see arm64_guest).
WATCHDOG = {"amd64": "active", "arm64": "none"}


GUESTS: dict[str, Callable[[Path, Path, Ports], Guest]] = {
    "amd64": amd64_guest,
    "arm64": arm64_guest,
}


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    started: list[Guest] = []
    yield started
    for guest in started:
        guest.stop()


@dataclass(frozen=True)
class Image:
    arch: str
    path: Path


@pytest.fixture(
    params=[
        pytest.param("amd64", marks=pytest.mark.timeout(1500)),
        pytest.param("arm64", marks=pytest.mark.timeout(4500)),
    ]
)
def image(request: pytest.FixtureRequest) -> Image:
    """The image, built first if it is stale (before the test's CA: see `front`)."""
    return Image(request.param, built_image(request.param))


@pytest.fixture
async def front(image: Image, tmp_path: Path, sim: Simulator) -> AsyncIterator[Front]:
    """The relay behind TLS; its certificate made after the image, so the box's clock (at the
    image's build time when it starts) is before the certificate's first second."""
    async with relay_front(tmp_path, sim, PITS_ID) as front:
        yield front


async def test_image_boots_serves_the_status_page_relays_and_restarts_the_agent(
    image: Image,
    tmp_path: Path,
    sim: Simulator,
    front: Front,
    guests: list[Guest],
    capsys: pytest.CaptureFixture[str],
) -> None:
    arch = image.arch
    s = front.system
    relay = s.relay
    assert relay is not None
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        token = s.keys.issue(sub=PITS_ID, role="pits", ttl=3600)
        # As a laptop might leave it: Notepad's byte order mark and CRLF line endings.
        conf = (
            "\ufeff# written by tests/image/test_boot.py\r\n"
            f"CLOUD_URL=https://{RELAY_IN_GUEST}\r\n"
            "CLOUD_CA=relay-ca.pem\r\n"
            f"TOKEN={token}\r\n"
            f"FPVTRACKSIDE=http://{SIM_IN_GUEST}\r\n"
        ).encode()
        disk = tmp_path / "disk.img"
        await asyncio.to_thread(prepare_disk, image.path, disk, conf, front.ca.ca)
        # Bundles the box's own RAUC must refuse (the self-test hook hands them to it).
        for name, bundle in (await asyncio.to_thread(refused_bundles, tmp_path, arch)).items():
            await asyncio.to_thread(fat_put, disk, bundle, name)

        ports = Ports(
            status=free_port(), tls=front.tls, plain=front.plain, sim=urlsplit(sim.url).port or 0
        )
        guest = await asyncio.to_thread(GUESTS[arch], disk, tmp_path / "serial.log", ports)
        guests.append(guest)
        status = f"http://127.0.0.1:{ports.status}"

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
                page_up, timeout=BOOT_TIMEOUT[arch], interval=1.0, what="the status page (boot)"
            )
            booted = time.monotonic() - started
            # The agent made the status page's PIN before serving it and appended it to
            # pitlink.conf on the (read-only, remounted for it) boot partition, where the
            # organiser finds it; what was there, the token among it, is there byte for byte.
            pin = made_pin(await asyncio.to_thread(fat_get, disk, "pitlink.conf"), conf)

            await wait_for(
                lambda: relay.registry.get(PITS_ID),
                timeout=240,
                interval=0.5,
                what="the agent in the guest to connect to the relay over TLS",
            )
            first = relay.registry.get(PITS_ID)
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
            assert body["cloudError"] is None
            clock = body["clock"]  # checked below, with what the box said about it

            # The box named itself after its pits id, for mDNS.
            await wait_for(
                lambda: f"this box is pitlink-{PITS_ID}," in guest.console(),
                timeout=120,
                interval=1.0,
                what="the host name line on the console",
            )

            # Pausing from the status page arms the self-test hook: it kills the agent. The
            # page's own headers are not enough: the button needs the box's PIN.
            page = {"X-Pitlink-Action": "1", "Origin": status}
            refused = await fetch("/api/pause", method="POST", body=b"", headers=page)
            assert refused is not None and refused.code == 403, refused and refused.body
            unlocked = await fetch(
                "/api/pin", method="POST", body=json.dumps({"pin": pin}), headers=page
            )
            assert unlocked is not None and unlocked.code == 200, unlocked and unlocked.body
            page["Cookie"] = unlocked.headers["Set-Cookie"].split(";", 1)[0]
            paused = await fetch("/api/pause", method="POST", body=b"", headers=page)
            assert paused is not None and paused.code == 200, paused and paused.body
            await wait_for(
                lambda: "pitlink-selftest: killed" in guest.console(),
                timeout=240,
                interval=0.5,
                what="the self-test hook to kill the agent",
            )
            killed = time.monotonic()

            # systemd starts it again (Restart=always); it dials the relay anew.
            def reconnected() -> bool:
                now = relay.registry.get(PITS_ID)
                return now is not None and now is not first

            await wait_for(
                reconnected, timeout=240, interval=0.5, what="the restarted agent to reconnect"
            )
            back = time.monotonic() - killed

            async def healthy_again() -> bool:
                r = await fetch("/healthz")
                return r is not None and r.code == 200 and not json.loads(r.body)["paused"]

            await wait_for(healthy_again, timeout=120, interval=1.0, what="a healthy new agent")
            again = await s.get(f"/pits/{PITS_ID}/httpfiles/Channels.json")
            assert again.code == 200, again.body

            console = guest.console()
            rss = re.search(r"agent rss_kib=(\d+)", console)
            assert rss is not None, "the self-test hook prints the agent's memory use"
            check_inside(console, PITS_ID, watchdog=WATCHDOG[arch])
            check_refusals(console, arch)
            if arch == "arm64":
                # The boot script picked slot A of this very card, as flashed.
                root_a = partition_table(disk).partitions[1].uuid
                started_a = f"Pitlink: starting slot A (a/vmlinuz, root PARTUUID={root_a};"
                assert started_a in plain(console), console_tail(console)
            # The time is kept on the state partition for the next boot, and it is the
            # relay's (at least the certificate's first second), not the build's.
            saved = reported(console, "clock saved")
            assert saved.isdigit() and int(saved) >= int(front.not_before), console_tail(console)
            # The clock started before the certificate's first valid second: the box took the
            # time from the relay's Date (NTP cannot get out of this network).
            assert clock == "set", (
                clock,
                reported(console, "clock log"),
                reported(console, "agent restarts"),
            )
            built = f"image built in {BUILT[arch]:.0f} s; " if arch in BUILT else ""
            with capsys.disabled():
                print(
                    f"\n{arch}: {built}status page after {booted:.0f} s, relay link over TLS"
                    f" after {linked:.0f} s, agent back {back:.0f} s after SIGKILL,"
                    f" agent RSS {int(rss.group(1)) / 1024:.1f} MiB"
                )
        except BaseException:
            print(f"serial console (end):\n{console_tail(guest.console())}", file=sys.stderr)
            raise
        finally:
            guest.stop()
        # The restarted agent found the PIN there and added none.
        assert made_pin(await asyncio.to_thread(fat_get, disk, "pitlink.conf"), conf) == pin
    finally:
        http.close()


def made_pin(now: bytes, flashed: bytes) -> str:
    """The PIN the box appended to the pitlink.conf it was flashed with (CRLF line ends, as
    the file's own), which must be there unchanged."""
    assert now.startswith(flashed), now
    added = now[len(flashed) :].decode()
    found = re.fullmatch(r"# The status page's PIN[^\r\n]*\r\nSTATUS_PIN=([0-9]{6})\r\n", added)
    assert found is not None, added
    return found.group(1)


# Handed to the box's own RAUC by the self-test hook, which must refuse each: a `verity` bundle
# signed with the key the image trusts, for the other architecture; and one for this one but
# older than the version the box runs, which the image's pre-install handler refuses (RAUC
# opens a `verity` bundle with device-mapper, which tests/image/test_rauc_refuses.py does not
# have on the machine running the tests).
OTHER_ARCH = {"amd64": "arm64", "arm64": "amd64"}


def refused(arch: str) -> dict[str, tuple[str, str]]:
    """Name on the boot partition: (the bundle's compatible, its version)."""
    return {
        "pitlink-selftest-other.raucb": (f"pitlink-{OTHER_ARCH[arch]}", "9.0.0"),
        "pitlink-selftest-older.raucb": (f"pitlink-{arch}", "0.0.1"),
    }


def refused_bundles(folder: Path, arch: str) -> dict[str, Path]:
    """The bundles of refused(arch): a small root filesystem each, made with image/make-bundle."""
    tree = folder / "refused-tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz").write_bytes(os.urandom(1 << 20))
    fs = folder / "refused.ext4"
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(fs), "8M"], check=True, timeout=60
    )
    key = signing_key(TEST_KEY_DIR)
    made = {}
    for name, (compatible, version) in refused(arch).items():
        out = folder / name
        subprocess.run(
            [str(REPO / "image" / "make-bundle"), "--root", str(fs),
             "--arch", compatible.removeprefix("pitlink-"), "--version", version,
             "--key", str(key.key), "--cert", str(key.cert), "--out", str(out)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        made[name] = out
    return made


def check_refusals(console: str, arch: str) -> None:
    """What the box's RAUC said of each bundle of refused(arch): refused, and slot B untouched."""
    other = reported(console, "rauc install pitlink-selftest-other.raucb:")
    assert re.match(r"exit [1-9]", other), other
    assert "compatible" in other.lower() and f"pitlink-{OTHER_ARCH[arch]}" in other, other
    older = reported(console, "rauc install pitlink-selftest-older.raucb:")
    assert re.match(r"exit [1-9]", older), older
    assert "pre-install handler" in older.lower(), older
    handler = reported(console, "rauc handler said:")
    assert "refused: version 0.0.1 is not newer than " in handler, handler
    assert reported(console, "slot B") == "bad"  # as flashed: nothing was written to it
