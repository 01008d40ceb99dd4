"""Which root slot boots: image/rootfs/usr/lib/pitlink/pitlink-slots, RAUC's boot loader backend.

The script renames and rewrites systemd-boot's entries on the boot partition; here the boot
partition is a folder (the script remounts only a read-only mount point, and a folder is none),
and the kernel command line a file. The last test hands the same files to the real systemd-boot
(from the amd64 image) under qemu and reads which entry it started, boot after boot: that the
script's idea of systemd-boot's order is systemd-boot's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from appliance import (
    SLOTS_SCRIPT,
    WRONG_SLOT_QUESTIONS,
    built_image,
    check_fresh_image,
    console_line,
    need,
    partition_table,
)
from appliance import run_slots as slots
from appliance import slots_out as out
from guests import OVMF


def entry(slot: str, sort_key: str) -> str:
    return (
        f"title    Pitlink (slot {slot})\nsort-key {sort_key}\nlinux    /{slot.lower()}/vmlinuz\n"
        f"options  console=ttyS0 rauc.slot={slot}\n"
    )


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    """A fresh image's boot entries: A good and first, B bad (empty until the first update)."""
    entries = tmp_path / "esp" / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "pitlink-a.conf").write_text(entry("A", "pitlink-1"))
    (entries / "pitlink-b+0.conf").write_text(entry("B", "pitlink-2"))
    return tmp_path / "esp"


def names(esp: Path) -> list[str]:
    return sorted(p.name for p in (esp / "loader" / "entries").iterdir())


def sort_key(esp: Path, name: str) -> str:
    text = (esp / "loader" / "entries" / name).read_text()
    return next(line.split()[1] for line in text.splitlines() if line.startswith("sort-key"))


def boot(esp: Path, slot: str) -> None:
    """What systemd-boot does before starting a counted entry: one try used."""
    entries = esp / "loader" / "entries"
    x = slot.lower()
    for path in entries.glob(f"pitlink-{x}+*.conf"):
        left, _, done = path.stem.split("+", 1)[1].partition("-")
        path.rename(entries / f"pitlink-{x}+{int(left) - 1}-{int(done or 0) + 1}.conf")


def test_a_fresh_image_boots_a_and_b_is_bad(esp: Path) -> None:
    check_fresh_image(esp)


def test_an_update_boots_the_new_slot_once_then_it_is_marked_good(esp: Path) -> None:
    # What RAUC asks, installing into B: B bad while it is written, then B primary.
    out(esp, "set-state", "B", "bad")
    assert out(esp, "get-primary") == "A"
    out(esp, "set-primary", "B")
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+1.conf"]
    assert sort_key(esp, "pitlink-b+1.conf") == "pitlink-1"
    assert sort_key(esp, "pitlink-a.conf") == "pitlink-2"
    assert out(esp, "get-primary") == "B"
    boot(esp, "B")  # the trial boot
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+0-1.conf"]
    assert slots(esp, "on-trial", booted="B").returncode == 0
    out(esp, "set-state", "B", "good", booted="B")  # rauc status mark-good
    assert names(esp) == ["pitlink-a.conf", "pitlink-b.conf"]
    assert out(esp, "get-primary", booted="B") == "B"
    assert slots(esp, "on-trial", booted="B").returncode == 1


def test_a_trial_that_is_never_marked_good_falls_back(esp: Path) -> None:
    out(esp, "set-primary", "B")
    boot(esp, "B")  # ... and the new slot crashes, hangs or fails its health check
    assert out(esp, "get-primary", booted="B") == "A"
    assert out(esp, "get-state", "B", booted="A") == "bad"
    # The next update into B tries it again.
    out(esp, "set-state", "B", "bad")
    out(esp, "set-primary", "B")
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+1.conf"]


def test_a_power_cut_while_writing_leaves_the_old_slot_primary(esp: Path) -> None:
    # B was good and primary (an earlier update); RAUC writes A next and is cut off after
    # marking it bad, before making it primary.
    out(esp, "set-primary", "B")
    boot(esp, "B")
    out(esp, "set-state", "B", "good", booted="B")
    out(esp, "set-state", "A", "bad", booted="B")
    assert names(esp) == ["pitlink-a+0.conf", "pitlink-b.conf"]
    assert out(esp, "get-primary", booted="B") == "B"


@pytest.mark.parametrize("args, complaint", WRONG_SLOT_QUESTIONS)
def test_wrong_questions_get_a_clear_answer(esp: Path, args: list[str], complaint: str) -> None:
    done = slots(esp, *args)
    assert done.returncode == 2
    assert complaint in done.stderr
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+0.conf"]


