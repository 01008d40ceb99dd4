#!/bin/bash
# What makes a plain Debian root filesystem into a Pitlink box. Run by scripts/build-image as
# mmdebstrap's --customize-hook, after every package is installed: $1 is the root filesystem
# (a directory on the build machine), with /proc, /sys and /dev mounted in it.
#
# From scripts/build-image, in the environment:
#   PITLINK_REPO    the repository (image/rootfs/ is copied in, and the agent's systemd unit)
#   PITLINK_AGENT   the frozen agent's folder (dist/pits-agent/ as scripts/build-agent makes it)
#   PITLINK_FSTAB   the /etc/fstab to write
#   PITLINK_ARCH    amd64 or arm64
#   PITLINK_VERSION the image's version (/usr/lib/pitlink/version; an update bundle's version)
#   PITLINK_KEYRING the certificates whose update bundles this image installs
set -euo pipefail

root="$1"
repo="${PITLINK_REPO:?}"
agent="${PITLINK_AGENT:?}"
arch="${PITLINK_ARCH:?}"

say() { echo "customize [$(date +%T)]: $*" >&2; }

say "the Pitlink files (image/rootfs/)"
# The files are owned by root on the image, whoever owns the checkout.
cp -R --no-preserve=ownership --preserve=mode "$repo/image/rootfs/." "$root/"

say "the frozen agent in /opt/pitlink/pits-agent"
rm -rf "$root/opt/pitlink/pits-agent"
mkdir -p "$root/opt/pitlink"
cp -R --no-preserve=ownership --preserve=mode "$agent" "$root/opt/pitlink/pits-agent"
install -m 0644 "$repo/pits_appliance/systemd/pits-agent.service" \
    "$root/usr/lib/systemd/system/pits-agent.service"
# The frozen program must run on this Debian (its C library, its architecture): better to
# find out now than on a box at a venue. For arm64 built elsewhere this runs under qemu-user.
chroot "$root" /opt/pitlink/pits-agent/pits-agent --help >/dev/null

say "version ${PITLINK_VERSION:?}"
printf '%s\n' "$PITLINK_VERSION" >"$root/usr/lib/pitlink/version"

say "the filesystems"
printf '%s\n' "$PITLINK_FSTAB" >"$root/etc/fstab"
mkdir -p "$root/boot/firmware" "$root/var/lib/pitlink"

# A read-only /etc: an empty machine-id makes systemd make up a new one in RAM at every boot
# (and not run its first-boot setup); /etc/resolv.conf points at systemd-resolved's file in
# /run, which follows the DNS servers DHCP hands out.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# A board without a clock (a Raspberry Pi) starts at the time of this file until it reaches
# an NTP server: better this image's build date than 1970 or the systemd package's, for TLS
# certificates (not valid before...) and the token's dates.
touch "$root/usr/lib/clock-epoch"
# Nobody logs in: root has no password (locked), and there is no other account.
chroot "$root" passwd --lock root >/dev/null

say "services"
chroot "$root" systemctl enable \
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
    avahi-daemon.service pits-agent.service \
    pitlink-netconf.service pitlink-hostname.service pitlink-selftest.service \
    pitlink-clock.service

say "updates: RAUC, two root slots, the trial boot"
# RAUC's settings are part of the read-only root, the same on every box: the slots are
# named by links pitlink-slot-links makes at boot, the boot loader is driven by
# pitlink-slots (systemd-boot's boot counting on a PC, U-Boot's boot script on a Raspberry
# Pi), RAUC keeps what it knows of the slots on the state partition, and a bundle goes in only
# when pitlink-preinstall finds its version newer than the newest this box has run.
mkdir -p "$root/etc/rauc"
install -m 0644 "${PITLINK_KEYRING:?}" "$root/etc/rauc/keyring.pem"
cat >"$root/etc/rauc/system.conf" <<CONF
# RAUC on the Pitlink appliance: see "Updating boxes in the field" in the Pitlink README.
[system]
compatible=pitlink-$arch
bootloader=custom
bundle-formats=-plain
mountprefix=/run/rauc
statusfile=/var/lib/pitlink/rauc.status

[handlers]
bootloader-custom-backend=/usr/lib/pitlink/pitlink-slots
pre-install=/usr/lib/pitlink/pitlink-preinstall

[keyring]
path=/etc/rauc/keyring.pem

[slot.rootfs.0]
device=/run/pitlink/slot-a
type=ext4
bootname=A

[slot.rootfs.1]
device=/run/pitlink/slot-b
type=ext4
bootname=B
CONF
chroot "$root" systemctl enable pitlink-slot-links.service pitlink-health.service \
    pitlink-mark-good.service
# systemd's own blessing of a boot entry looks for the boot partition where this box does
# not mount it, and would rename the entry behind RAUC's back: pitlink-mark-good does it.
chroot "$root" systemctl mask systemd-bless-boot.service
# A USB stick with an update bundle on it (see the agent's update folders).
mkdir -p "$root/media/usb"
# Debian's own wpa_supplicant service waits for a D-Bus client that never comes: the Wi-Fi
# from pitlink.conf is pitlink-wifi@<interface>.service, started by udev.
chroot "$root" systemctl disable wpa_supplicant.service
# Nothing on a read-only appliance may wake up to update, back up or trim: no apt timers (apt
# is not even installed), no dpkg database backup, no filesystem scrubbing or trimming.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer man-db.timer; do
    if [ -e "$root/usr/lib/systemd/system/$unit" ] || [ -e "$root/lib/systemd/system/$unit" ]; then
        chroot "$root" systemctl mask "$unit"
    fi
done

say "the initramfs, made once (image/essential.sh held it back until now)"
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k all
# raspi-firmware's hooks copied the kernel and firmware into /boot/firmware; on the box that is
# the FAT partition's mount point, which scripts/build-image fills itself.
find "$root/boot/firmware" -mindepth 1 -delete

say "what is not needed on the box"
# /var is a RAM disk on the box (see fstab), so its contents here are never seen; the package
# lists and downloaded packages only take room.
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/var/log/"*
