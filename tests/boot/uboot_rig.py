"""Real U-Boot (Debian's ``u-boot-qemu``, ``qemu-system-arm -M virt``) running our ``boot.scr``.

Nothing is mounted and no loop device is used:

- the shipped ``deploy/uboot/boot.cmd`` is built unchanged into ``boot.scr``
  with ``mkimage -A arm -T script``;
- the 16 MiB virtio disk gets an MBR written here (the standard boot scan
  refuses a disk without a partition table) and one bootable FAT partition at
  1 MiB, made by ``mkfs.vfat -C`` and filled with mtools: ``boot.scr`` at its
  root and, when there is one, the ``uboot.env`` our backend wrote;
- U-Boot's own environment (second flash bank, 64 MiB, one copy at offset 0,
  0x40000 bytes) is seeded with the board's built-in default environment (read
  out of ``u-boot.bin``) plus what makes this board the rig: ``bootdelay=0``,
  ``boot_targets=virtio0``, ``kruxos_store=fat`` (``saveenv`` to this QEMU
  flash fails) and ``kruxos_boot_A``/``kruxos_boot_B`` = ``poweroff`` (the
  "kernel" of each slot; boot.cmd has already printed ``KRUXOS-BOOT slot=X``).

:meth:`UBootRig.boot` boots once, parses the marker line and reads
``uboot.env`` back with ``mcopy``: exactly what U-Boot's ``fatwrite`` left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

from reconciler.boot import ubootenv

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CMD = REPO / "deploy" / "uboot" / "boot.cmd"
UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")
#: Everything the rig runs or reads (names from ``tests/tools.list``).
TOOLS = ("qemu-system-arm", "mkimage", "mkfs.vfat", "mcopy", "mdel", "mdir", str(UBOOT_BIN))


PART_START = 2048  # sectors: the FAT partition starts at 1 MiB
DISK_MIB = 16
PART_KIB = (DISK_MIB - 1) * 1024
FLASH_SIZE = 64 << 20
FLASH_ENV_SIZE = 0x40000
ENV_SIZE = 0x4000  # uboot.env on the FAT partition, as boot.cmd exports it
ENV_PATH = "::/uboot.env"
BOOT_TIMEOUT = 30.0  # seconds; a boot takes about 0.5 s under TCG
TOOL_TIMEOUT = 30.0

#: What turns the board's default environment into the rig's.
RIG_ENV = {"bootdelay": "0", "boot_targets": "virtio0", "kruxos_store": "fat",
           "kruxos_boot_A": "poweroff", "kruxos_boot_B": "poweroff"}

_MARKER = re.compile(r"KRUXOS-BOOT slot=(\S*)")


class RigError(RuntimeError):
    """The rig could not build, boot or read back; carries the tool's output."""


class UBootBoot(NamedTuple):
    """One real boot: the slot boot.scr chose and the ``uboot.env`` bytes left on the disk."""

    slot: str
    env_after: bytes | None