def test_a_damaged_boot_partition_is_said_not_guessed(esp: Path) -> None:
    """Two entries for B: what needs B's entry fails with 2 and says why (on-trial's "no" is
    1, and pitlink-health must not read a failure as that)."""
    (esp / "loader" / "entries" / "pitlink-b.conf").write_text(entry("B", "pitlink-2"))
    for args in (["get-primary"], ["get-state", "B"], ["set-primary", "B"], ["set-primary", "A"]):
        done = slots(esp, *args)
        assert done.returncode == 2, (args, done)
        assert "expected one boot entry for slot B" in done.stderr
    done = slots(esp, "on-trial", booted="B")
    assert done.returncode == 2, done
    assert "expected one boot entry for slot B" in done.stderr
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+0.conf", "pitlink-b.conf"]
    # A's entry alone is whole: A's questions are answered.
    assert slots(esp, "on-trial", booted="A").returncode == 1
    assert out(esp, "get-state", "A") == "good"


def test_a_boot_without_a_slot_on_its_command_line_is_said(esp: Path) -> None:
    (esp.parent / "cmdline").write_text("root=x ro\n")
    for command in ("booted", "on-trial"):
        done = subprocess.run(
            ["bash", str(SLOTS_SCRIPT), command],
            env={**os.environ, "PITLINK_ESP": str(esp), "PITLINK_CMDLINE": str(esp.parent / "cmdline")},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 2 and "no rauc.slot=" in done.stderr, (command, done)


# -- the real systemd-boot ---------------------------------------------------------------------


def started(fat: Path, serial: Path) -> str:
    """Boot the FAT image under qemu until the kernel prints its command line: which slot."""
    argv = [
        "qemu-system-x86_64", "-machine", "q35", "-m", "512", "-bios", str(OVMF),
        "-drive", f"file={fat},format=raw,if=virtio", "-display", "none", "-monitor", "none",
        "-nic", "none", "-no-reboot", "-serial", f"file:{serial}",
    ]  # fmt: skip
    return console_line(argv, serial, " rauc.slot=", timeout=120).split()[0]


@pytest.mark.image
@pytest.mark.timeout(1500)  # the image may be built first
def test_systemd_boot_starts_the_slot_the_script_says(esp: Path, tmp_path: Path) -> None:
    need(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is missing")
    need(OVMF.is_file(), f"{OVMF} is missing (apt-get install ovmf)")
    image = built_image("amd64")
    start = partition_table(image).partitions[0].start
    mt = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for name in ("EFI/BOOT/BOOTX64.EFI", "a/vmlinuz"):
        target = esp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mcopy", "-i", f"{image}@@{start}", f"::{name}", str(target)],
                       env=mt, check=True, timeout=60)  # fmt: skip
    shutil.copytree(esp / "a", esp / "b")
    (esp / "loader" / "loader.conf").write_text("timeout 0\neditor no\n")
    fat = tmp_path / "esp.img"
    serial = tmp_path / "serial.log"

    def put() -> None:
        fat.unlink(missing_ok=True)
        subprocess.run(["mkfs.vfat", "-F", "32", "-C", str(fat), "65536"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        subprocess.run(["mcopy", "-s", "-i", str(fat), *map(str, esp.iterdir()), "::/"],
                       env=mt, check=True, timeout=60)  # fmt: skip

    def get() -> None:
        shutil.rmtree(esp / "loader" / "entries")
        subprocess.run(["mcopy", "-s", "-i", str(fat), "::loader/entries", str(esp / "loader")],
                       env=mt, check=True, timeout=60)  # fmt: skip

    put()
    assert started(fat, serial) == out(esp, "get-primary") == "A"
    out(esp, "set-state", "B", "bad")
    out(esp, "set-primary", "B")
    put()
    assert started(fat, serial) == "B"  # the trial
    get()
    assert names(esp) == ["pitlink-a.conf", "pitlink-b+0-1.conf"]  # systemd-boot counted it
    assert started(fat, serial) == out(esp, "get-primary", booted="B") == "A"  # not marked good
    out(esp, "set-primary", "B")
    put()
    assert started(fat, serial) == "B"
    get()
    out(esp, "set-state", "B", "good", booted="B")
    put()
    assert started(fat, serial) == out(esp, "get-primary", booted="B") == "B"
    assert started(fat, serial) == "B"
