"""The Raspberry Pi's side of dist/pitlink-arm64.img: its boot files, read from the image, for
every supported board.

A Raspberry Pi boots from the card's first partition only if it is FAT in an MBR; its GPU
firmware (bootcode.bin on a Pi 3 and Zero 2 W, start4.elf on a Pi 4) reads config.txt, loads
the board's device tree named as the mainline kernel names them (upstream_kernel=1) and starts
U-Boot, which runs boot.scr: it picks a root slot and starts that slot's kernel and initramfs.
These tests read all of that from the image with mtools and sfdisk, and the root filesystem
with debugfs (nothing is mounted).

The card itself boots in qemu's emulated Raspberry Pi 3 in tests/image/test_boot.py, and its
U-Boot picks slots in tests/image/test_pi_slots.py. There the GPU firmware is not emulated (qemu
loads U-Boot and the device tree itself), and only the Pi 3 is: what the firmware would do, and
the files of the other boards, are checked here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from appliance import (
    REPO,
    Partition,
    Table,
    built_image,
    fat_get,
    fat_names,
    need,
    partition_table,
)

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

# The device trees the firmware looks for, by board (Debian's kernel names them as mainline).
BOARDS = {
    "Raspberry Pi 3 Model B": "bcm2837-rpi-3-b.dtb",
    "Raspberry Pi 3 Model B+": "bcm2837-rpi-3-b-plus.dtb",
    "Raspberry Pi 3 Model A+": "bcm2837-rpi-3-a-plus.dtb",
    "Raspberry Pi 4 Model B": "bcm2711-rpi-4-b.dtb",
    "Raspberry Pi 400": "bcm2711-rpi-400.dtb",
    "Raspberry Pi Zero 2 W": "bcm2837-rpi-zero-2-w.dtb",
}
# The GPU firmware: bootcode.bin, start.elf and fixup.dat start a Pi 3 and a Zero 2 W;
# start4.elf and fixup4.dat a Pi 4 (its first stage is in its EEPROM).
FIRMWARE = ["bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"]


@pytest.fixture(scope="module")
def image() -> Path:
    for tool in ("mcopy", "sfdisk", "debugfs", "fdtget"):
        need(shutil.which(tool) is not None, f"{tool} is missing: ./scripts/test installs it")
    return built_image("arm64")


@pytest.fixture(scope="module")
def table(image: Path) -> Table:
    return partition_table(image)


@pytest.fixture(scope="module")
def root_fs(image: Path, table: Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Partition 2 (the root filesystem) as a file of its own, for debugfs."""
    root = table.partitions[1]
    out = tmp_path_factory.mktemp("root") / "root.ext4"
    mib = 1024 * 1024
    assert root.start % mib == 0 and root.size % mib == 0
    subprocess.run(
        ["dd", f"if={image}", f"of={out}", "bs=1M", f"skip={root.start // mib}",
         f"count={root.size // mib}", "conv=sparse", "status=none"],
        check=True,
        timeout=300,
    )  # fmt: skip
    return out