def run(args: list[str], timeout: float = TOOL_TIMEOUT) -> bytes:
    """Run one tool with a timeout; its output on failure goes into ``RigError``."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"{args[0]} timed out after {timeout} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RigError(f"{' '.join(args)} exited {done.returncode}: {output}")
    return done.stdout


def mbr(part_start: int, part_sectors: int) -> bytes:
    """A 512-byte MBR with one bootable FAT16-LBA partition (no boot code: U-Boot needs none)."""
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                        part_start, part_sectors)
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


def default_env(binary: Path = UBOOT_BIN) -> dict[str, str]:
    """The built-in default environment compiled into ``u-boot.bin`` (``k=v\\0``... ``\\0``)."""
    raw = binary.read_bytes()
    start = raw.find(b"\0bootcmd=") + 1
    if start <= 0:
        raise RigError(f"no default environment found in {binary}")
    end = raw.index(b"\0\0", start)
    pairs = (item.decode().split("=", 1) for item in raw[start:end].split(b"\0"))
    return {key: value for key, value in pairs}


def console_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\r", "")


class UBootRig:
    """A built boot.scr, flash and template disk; :meth:`disk` copies it, :meth:`boot` boots it."""

    def __init__(self, workdir: Path, shipped_cmd: Path = SHIPPED_CMD) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.script = self._make_script(shipped_cmd)
        self.flash = self._make_flash()
        self.template = self._make_disk(workdir / "template.img")
        self.last_console = ""

    # -- building (once) ------------------------------------------------------

    def _make_script(self, shipped_cmd: Path) -> Path:
        script = self.workdir / "boot.scr"
        run(["mkimage", "-A", "arm", "-T", "script", "-C", "none", "-n", "KruxOS A/B",
             "-d", str(shipped_cmd), str(script)])
        return script

    def _make_flash(self) -> Path:
        flash = self.workdir / "flash1.img"
        with flash.open("wb") as f:
            f.truncate(FLASH_SIZE)
            f.write(ubootenv.encode({**default_env(), **RIG_ENV}, FLASH_ENV_SIZE))
        return flash

    def _make_disk(self, path: Path) -> Path:
        part = self.workdir / "part.img"
        part.unlink(missing_ok=True)
        run(["mkfs.vfat", "-C", str(part), str(PART_KIB)])
        run(["mcopy", "-i", str(part), str(self.script), "::/boot.scr"])
        with path.open("wb") as disk:
            disk.truncate(DISK_MIB << 20)
            disk.write(mbr(PART_START, PART_KIB * 2))
            disk.seek(PART_START * 512)
            disk.write(part.read_bytes())
        part.unlink()
        return path

    # -- per test ---------------------------------------------------------------

    def disk(self, dest: Path) -> Path:
        """A fresh copy of the template disk (no uboot.env yet) at ``dest``."""
        shutil.copyfile(self.template, dest)
        return dest

    def put_env(self, disk: Path, env: bytes | None) -> None:
        """Write ``env`` as the disk's uboot.env; ``None`` removes it (a never-written env)."""
        if env is None:
            if self.get_env(disk) is not None:
                run(["mdel", "-i", f"{disk}@@1M", ENV_PATH])
            return
        src = self.workdir / f"upload-{os.getpid()}.tmp"
        src.write_bytes(env)
        try:
            run(["mcopy", "-o", "-i", f"{disk}@@1M", str(src), ENV_PATH])
        finally:
            src.unlink()

    def seed_flash(self, disk: Path, board_env: dict[str, str | None]) -> None:
        """Give ``disk``'s board its own flash env: the rig's, changed by ``board_env``.

        A ``None`` value removes the variable, e.g. ``kruxos_store`` to run
        boot.cmd in its ``saveenv`` flavour on U-Boot's own environment.
        """
        env: dict[str, str] = {**default_env(), **RIG_ENV}
        for key, value in board_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        with self._flash_of(disk).open("wb") as f:
            f.truncate(FLASH_SIZE)
            f.write(ubootenv.encode(env, FLASH_ENV_SIZE))

    def flash_env(self, disk: Path) -> dict[str, str] | None:
        """U-Boot's own env in ``disk``'s flash after a boot (``None``: bad CRC)."""
        decoded = ubootenv.decode(self._flash_of(disk).read_bytes()[:FLASH_ENV_SIZE], False)
        return None if decoded is None else decoded[1]

    @staticmethod
    def _flash_of(disk: Path) -> Path:
        return disk.with_name(disk.name + ".flash1")

    def get_env(self, disk: Path) -> bytes | None:
        """The disk's uboot.env bytes, or ``None`` when the file is not there."""
        listing = run(["mdir", "-b", "-i", f"{disk}@@1M", "::/"]).replace(b"\r", b"")
        if not re.search(rb"(?im)^::/uboot\.env$", listing):
            return None
        return run(["mcopy", "-n", "-i", f"{disk}@@1M", ENV_PATH, "-"])

    def boot(self, disk: Path) -> UBootBoot:
        """Power the board on once: the slot boot.scr chose and the uboot.env it left."""
        self.last_console = console_text(self._qemu(disk))
        found = _MARKER.search(self.last_console)
        if found is None:
            raise RigError(f"no KRUXOS-BOOT line from U-Boot:\n{self.last_console}")
        return UBootBoot(found.group(1), self.get_env(disk))

    def _qemu(self, disk: Path) -> bytes:
        flash = self._flash_of(disk)
        if not flash.exists():  # per disk, so parallel tests never share a flash
            shutil.copyfile(self.flash, flash)
        args = ["qemu-system-arm", "-M", "virt", "-accel", "tcg", "-m", "256", "-nographic",
                "-no-reboot", "-monitor", "none", "-nic", "none", "-bios", str(UBOOT_BIN),
                "-drive", f"if=pflash,unit=1,format=raw,file={flash}",
                "-drive", f"if=none,id=d0,format=raw,file={disk}",
                "-device", "virtio-blk-device,drive=d0"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise RigError(
                f"QEMU did not power off in {BOOT_TIMEOUT} s:\n{console_text(out)}") from exc
        if proc.returncode != 0:
            raise RigError(f"QEMU exited {proc.returncode}: {err.decode(errors='replace')}")
        return out
