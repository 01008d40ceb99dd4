"""Which root slot a Raspberry Pi boots: pitlink-slots with U-Boot, and U-Boot's boot script.

On a Pi, U-Boot runs boot.scr (image/uboot/boot.cmd) from the boot partition, and both it and
image/rootfs/usr/lib/pitlink/pitlink-slots (RAUC's boot loader backend) read and write the
slots' states in pitlink-boot.txt there. The first tests run the script against a folder (the
script remounts only a read-only mount point, and a folder is none), as tests/image/test_slots.py
does for systemd-boot. The last hands the same file to the real U-Boot and boot.scr from the
arm64 image under qemu's emulated Raspberry Pi 3, boot after boot, and reads which slot the
boot script started and what it wrote: that the script's idea of the boot script's choice is
the boot script's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from appliance import (
    WRONG_SLOT_QUESTIONS,
    built_image,
    check_fresh_image,
    console_line,
    fat_get,
    need,
)
from appliance import run_slots as slots
from appliance import slots_out as out

FLASHED = "pitlink_primary=A\npitlink_A=good\npitlink_B=bad\n"
# Both slots good, and B primary only on a line past the first 4 KiB.
# Written by hand in Notepad: B primary and good, CR LF line ends.
HAND_MADE = b"pitlink_primary=B\r\npitlink_A=good\r\npitlink_B=good\r\n"
PAST_4_KIB = "pitlink_A=good\npitlink_B=good\n" + "#" * 5000 + "\npitlink_primary=B\n"


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    """A fresh Pi image's boot partition, as far as the slots go: U-Boot's boot script, and A
    good and primary, B bad (empty until the first update)."""
    esp = tmp_path / "esp"
    esp.mkdir()
    (esp / "boot.scr").write_bytes(b"")
    (esp / "pitlink-boot.txt").write_text(FLASHED)
    return esp


def states(esp: Path) -> dict[str, str]:
    text = (esp / "pitlink-boot.txt").read_bytes().decode().replace("\0", "")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def boot(esp: Path) -> str:
    """What the boot script does (image/uboot/boot.cmd), in Python: the slot it starts,
    using up a trial."""
    s = states(esp)
    primary = s.get("pitlink_primary", "A")
    other = "A" if primary == "B" else "B"
    for slot in (primary, other):
        if s.get(f"pitlink_{slot}") == "good":
            return slot
        if s.get(f"pitlink_{slot}") == "trial":
            s[f"pitlink_{slot}"] = "tried"
            (esp / "pitlink-boot.txt").write_text("".join(f"{k}={v}\n" for k, v in s.items()))
            return slot
    return primary


def test_a_fresh_image_boots_a_and_b_is_bad(esp: Path) -> None:
    check_fresh_image(esp)


def test_an_update_boots_the_new_slot_once_then_it_is_marked_good(esp: Path) -> None:
    # What RAUC asks, installing into B: B bad while it is written, then B primary.
    out(esp, "set-state", "B", "bad")
    assert out(esp, "get-primary") == "A"
    out(esp, "set-primary", "B")
    assert states(esp) == {"pitlink_primary": "B", "pitlink_A": "good", "pitlink_B": "trial"}
    assert out(esp, "get-primary") == "B"
    assert boot(esp) == "B"  # the trial
    assert states(esp)["pitlink_B"] == "tried"
    assert slots(esp, "on-trial", booted="B").returncode == 0
    out(esp, "set-state", "B", "good", booted="B")  # rauc status mark-good
    assert states(esp) == {"pitlink_primary": "B", "pitlink_A": "good", "pitlink_B": "good"}
    assert out(esp, "get-primary", booted="B") == "B"
    assert slots(esp, "on-trial", booted="B").returncode == 1


def test_a_trial_that_is_never_marked_good_falls_back(esp: Path) -> None:
    out(esp, "set-primary", "B")
    assert boot(esp) == "B"  # ... and the new slot crashes, hangs or fails its health check
    assert out(esp, "get-primary", booted="B") == "A"
    assert out(esp, "get-state", "B", booted="A") == "bad"
    assert boot(esp) == "A"
    out(esp, "set-state", "B", "bad")
    out(esp, "set-primary", "B")
    assert states(esp)["pitlink_B"] == "trial"


def test_a_power_cut_while_writing_leaves_the_old_slot_primary(esp: Path) -> None:
    out(esp, "set-primary", "B")
    boot(esp)
    out(esp, "set-state", "B", "good", booted="B")
    out(esp, "set-state", "A", "bad", booted="B")  # RAUC writes A next, and is cut off
    assert out(esp, "get-primary", booted="B") == "B"
    assert boot(esp) == "B"


def test_what_u_boot_wrote_is_read_and_kernel_options_are_kept(esp: Path) -> None:
    # U-Boot's `env export -t` ends the file with a NUL; a line for more kernel options (the
    # emulated Pi's test uses one) survives every change.
    (esp / "pitlink-boot.txt").write_bytes(
        b"pitlink_A=good\npitlink_B=tried\npitlink_args=quiet\npitlink_primary=B\n\0"
    )
    assert out(esp, "get-primary", booted="B") == "A"
    assert slots(esp, "on-trial", booted="B").returncode == 0
    out(esp, "set-state", "B", "good", booted="B")
    assert states(esp) == {
        "pitlink_primary": "B",
        "pitlink_A": "good",
        "pitlink_B": "good",
        "pitlink_args": "quiet",
    }


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe garbage \0\0\0", b"pitlink_primary=C\npitlink_A=maybe\npitlink_B=good\n"],
)
def test_a_damaged_file_means_what_the_boot_script_assumes(esp: Path, content: bytes) -> None:
    """Slot A, as flashed, for whatever cannot be read (the boot script does the same)."""
    (esp / "pitlink-boot.txt").write_bytes(content)
    if b"pitlink_B=good" in content:
        assert out(esp, "get-state", "B") == "good"
    else:
        assert out(esp, "get-state", "B") == "bad"
    assert out(esp, "get-primary") == "A"
    assert out(esp, "get-state", "A") == "good"
    (esp / "pitlink-boot.txt").unlink()
    assert out(esp, "get-primary") == "A"


def test_a_file_mended_by_hand_on_windows_is_read(esp: Path) -> None:
    (esp / "pitlink-boot.txt").write_bytes(HAND_MADE)
    assert out(esp, "get-primary") == "B"
    assert out(esp, "get-state", "B") == "good"


def test_what_lies_past_4_kib_of_the_file_is_not_read(esp: Path) -> None:
    """As the boot script loads it (at most 4 KiB, so that a huge file cannot spill over the
    memory it loads the kernel into)."""
    (esp / "pitlink-boot.txt").write_text(PAST_4_KIB)
    assert out(esp, "get-primary") == "A"
    assert out(esp, "get-state", "B") == "good"


@pytest.mark.parametrize("args, complaint", WRONG_SLOT_QUESTIONS)
def test_wrong_questions_get_a_clear_answer(esp: Path, args: list[str], complaint: str) -> None:
    done = slots(esp, *args)
    assert done.returncode == 2
    assert complaint in done.stderr
    assert (esp / "pitlink-boot.txt").read_text() == FLASHED


# -- the real U-Boot ---------------------------------------------------------------------------


def mtools(*args: str) -> bytes:
    return subprocess.run(
        list(args), env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True,
        capture_output=True, timeout=60,
    ).stdout  # fmt: skip


def started(card: Path, uboot: Path, dtb: Path, serial: Path) -> str:
    """Start the emulated Pi 3 with U-Boot until the boot script says which slot it starts."""
    argv = [
        "qemu-system-aarch64", "-machine", "raspi3b", "-kernel", str(uboot), "-dtb", str(dtb),
        "-drive", f"file={card},format=raw,if=sd", "-display", "none", "-monitor", "none",
        "-serial", "null", "-serial", f"file:{serial}",
    ]  # fmt: skip
    return console_line(argv, serial, "Pitlink: starting slot ").split()[0]


@pytest.mark.image
@pytest.mark.timeout(4500)  # the arm64 image may be built first
def test_u_boot_starts_the_slot_the_script_says(esp: Path, tmp_path: Path) -> None:
    need(shutil.which("qemu-system-aarch64") is not None, "qemu-system-aarch64 is missing")
    image = built_image("arm64")
    uboot, dtb = tmp_path / "u-boot.bin", tmp_path / "bcm2837-rpi-3-b.dtb"
    uboot.write_bytes(fat_get(image, "u-boot.bin"))
    dtb.write_bytes(fat_get(image, dtb.name))
    assert fat_get(image, "pitlink-boot.txt").decode() == FLASHED
    # A card like the image's, small: the boot partition with the image's boot script and no
    # kernels (the script starts none, and says so), and two root slots for `part uuid`. qemu's
    # SD card must be a power of two in size.
    card, fat = tmp_path / "card.img", tmp_path / "boot.fat"
    card.write_bytes(b"")
    os.truncate(card, 64 << 20)
    subprocess.run(
        ["sfdisk", "--quiet", str(card)],
        input="label: dos\nlabel-id: 0x5eedcafe\nstart=2048, size=81920, type=c, bootable\n"
        "size=8192, type=83\nsize=8192, type=83\n",
        text=True, check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(["mkfs.vfat", "-F", "16", "-C", str(fat), str(40 * 1024)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    (tmp_path / "boot.scr").write_bytes(fat_get(image, "boot.scr"))
    mtools("mcopy", "-i", str(fat), str(tmp_path / "boot.scr"), "::boot.scr")
    subprocess.run(["dd", f"if={fat}", f"of={card}", "bs=1M", "seek=1", "conv=notrunc",
                    "status=none"], check=True, timeout=60)  # fmt: skip
    serial = tmp_path / "serial.log"
    on_card = f"{card}@@1M"

    def put() -> None:
        mtools("mcopy", "-o", "-i", on_card, str(esp / "pitlink-boot.txt"), "::pitlink-boot.txt")

    def get() -> None:
        (esp / "pitlink-boot.txt").write_bytes(mtools("mtype", "-i", on_card, "::pitlink-boot.txt"))

    def start() -> str:
        return started(card, uboot, dtb, serial)

    put()
    assert start() == out(esp, "get-primary") == "A"
    assert "root PARTUUID=5eedcafe-02; A good, B bad" in serial.read_text(errors="replace")
    out(esp, "set-state", "B", "bad")
    out(esp, "set-primary", "B")
    put()
    assert start() == "B"  # the trial
    assert "root PARTUUID=5eedcafe-03;" in serial.read_text(errors="replace")
    get()
    assert states(esp)["pitlink_B"] == "tried"  # the boot script used the try up first
    assert slots(esp, "on-trial", booted="B").returncode == 0
    assert start() == out(esp, "get-primary", booted="B") == "A"  # not marked good
    out(esp, "set-primary", "B")
    put()
    assert start() == "B"
    get()
    out(esp, "set-state", "B", "good", booted="B")
    put()
    assert start() == out(esp, "get-primary", booted="B") == "B"
    assert start() == "B"
    # What cannot be read or is not understood is as flashed, on both sides.
    for damaged in (b"\xff\xfe\0garbage", b"pitlink_primary=C\npitlink_A=maybe\npitlink_B=trial\n"):
        (esp / "pitlink-boot.txt").write_bytes(damaged)
        put()
        assert start() == out(esp, "get-primary") == "A"
    (esp / "pitlink-boot.txt").write_text(PAST_4_KIB)
    put()
    assert start() == out(esp, "get-primary") == "A"
    # Mended by hand on Windows: CR LF line ends.
    (esp / "pitlink-boot.txt").write_bytes(HAND_MADE)
    put()
    assert start() == out(esp, "get-primary") == "B"
    # A file that names B alone: A is good all the same (U-Boot's import drops what is missing).
    (esp / "pitlink-boot.txt").write_bytes(b"pitlink_primary=B\npitlink_B=bad\n")
    put()
    assert start() == out(esp, "get-primary") == "A"