def fat_label(image: Path, boot: Partition) -> str:
    """The FAT filesystem's volume label, as mtools reads it."""
    done = subprocess.run(
        ["mlabel", "-s", "-i", f"{image}@@{boot.start}", "::"],
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.split(" is ", 1)[-1].strip()  # "Volume label is PITLINK"


def debugfs(fs: Path, command: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", command, str(fs)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_card_is_an_mbr_whose_first_partition_the_pi_boots_from(table: Table) -> None:
    # The Raspberry Pi 3's boot ROM reads an MBR only, and a FAT partition (type c: FAT32 LBA);
    # then two root slots of 1 GiB and the state partition: the four partitions an MBR holds.
    assert table.label == "dos"
    boot, root_a, root_b, state = table.partitions
    assert boot.type == "c" and boot.bootable
    assert root_a.type == root_b.type == state.type == "83"
    assert root_a.size == root_b.size == 1 << 30
    assert state.size == 512 << 20


def test_the_boot_script_and_fstab_name_the_partitions_of_this_very_card(
    image: Path, table: Table, root_fs: Path
) -> None:
    boot, *_, state = table.partitions
    # boot.scr is image/uboot/boot.cmd behind mkimage's header: U-Boot reads the root slot's
    # PARTUUID from this card when it starts it (`part uuid`), so no id is written into it.
    script = fat_get(image, "boot.scr")
    source = (REPO / "image" / "uboot" / "boot.cmd").read_bytes()
    assert source in script
    bootargs = re.search(rb'^setenv bootargs "(.*)"$', source, re.M)
    assert bootargs is not None
    words = bootargs.group(1).decode().split()
    assert "root=PARTUUID=${pitlink_root}" in words
    assert "ro" in words and "rootwait" in words and "rauc.slot=${pitlink_slot}" in words
    # The serial console on the GPIO header: the mini UART, ttyS1 with Debian's kernel.
    assert "console=ttyS1,115200" in words
    # As flashed: slot A starts, slot B (empty) never.
    states = fat_get(image, "pitlink-boot.txt").decode().split()
    assert states == ["pitlink_primary=A", "pitlink_A=good", "pitlink_B=bad"]

    # fstab names the other partitions by their filesystems' labels (the same root filesystem
    # must serve any card), and the root not at all (the command line's root= and ro).
    fstab = debugfs(root_fs, "cat /etc/fstab")
    mounts = {
        line.split()[1]: line.split()[0]
        for line in fstab.splitlines()
        if line.strip() and not line.startswith("#") and line.split()[0] != "tmpfs"
    }
    assert mounts == {"/boot/firmware": "LABEL=PITLINK", "/var/lib/pitlink": "LABEL=pitlink-state"}
    assert fat_label(image, boot) == "PITLINK"
    state_fs = subprocess.run(
        ["dumpe2fs", "-h", f"{image}?offset={state.start}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"^Filesystem volume name:\s+pitlink-state$", state_fs, re.M), state_fs


def test_config_txt_starts_64_bit_u_boot_which_finds_slot_a_kernel(image: Path) -> None:
    names = fat_names(image)
    config = fat_get(image, "config.txt").decode()
    settings = dict(
        line.split("=", 1) for line in config.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["arm_64bit"] == "1"
    assert settings["upstream_kernel"] == "1"
    assert settings["enable_uart"] == "1"
    assert settings["kernel"] == "u-boot.bin"
    # U-Boot loads the kernel and the initramfs, not the firmware.
    assert "initramfs" not in config
    for name in ("u-boot.bin", "boot.scr", "pitlink-boot.txt", *FIRMWARE):
        assert name in names, f"{name} is not on the boot partition"
    uboot = fat_get(image, "u-boot.bin")
    assert b"U-Boot 20" in uboot and b"uboot.env" in uboot
    kernel = fat_get(image, "a/vmlinuz")
    # An uncompressed arm64 Image (booti), with its "ARM\x64" magic at byte 56.
    assert kernel[56:60] == b"ARM\x64"
    assert len(fat_get(image, "a/initrd.img")) > 1 << 20


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_device_tree_of_each_supported_board_is_there(image: Path, board: str) -> None:
    assert BOARDS[board] in fat_names(image), f"{board}: no {BOARDS[board]}"


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_hardware_watchdog_is_enabled_for_each_board(
    image: Path, board: str, tmp_path: Path, root_fs: Path
) -> None:
    """The watchdog is the SoC's power manager (bcm2835-pm): enabled in the device tree, its
    driver on the root filesystem, and systemd set to feed it (RuntimeWatchdogSec)."""
    dtb = tmp_path / BOARDS[board]
    dtb.write_bytes(fat_get(image, BOARDS[board]))
    nodes = subprocess.run(
        ["fdtget", "-l", str(dtb), "/soc"], capture_output=True, text=True, check=True
    ).stdout.split()
    watchdogs = [n for n in nodes if n.startswith("watchdog@")]
    assert len(watchdogs) == 1, nodes
    node = f"/soc/{watchdogs[0]}"
    compatible = subprocess.run(
        ["fdtget", "-t", "s", str(dtb), node, "compatible"], capture_output=True, text=True
    ).stdout
    assert "brcm,bcm2835-pm" in compatible, compatible
    status = subprocess.run(
        ["fdtget", "-t", "s", str(dtb), node, "status"], capture_output=True, text=True
    )
    if status.returncode != 0:
        # No status property means "okay"; any other error is not an answer.
        assert "FDT_ERR_NOTFOUND" in status.stderr, status.stderr
        properties = subprocess.run(
            ["fdtget", "-p", str(dtb), node], capture_output=True, text=True, check=True
        ).stdout.split()
        assert "compatible" in properties and "status" not in properties, properties
    else:
        assert status.stdout.strip() in ("okay", "ok"), status.stdout

    kernels = debugfs(root_fs, "ls -p /usr/lib/modules")
    versions = [f.split("/")[5] for f in kernels.splitlines() if f.count("/") > 5]
    versions = [v for v in versions if v not in (".", "..", "")]
    assert len(versions) == 1, kernels
    driver = debugfs(root_fs, f"ls -p /usr/lib/modules/{versions[0]}/kernel/drivers/watchdog")
    assert "bcm2835_wdt.ko" in driver
    conf = debugfs(root_fs, "cat /etc/systemd/system.conf.d/pitlink-watchdog.conf")
    assert re.search(r"^RuntimeWatchdogSec=\d+s$", conf, re.M), conf
