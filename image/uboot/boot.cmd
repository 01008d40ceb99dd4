# Pitlink on a Raspberry Pi: which root slot (A or B) starts, and the trial boot after an update.
#
# The Pi's firmware starts U-Boot (config.txt: kernel=u-boot.bin), and U-Boot runs this script
# (boot.scr, made from this file by ./scripts/build-image with mkimage) from the boot partition.
# It does for the Pi what systemd-boot's boot counting does for a PC (see pitlink-slots): the
# slots' states are in pitlink-boot.txt on the same partition, lines of name=value:
#
#   pitlink_primary=A      the slot to start first (A or B)
#   pitlink_A=good         good: start it; bad: never start it;
#   pitlink_B=trial        trial: start it once, writing "tried" first, so that a boot that does
#                          not get as far as `rauc status mark-good` (a crash, a reset, the
#                          watchdog, the health check) leaves it out, and the next boot starts
#                          the other slot
#   pitlink_args=...       optional: more options for the kernel's command line
#
# Linux writes the file through RAUC (/usr/lib/pitlink/pitlink-slots); this script writes it
# only to use up a trial. No file, or one that cannot be read: slot A, as the image was flashed.
# Each slot's kernel and initramfs are in a/ and b/ on this partition (an update's install hook
# copies them there), the slot's root filesystem is partition 2 (A) or 3 (B) of this card, and
# the board's device tree is the one the firmware loaded (fdt_addr).

setenv pitlink_primary A
setenv pitlink_A good
setenv pitlink_B bad
setenv pitlink_args
setenv pitlink_slot
setenv pitlink_save
# Where things go in memory: the kernel (an uncompressed arm64 Image, up to 64 MiB) at 2 MiB,
# then the device tree, then the initramfs (up to 96 MiB); under 176 MiB in all, well inside a
# Zero 2 W's 512 MiB, and clear of boot.scr itself (scriptaddr) while it runs.
setenv pitlink_kernel 0x00200000
setenv pitlink_fdt 0x04200000
setenv pitlink_file 0x04300000
setenv pitlink_initrd 0x04400000

# At most 4 KiB of it (as pitlink-slots reads it): a bigger file must not spill over memory.
# -r: lines may end in CR LF, as Notepad writes them when someone mends the file by hand.
if load ${devtype} ${devnum}:${distro_bootpart} ${pitlink_file} pitlink-boot.txt 0x1000; then
    env import -t -r ${pitlink_file} ${filesize} pitlink_primary pitlink_A pitlink_B pitlink_args
fi
# What is missing or not understood (import drops the names the file lacks) is as flashed.
if test "${pitlink_A}" != trial && test "${pitlink_A}" != tried && test "${pitlink_A}" != bad; then
    setenv pitlink_A good
fi
if test "${pitlink_B}" != good && test "${pitlink_B}" != trial && test "${pitlink_B}" != tried; then
    setenv pitlink_B bad
fi
if test "${pitlink_primary}" = B; then
    setenv pitlink_other A
else
    setenv pitlink_primary A
    setenv pitlink_other B
fi

for s in ${pitlink_primary} ${pitlink_other}; do
    if test -n "${pitlink_slot}"; then
        true
    elif test "${s}" = A; then
        if test "${pitlink_A}" = good; then
            setenv pitlink_slot A
        elif test "${pitlink_A}" = trial; then
            setenv pitlink_A tried
            setenv pitlink_slot A
            setenv pitlink_save yes
        fi
    else
        if test "${pitlink_B}" = good; then
            setenv pitlink_slot B
        elif test "${pitlink_B}" = trial; then
            setenv pitlink_B tried
            setenv pitlink_slot B
            setenv pitlink_save yes
        fi
    fi
done
# Neither slot may start (both tried or bad): the primary one all the same, as systemd-boot
# does; a box that starts something can still be reached and mended.
if test -z "${pitlink_slot}"; then
    setenv pitlink_slot ${pitlink_primary}
fi
if test -n "${pitlink_save}"; then
    # The trial is used up before the slot starts, not after.
    env export -t ${pitlink_file} pitlink_primary pitlink_A pitlink_B pitlink_args
    fatwrite ${devtype} ${devnum}:${distro_bootpart} ${pitlink_file} pitlink-boot.txt ${filesize}
fi

if test "${pitlink_slot}" = B; then
    setenv pitlink_dir b
    setenv pitlink_partition 3
else
    setenv pitlink_dir a
    setenv pitlink_partition 2
fi
part uuid ${devtype} ${devnum}:${pitlink_partition} pitlink_root
echo "Pitlink: starting slot ${pitlink_slot} (${pitlink_dir}/vmlinuz, root PARTUUID=${pitlink_root}; A ${pitlink_A}, B ${pitlink_B})"
setenv bootargs "root=PARTUUID=${pitlink_root} ro rootwait fsck.repair=yes panic=10 rauc.slot=${pitlink_slot} console=tty0 console=ttyS1,115200 ${pitlink_args}"
# The firmware's device tree, moved out of the way of the initramfs, with room for what booti
# adds to it (the command line, the initramfs's place, the memory).
fdt addr ${fdt_addr}
fdt move ${fdt_addr} ${pitlink_fdt} 0x20000
if load ${devtype} ${devnum}:${distro_bootpart} ${pitlink_kernel} ${pitlink_dir}/vmlinuz; then
    if load ${devtype} ${devnum}:${distro_bootpart} ${pitlink_initrd} ${pitlink_dir}/initrd.img; then
        booti ${pitlink_kernel} ${pitlink_initrd}:${filesize} ${pitlink_fdt}
    fi
fi
# Only reached when the slot's files are missing or would not start: a trial has been used up
# already, so the next start is the other slot's.
echo "Pitlink: slot ${pitlink_slot} did not start; restarting in 10 seconds"
sleep 10
reset
