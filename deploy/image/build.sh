#!/bin/bash
# Build the QEMU device's disk from Debian packages and the product's own
# files (docs/system-test.md has the layout). Run as root from the repository
# root: `make image`, or `deploy/image/build.sh [OUT]` (default build/image).
#
# Everything is built from nothing on each run: OUT/work is removed first and
# nothing is cached between runs. The result is OUT/disk.img (sparse), with
# release 1.0.0 in slot A; OUT/channel.img, a read-only disk holding the signed
# channel (1.0.0, 1.0.1 healthy, 1.0.2 gateway-fails, 1.0.3 hangs) whose artifacts are the
# release images; OUT/releases/ (the three images, for inspection); and
# OUT/publisher.key/.pub (the key the images trust).
set -euo pipefail

OUT=$(realpath -m "${1:-build/image}")
PY=${PY:-.venv/bin/python}
# version:behaviour of the sim OS (reconciler/sim/os.py). The first is the factory
# image in slot A; all are on the channel.
# `hangs`: the kernel stops early in the boot, before the daemon
# (kruxos-hang.service); only the watchdog and GRUB's tries counter bring it back.
RELEASES=${RELEASES:-1.0.0:healthy 1.0.1:healthy 1.0.2:gateway-fails 1.0.3:hangs}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HERE=$(dirname "$(realpath "$0")")
REPO=$(realpath "$HERE/../..")
WORK=$OUT/work
MIB=$((1024 * 1024))

# Partitions in MiB: name, size. Numbered in this order, so the slots are
# sda2/sda3 on virtio-scsi; the BIOS boot partition comes last so it does not
# shift them. Sizes are of the sparse disk, not of what is written.
BOOT_MIB=64 SLOT_MIB=1024 DEVICE_MIB=16 DATA_MIB=512 BIOS_MIB=1
# The modules the initrd loads to reach a squashfs (or ext4) root on virtio-scsi.
# virtio_blk is for the channel disk the system tests attach (mounted later by systemd);
# i6300esb is the machine's watchdog, there before systemd starts so that PID 1 arms it
# (RuntimeWatchdogSec=, deploy/systemd/watchdog.conf): the root carries no modules.
MODULES="virtio_pci virtio_scsi sd_mod squashfs ext4 crc32c_generic virtio_blk i6300esb"
# Release images: squashfs with xz, which GRUB's squash4 reads (it has no zstd).

step() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }
[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (mmdebstrap, losetup, mount)" >&2; exit 1; }
cd "$REPO"

cleanup() {
    if mountpoint -q "$WORK/mnt" 2>/dev/null; then umount "$WORK/mnt"; fi
    for loop in ${LOOPS:-}; do losetup -d "$loop" 2>/dev/null || true; done
}
trap cleanup EXIT
LOOPS=

rm -rf "$WORK" "$OUT/disk.img" "$OUT/channel.img" "$OUT/releases"
mkdir -p "$OUT"
mkdir -p "$WORK"/{deb,kernel,initrd,wheels,mnt,empty}

step "kernel: the linux-image-amd64 metapackage's current kernel"
(cd "$WORK/deb" && apt-get download -q -o APT::Sandbox::User=root linux-image-amd64 >/dev/null)
KPKG=$(dpkg-deb -f "$WORK"/deb/linux-image-amd64_*.deb Depends | grep -o 'linux-image-[^ ,]*-amd64' | head -1)
(cd "$WORK/deb" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
dpkg-deb -x "$WORK"/deb/"$KPKG"_*.deb "$WORK/kernel"
KVER=${KPKG#linux-image-}
depmod -b "$WORK/kernel" "$KVER"  # the package leaves modules.dep to its postinst
step "kernel: $KPKG ($KVER)"

step "initrd: busybox and the modules for $MODULES"
I=$WORK/initrd
mkdir -p "$I"/{bin,proc,sys,dev,newroot,lib/modules}
if ldd /bin/busybox >/dev/null 2>&1; then  # the initrd has no libc
    echo "build.sh: /bin/busybox is dynamically linked; install busybox-static" >&2; exit 1
fi
cp /bin/busybox "$I/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$I/bin/$applet"
done
: > "$I/modules.order"
modprobe -d "$WORK/kernel" -S "$KVER" --show-depends -a $MODULES | while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    name=$(basename "$path")
    grep -qx "${name%.xz}" "$I/modules.order" && continue
    case "$name" in
        *.xz) xz -dc "$path" > "$I/lib/modules/${name%.xz}" ;;
        *) cp "$path" "$I/lib/modules/$name" ;;
    esac
    echo "${name%.xz}" >> "$I/modules.order"
done
cp "$HERE/init" "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -9) > "$WORK/initrd.img"

step "wheels: the product and its dependencies for the guest's Python 3.11"
"$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$WORK/wheels" "$REPO"
"$PY" -m pip install -q --no-cache-dir --target "$WORK/python" \
    --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "$WORK"/wheels/kruxos_reconciler-*.whl
rm -rf "$WORK/python/bin"  # the host's console scripts; the image has its own

step "root filesystem: mmdebstrap $SUITE (one tree for every release)"
ROOT=$WORK/root
mmdebstrap --quiet --variant=essential --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=systemd-sysv,udev,kmod,python3,e2fsprogs,login \
    "$SUITE" "$ROOT" "$MIRROR"

step "root filesystem: the product's files"
cp -a "$HERE/rootfs/." "$ROOT/"
mkdir -p "$ROOT/usr/lib/kruxos"
cp -a "$WORK/python" "$ROOT/usr/lib/kruxos/python"
install -m 0644 "$REPO/deploy/systemd/kruxos-daemon.service" "$ROOT/etc/systemd/system/"
install -D -m 0644 "$REPO/deploy/systemd/watchdog.conf" \
    "$ROOT/etc/systemd/system.conf.d/kruxos-watchdog.conf"
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants" \
    "$ROOT/etc/systemd/system/getty.target.wants" "$ROOT/etc/kruxos/keys" \
    "$ROOT/etc/systemd/system/sysinit.target.wants" \
    "$ROOT/boot" "$ROOT/data" "$ROOT/device" "$ROOT/channel"
for unit in kruxos-daemon kruxos-os kruxos-channel; do
    ln -sf "/etc/systemd/system/$unit.service" \
        "$ROOT/etc/systemd/system/multi-user.target.wants/$unit.service"
done
ln -sf /etc/systemd/system/kruxos-hang.service \
    "$ROOT/etc/systemd/system/sysinit.target.wants/kruxos-hang.service"
ln -sf /lib/systemd/system/serial-getty@.service \
    "$ROOT/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# A read-only root: no first-boot questions on a console nobody watches.
ln -sf /dev/null "$ROOT/etc/systemd/system/systemd-firstboot.service"
: > "$ROOT/etc/machine-id"
PYTHONPATH="$REPO" "$PY" -c 'from reconciler.cli.main import main; main()' \
    release keygen --dir "$WORK" --name publisher >/dev/null
cp "$WORK/publisher.pub" "$ROOT/etc/kruxos/keys/publisher.pub"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$ROOT/boot/vmlinuz"
cp "$WORK/initrd.img" "$ROOT/boot/initrd.img"

# One image per release from the same tree: only etc/kruxos/release differs
# (what the sim OS of kruxos-os.service reads). A release image is the same
# bytes in either slot, so it carries no slot name (squashfs has no label;
# GRUB finds a slot by partition, deploy/image/grub-serial.cfg).
mkdir -p "$OUT/releases"
for release in $RELEASES; do
    version=${release%%:*} behaviour=${release#*:}
    step "release image $version ($behaviour): squashfs xz"
    printf 'VERSION=%s\nNAME=KruxOS\nBEHAVIOUR=%s\n' "$version" "$behaviour" \
        > "$ROOT/etc/kruxos/release"
    mksquashfs "$ROOT" "$OUT/releases/kruxos-$version.img" -comp xz -no-xattrs -noappend -quiet \
        -no-progress >/dev/null
done
FACTORY=${RELEASES%% *} FACTORY=${FACTORY%%:*}

step "channel: signed with $RELEASES"
kruxos() { PYTHONPATH="$REPO" "$PY" -c 'from reconciler.cli.main import main; main()' "$@"; }
mkdir -p "$WORK/channel"
for release in $RELEASES; do
    version=${release%%:*}
    kruxos release add "$WORK/channel" "$OUT/releases/kruxos-$version.img" \
        --version "$version" --channel-name stable --changes "Release $version" >/dev/null
done
kruxos release sign "$WORK/channel" --key "$WORK/publisher.key" --expires 365d >/dev/null
CHANNEL_MIB=$(( $(du -sm "$WORK/channel" | cut -f1) * 11 / 10 + 16 ))
mkfs.ext4 -q -F -L KRUXOS_CHANNEL -O ^orphan_file,^has_journal -E root_owner=0:0 \
    -d "$WORK/channel" "$WORK/channel.img" "${CHANNEL_MIB}M"

step "filesystems"
mkfs() {  # mkfs LABEL SIZE_MIB DIR FILE
    mkfs.ext4 -q -F -L "$1" -O ^orphan_file -E root_owner=0:0 -d "$3" "$4" "$2M"
}
mkfs KRUXOS_BOOT "$BOOT_MIB" "$WORK/empty" "$WORK/boot.ext4"
mkdir -p "$WORK/device/kruxos/spec"  # /data starts empty: the daemon makes its dir
echo "deviceId: qemu-0001" > "$WORK/device/kruxos/device.yaml"
mkfs KRUXOS_DEVICE "$DEVICE_MIB" "$WORK/device" "$WORK/device.ext4"
mkfs KRUXOS_DATA "$DATA_MIB" "$WORK/empty" "$WORK/data.ext4"

step "disk: GPT, filesystems in place, slot A's identity"
DISK=$WORK/disk.img
TOTAL=$((1 + BOOT_MIB + 2 * SLOT_MIB + DEVICE_MIB + DATA_MIB + BIOS_MIB + 1))
truncate -s "${TOTAL}M" "$DISK"
sgdisk -a 2048 \
    -n "1:1M:+${BOOT_MIB}M" -t 1:8300 -c 1:boot \
    -n "2:0:+${SLOT_MIB}M" -t 2:8300 -c 2:root_a \
    -n "3:0:+${SLOT_MIB}M" -t 3:8300 -c 3:root_b \
    -n "4:0:+${DEVICE_MIB}M" -t 4:8300 -c 4:device \
    -n "5:0:+${DATA_MIB}M" -t 5:8300 -c 5:data \
    -n "6:0:+${BIOS_MIB}M" -t 6:ef02 -c 6:bios \
    "$DISK" >/dev/null
start_mib() { sgdisk -i "$1" "$DISK" | sed -n 's/^First sector: \([0-9]*\).*/\1/p' | awk '{print $1 / 2048}'; }
put() {  # put PARTITION FILE
    dd if="$2" of="$DISK" bs=1M seek="$(start_mib "$1")" conv=sparse,notrunc status=none
}
put 1 "$WORK/boot.ext4"
put 2 "$OUT/releases/kruxos-$FACTORY.img"
put 4 "$WORK/device.ext4"
put 5 "$WORK/data.ext4"
# Slot A's identity record in its last 4 KiB, as a device writes it after an install.
dd if="$DISK" of="$WORK/slot_a" bs=1M skip="$(start_mib 2)" count="$SLOT_MIB" conv=sparse status=none
PYTHONPATH="$REPO" "$PY" "$HERE/factory.py" identity "$WORK/slot_a" \
    "$OUT/releases/kruxos-$FACTORY.img" "$FACTORY"
dd if="$WORK/slot_a" of="$DISK" bs=1M seek="$(start_mib 2)" conv=sparse,notrunc status=none
rm "$WORK/slot_a"

step "GRUB i386-pc, the product's grub.cfg and the factory env"
DISK_LOOP=$(losetup -f --show "$DISK"); LOOPS="$DISK_LOOP"
BOOT_LOOP=$(losetup -f --show -o $(( $(start_mib 1) * MIB )) --sizelimit $((BOOT_MIB * MIB)) "$DISK")
LOOPS="$BOOT_LOOP $LOOPS"
mount "$BOOT_LOOP" "$WORK/mnt"
grub-install --target=i386-pc --boot-directory="$WORK/mnt" --modules="part_gpt ext2" \
    --no-floppy "$DISK_LOOP" 2>&1 | grep -v '^Installation finished' || true
[ -f "$WORK/mnt/grub/i386-pc/core.img" ] || { echo "grub-install failed" >&2; exit 1; }
cat "$HERE/grub-serial.cfg" "$REPO/deploy/grub/grub.cfg" > "$WORK/mnt/grub/grub.cfg"
PYTHONPATH="$REPO" "$PY" "$HERE/factory.py" grubenv "$WORK/mnt/grub/grubenv"
umount "$WORK/mnt"
cleanup; LOOPS=

mv "$DISK" "$OUT/disk.img"
mv "$WORK/channel.img" "$OUT/channel.img"
cp "$WORK/publisher.key" "$WORK/publisher.pub" "$OUT/"
echo "$KPKG" > "$OUT/kernel"
rm -rf "$WORK"
step "done: $OUT/disk.img ($(du -m "$OUT/disk.img" | cut -f1) MiB allocated of ${TOTAL} MiB; kernel $KPKG)"
for image in "$OUT"/releases/*.img "$OUT/channel.img"; do
    step "  $(basename "$image"): $(du -m --apparent-size "$image" | cut -f1) MiB"
done
