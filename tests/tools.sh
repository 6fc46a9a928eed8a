#!/usr/bin/env bash
# The system tools the test suite runs for real. `make test` calls this so a
# fresh machine gets them; it installs only what is missing and needs root.
set -eu
need() { # need COMMAND-OR-PATH PACKAGE
  if [ "${1#/}" != "$1" ]; then [ -e "$1" ] || missing+=("$2")
  else command -v "$1" >/dev/null 2>&1 || missing+=("$2"); fi
}
missing=()
need grub-editenv grub-common
need /usr/lib/grub/i386-pc/boot.img grub-pc-bin
need faketime faketime
need qemu-system-i386 qemu-system-x86
need qemu-system-arm qemu-system-arm
need mcopy mtools
need mkfs.vfat dosfstools
need fw_printenv libubootenv-tool
need mkimage u-boot-tools
need mkenvimage u-boot-tools
need /usr/lib/u-boot/qemu_arm/u-boot.bin u-boot-qemu
need /usr/share/OVMF/OVMF_CODE.fd ovmf
need /usr/lib/systemd/boot/efi/systemd-bootx64.efi systemd-boot-efi
need /usr/include/efi/efi.h gnu-efi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "tests need: ${missing[*]} (install with: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
