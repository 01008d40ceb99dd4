#!/bin/bash
# Run by scripts/build-image as mmdebstrap's --essential-hook: after Debian's essential
# packages are in the root filesystem ($1), before the kernel and the rest are installed.
#
# The initramfs is made once, at the end (image/customize.sh), not each time a package asks for
# it: the kernel's postinst makes one, and every package with an initramfs hook triggers
# another. Under qemu-user (an arm64 image built on a PC) each took over a quarter of an hour.
# Until then update-initramfs is a stand-in that says so; Debian's own is set aside with
# dpkg-divert, so that installing initramfs-tools puts it beside the stand-in, not over it.
set -euo pipefail
root="$1"

chroot "$root" dpkg-divert --quiet --local --rename \
    --divert /usr/sbin/update-initramfs.pitlink --add /usr/sbin/update-initramfs
mkdir -p "$root/usr/sbin"
cat >"$root/usr/sbin/update-initramfs" <<'STUB'
#!/bin/sh
echo "update-initramfs: left for the end of the build (image/customize.sh makes it once)" >&2
STUB
chmod 0755 "$root/usr/sbin/update-initramfs"

# raspi-firmware's maintainer scripts copy the firmware into /boot/firmware (on the box, the
# FAT partition's mount point) and expect it to exist.
mkdir -p "$root/boot/firmware"
