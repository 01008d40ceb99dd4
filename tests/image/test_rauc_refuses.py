"""Real RAUC refusing what it must, with each image's own settings and keyring, run here.

RAUC's service runs on this machine, on a private D-Bus, with the amd64 image's own
/etc/rauc/system.conf, keyring, pre-install handler and boot loader backend (read out of the
built image with debugfs), only their paths moved into a temporary folder: the state partition,
the boot partition (the image's own boot entries) and the two root slots (files). `rauc
install` then asks it to install bundles made here:

- an unsigned bundle and a bundle in RAUC's `plain` format (signed with the key the image
  trusts): refused by the image's settings as they are;
- with `plain` allowed (the one change: this machine has no device-mapper, so RAUC cannot open
  a `verity` bundle here, and opening it is what RAUC does before it checks the compatible and
  runs the handler): the other architecture's bundle (its compatible), and a bundle older than
  the box's newest version (the pre-install handler) are refused and nothing is written; a newer
  one, and the older one once the downgrade permit names it, are written into the slot not
  running, and the boot loader backend makes that slot boot next, on trial.

The arm64 image's settings are the same file (image/customize.sh) but for the compatible; each
image's keyring is checked against its own bundle in
tests/image/test_field_update.py::test_the_build_writes_a_bundle_the_image_trusts, and a
`verity` bundle of the other architecture is refused inside the booted amd64 box
(tests/image/test_boot.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from appliance import (
    REPO,
    TEST_KEY_DIR,
    built_image,
    need,
    partition_table,
    signing_key,
)

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

# What the image's system.conf names, and where it is here.
IMAGE_PATHS = {
    "/var/lib/pitlink/rauc.status": "state/rauc.status",
    "/etc/rauc/keyring.pem": "keyring.pem",
    "/run/rauc": "mnt",
    "/run/pitlink/slot-a": "slot-a",
    "/run/pitlink/slot-b": "slot-b",
    "/usr/lib/pitlink/pitlink-slots": "pitlink-slots",
    "/usr/lib/pitlink/pitlink-preinstall": "pitlink-preinstall",
}
SLOT_BYTES = 16 << 20
UNWRITTEN = b"\xa5"  # what the slots hold until RAUC writes one


def root_file(image: Path, path: str, out: Path) -> Path:
    """A file of the image's root filesystem (partition 2), read with debugfs."""
    part = partition_table(image).partitions[1]
    done = subprocess.run(
        ["debugfs", "-R", f"dump -p {path} {out}", f"{image}?offset={part.start}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and out.is_file() and out.stat().st_size > 0, done.stderr
    return out


@dataclass
class Box:
    """The image's RAUC settings and scripts in `folder`, standing for a box booted in A."""

    folder: Path
    conf: Path
    version: str  # the image's own

    @property
    def esp(self) -> Path:
        return self.folder / "esp"

    def entries(self) -> list[str]:
        return sorted(p.name for p in (self.esp / "loader" / "entries").iterdir())

    def slot(self, name: str) -> bytes:
        return (self.folder / f"slot-{name}").read_bytes()

    def install(self, bundle: Path) -> tuple[int, str, str]:
        """`rauc install` through a RAUC service of its own: the exit status, what the client
        said, and what the service (and the handler) said."""
        log = self.folder / "service.log"
        script = (
            # RAUC's service and client on the session bus dbus-run-session starts (which
            # clears what the environment said of buses before).
            "export DBUS_STARTER_BUS_TYPE=session\n"
            f'rauc --conf="{self.conf}" service --override-boot-slot=A >"{log}" 2>&1 &\n'
            # The service owns its bus name a moment after it starts: ask until it answers.
            "for _ in $(seq 200); do\n"
            f'  rauc --conf="{self.conf}" status >/dev/null 2>&1 && break; sleep 0.05\n'
            "done\n"
            f'rauc --conf="{self.conf}" install "{bundle}"; status=$?\n'
            "kill %1; wait; exit $status\n"
        )
        env = {
            **os.environ,
            "PITLINK_ESP": str(self.esp),
            "PITLINK_STATE_DIR": str(self.folder / "state"),
            "PITLINK_VERSION_FILE": str(self.folder / "version"),
        }
        done = subprocess.run(
            ["dbus-run-session", "--", "bash", "-c", script],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr, log.read_text(errors="replace")


def host_box(image: Path, folder: Path, *, allow_plain: bool = False) -> Box:
    """The image's RAUC settings, keyring, handler and backend, and its boot entries, with a
    state folder and two unwritten root slots."""
    for tool in ("rauc", "dbus-run-session", "debugfs", "mcopy", "mksquashfs", "mke2fs"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    need(os.geteuid() == 0, "RAUC's service needs root here (loop devices, mounts)")
    folder.mkdir()
    (folder / "state" / "update").mkdir(parents=True)
    (folder / "mnt").mkdir()
    conf = root_file(image, "/etc/rauc/system.conf", folder / "image-system.conf").read_text()
    for path in ("/etc/rauc/keyring.pem", "/usr/lib/pitlink/pitlink-slots",
                 "/usr/lib/pitlink/pitlink-preinstall", "/usr/lib/pitlink/conf.sh",
                 "/usr/lib/pitlink/version"):  # fmt: skip
        root_file(image, path, folder / Path(path).name)
    version = (folder / "version").read_text().strip()
    for theirs, ours in IMAGE_PATHS.items():
        assert f"={theirs}\n" in conf, (theirs, conf)
        conf = conf.replace(f"={theirs}\n", f"={folder / ours}\n")
    assert "\nbundle-formats=-plain\n" in conf, conf
    if allow_plain:
        conf = conf.replace("\nbundle-formats=-plain\n", "\n")
    (folder / "system.conf").write_text(conf)
    for name in ("a", "b"):
        (folder / f"slot-{name}").write_bytes(UNWRITTEN * SLOT_BYTES)
    part = partition_table(image).partitions[0]
    (folder / "esp").mkdir()
    subprocess.run(
        ["mcopy", "-s", "-i", f"{image}@@{part.start}", "::/loader", f"{folder / 'esp'}/"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True, capture_output=True,
        timeout=60,
    )  # fmt: skip
    box = Box(folder, folder / "system.conf", version)
    assert box.entries() == ["pitlink-a.conf", "pitlink-b+0.conf"]
    return box


def content(folder: Path, *, compatible: str, version: str, fmt: str) -> Path:
    """A bundle's content folder: a small root filesystem and its manifest (no hooks)."""
    tree = folder / "tree"
    (tree / "usr/lib/pitlink").mkdir(parents=True)
    (tree / "usr/lib/pitlink/version").write_text(version + "\n")
    c = folder / "content"
    c.mkdir()
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(c / "root.ext4"), "4M"],
        check=True, timeout=60,
    )  # fmt: skip
    (c / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat={fmt}\n\n"
        "[image.rootfs]\nfilename=root.ext4\n"
    )
    return c


def signed(folder: Path, *, compatible: str = "pitlink-amd64", version: str = "99.0.0",
           fmt: str = "plain") -> Path:  # fmt: skip
    """A bundle signed with the key the test images trust."""
    folder.mkdir()
    c = content(folder, compatible=compatible, version=version, fmt=fmt)
    key = signing_key(TEST_KEY_DIR)
    out = folder / "bundle.raucb"
    subprocess.run(
        ["rauc", "bundle", f"--cert={key.cert}", f"--key={key.key}", str(c), str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


def unsigned(folder: Path) -> Path:
    """A `verity` bundle's content as a squashfs with no signature after it."""
    folder.mkdir()
    c = content(folder, compatible="pitlink-amd64", version="99.0.0", fmt="verity")
    out = folder / "bundle.raucb"
    subprocess.run(
        ["mksquashfs", str(c), str(out), "-quiet", "-noappend", "-all-root"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def image() -> Path:
    return built_image("amd64")


def untouched(box: Box) -> None:
    assert box.slot("a") == box.slot("b") == UNWRITTEN * SLOT_BYTES
    assert box.entries() == ["pitlink-a.conf", "pitlink-b+0.conf"]


def test_the_image_refuses_an_unsigned_and_a_plain_bundle(image: Path, tmp_path: Path) -> None:
    box = host_box(image, tmp_path / "box")
    code, said, _ = box.install(unsigned(tmp_path / "unsigned"))
    assert code != 0, said
    assert "signature" in said.lower(), said
    untouched(box)

    # Signed with the very key the image trusts, but in the format the image does not take.
    plain = signed(tmp_path / "plain")
    info = subprocess.run(
        ["rauc", "info", f"--keyring={box.folder / 'keyring.pem'}", str(plain)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr  # the signature is good
    code, said, _ = box.install(plain)
    assert code != 0, said
    assert "plain" in said and "not allowed" in said, said
    untouched(box)


def test_the_handler_and_the_compatible_stop_rauc_before_it_writes(
    image: Path, tmp_path: Path
) -> None:
    box = host_box(image, tmp_path / "box", allow_plain=True)

    code, said, log = box.install(signed(tmp_path / "arm64", compatible="pitlink-arm64"))
    assert code != 0, said
    assert "compatible" in said.lower() and "pitlink-arm64" in said, said
    untouched(box)

    # Older than the version the image runs (the agent has written no record yet).
    code, said, log = box.install(signed(tmp_path / "older", version="0.0.1"))
    assert code != 0, said
    refusal = f"refused: version 0.0.1 is not newer than {box.version}, the newest this box has run"
    assert refusal in log, log
    assert "handler" in said.lower(), said
    untouched(box)
    # The newest version this box has run is the agent's record when that is higher.
    (box.folder / "state" / "update" / "highest-version").write_text("99.0.0\n")
    code, said, log = box.install(signed(tmp_path / "same", version="99.0.0"))
    assert code != 0 and "refused: version 99.0.0 is not newer than 99.0.0" in log, log
    untouched(box)

    # Newer: written into B (the slot not running), which boots next, once.
    code, said, log = box.install(signed(tmp_path / "newer", version="99.0.1"))
    assert code == 0, (said, log)
    assert "allowed: version 99.0.1 is newer than 99.0.0" in log, log
    root = (tmp_path / "newer" / "content" / "root.ext4").read_bytes()
    assert box.slot("b")[: len(root)] == root
    assert box.slot("a") == UNWRITTEN * SLOT_BYTES
    assert box.entries() == ["pitlink-a.conf", "pitlink-b+1.conf"]

    # The downgrade asked for on the status page: the permit names exactly this version.
    (box.folder / "state" / "update" / "allow-downgrade").write_text("0.0.1\n")
    code, said, log = box.install(signed(tmp_path / "downgrade", version="0.0.1"))
    assert code == 0, (said, log)
    assert "the downgrade was asked for on the status page" in log, log
    root = (tmp_path / "downgrade" / "content" / "root.ext4").read_bytes()
    assert box.slot("b")[: len(root)] == root


def test_the_handler_is_the_one_in_the_repository(image: Path, tmp_path: Path) -> None:
    """The image carries image/'s handler, wired into RAUC's settings."""
    handler = root_file(image, "/usr/lib/pitlink/pitlink-preinstall", tmp_path / "handler")
    assert (
        handler.read_bytes()
        == (
            REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink" / "pitlink-preinstall"
        ).read_bytes()
    )
    conf = root_file(image, "/etc/rauc/system.conf", tmp_path / "system.conf").read_text()
    assert "\npre-install=/usr/lib/pitlink/pitlink-preinstall\n" in conf


@pytest.mark.timeout(4500)  # the image may be built first (arm64: up to 50 minutes)
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_each_image_trusts_its_own_bundle_and_no_other_key(arch: str, tmp_path: Path) -> None:
    """dist/pitlink-ARCH-VERSION.raucb, as the build wrote it: the image's own root filesystem,
    verified with the keyring inside the image (not the key the test signed with), which
    trusts nothing else."""
    need(shutil.which("rauc") is not None, "rauc is missing: ./scripts/test installs it")
    image = built_image(arch)
    version = root_file(image, "/usr/lib/pitlink/version", tmp_path / "version").read_text()
    version = version.strip()
    made = REPO / "dist" / f"pitlink-{arch}-{version}.raucb"
    assert made.is_file(), sorted(p.name for p in (REPO / "dist").iterdir())
    keyring = root_file(image, "/etc/rauc/keyring.pem", tmp_path / "keyring.pem")
    info = subprocess.run(
        ["rauc", "info", "--output-format=json", f"--keyring={keyring}", str(made)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    manifest = json.loads(info.stdout)
    assert manifest["compatible"] == f"pitlink-{arch}"
    assert manifest["version"] == version
    conf = root_file(image, "/etc/rauc/system.conf", tmp_path / "system.conf").read_text()
    assert f"\ncompatible=pitlink-{arch}\n" in conf
    assert "\npath=/etc/rauc/keyring.pem\n" in conf
    assert "\npre-install=/usr/lib/pitlink/pitlink-preinstall\n" in conf
    # The same bundle against a keyring of another key: refused, so the check above means it.
    other = signing_key(tmp_path / "someone-else").cert
    refused = subprocess.run(
        ["rauc", "info", f"--keyring={other}", str(made)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "signature" in refused.stderr.lower(), refused.stderr
