"""Real GRUB 2 (i386-pc) under QEMU, running our shipped ``deploy/grub/grub.cfg`` unchanged.

Nothing is mounted and no loop device is used:

- ``grub-mkimage`` builds a ``core.img`` (once per :class:`GrubRig`) whose
  embedded config points ``prefix`` at the FAT partition and runs its
  ``grub.cfg``;
- the 16 MiB disk gets an MBR written here (one bootable FAT partition at
  1 MiB), GRUB's ``boot.img`` in its first 440 bytes and ``core.img`` in the
  gap after it;
- the FAT partition is made by ``mkfs.vfat -C`` and filled with mtools: the
  rig's ``grub.cfg`` (serial console, then ``source`` of the shipped script
  copied verbatim to ``/boot/grub/kruxos.cfg``, then the marker line and
  ``halt``) and the ``grubenv`` our backend wrote.

The shipped script ends by choosing a menu entry (``set default=kruxos-X``).
The harness stops right there: instead of loading a kernel it prints
``KRUXOS-BOOT slot=X entry=kruxos-X`` on the serial console and halts, which
makes QEMU exit. :meth:`GrubRig.boot` parses that line and reads the env back
with ``mcopy``, i.e. exactly what GRUB's ``save_env`` left on the disk.
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

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CFG = REPO / "deploy" / "grub" / "grub.cfg"
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
#: Everything the rig runs or reads (names from ``tests/tools.list``).
TOOLS = ("grub-mkimage", "qemu-system-i386", "mkfs.vfat", "mcopy", "mmd", "mdel", "mdir",
         str(BOOT_IMG))


#: What the early config, the harness and the shipped script use (``source``
#: and ``configfile`` are in ``configfile``; ``[`` is ``test``; ``loopback``
#: only for the rig's read-only env).
MODULES = ("biosdisk", "part_msdos", "fat", "normal", "configfile", "loadenv", "test",
           "echo", "halt", "serial", "terminal", "loopback")

PART_START = 2048  # sectors: the FAT partition starts at 1 MiB
DISK_MIB = 16
PART_KIB = (DISK_MIB - 1) * 1024
ENV_PATH = "::/boot/grub/grubenv"
BOOT_TIMEOUT = 30.0  # seconds; a boot takes about 0.5 s under TCG
TOOL_TIMEOUT = 30.0

EARLY_CFG = """set root=(hd0,msdos1)
set prefix=(hd0,msdos1)/boot/grub
configfile /boot/grub/grub.cfg
"""

#: The rig's /boot/grub/grub.cfg. ``source`` (not ``configfile``) runs the
#: shipped script in this same context, so its ``kruxos_slot`` and ``default``
#: are visible afterwards; the halt comes before the menu would run.
HARNESS_CFG = """serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
{setup}source ${{prefix}}/kruxos.cfg
echo "KRUXOS-BOOT slot=${{kruxos_slot}} entry=${{default}}"
halt
"""

#: A harness variant whose env can be read but not written: it sits in a FAT
#: image opened with ``loopback``, and GRUB's loopback disks refuse writes. This
#: is how a real device with ``/boot`` on LVM or RAID looks to ``save_env``.
READ_ONLY_SETUP = """loopback envdisk ${prefix}/envdisk.img
set kruxos_env=(envdisk)/grubenv
"""

_MARKER = re.compile(r"KRUXOS-BOOT slot=(\S*) entry=(\S*)")
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[=>A-Za-z])")


class RigError(RuntimeError):
    """The rig could not build, boot or read back; carries the tool's output."""


class GrubBoot(NamedTuple):
    """One real boot: the slot grub.cfg chose and the grubenv bytes left on the disk."""

    slot: str
    env_after: bytes | None


def run(args: list[str], timeout: float = TOOL_TIMEOUT, **kwargs: object) -> bytes:
    """Run one tool with a timeout; its output on failure goes into ``RigError``."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, check=False,
                              env=env, **kwargs)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"{args[0]} timed out after {timeout} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RigError(f"{' '.join(args)} exited {done.returncode}: {output}")
    out: bytes = done.stdout
    return out


def console_text(raw: bytes) -> str:
    """Serial output as plain lines: no CR, no terminal escape sequences."""
    return _ESCAPES.sub("", raw.decode("utf-8", errors="replace")).replace("\r", "")


def mbr(boot_code: bytes, part_start: int, part_sectors: int) -> bytes:
    """A 512-byte MBR: ``boot_code`` (440 bytes) and one bootable FAT16-LBA partition."""
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                        part_start, part_sectors)
    return boot_code[:440].ljust(446, b"\0") + entry + bytes(48) + b"\x55\xaa"


class GrubRig:
    """A built core.img and a template disk; :meth:`disk` copies it, :meth:`boot` boots one."""

    def __init__(self, workdir: Path, shipped_cfg: Path = SHIPPED_CFG) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.core_img = self._make_core()
        self.template = self._make_disk(workdir / "template.img", shipped_cfg)
        self.last_console = ""

    # -- building (once) ------------------------------------------------------

    def _make_core(self) -> Path:
        early = self.workdir / "early.cfg"
        early.write_text(EARLY_CFG)
        core = self.workdir / "core.img"
        run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-c", str(early),
             "-p", "(hd0,msdos1)/boot/grub", *MODULES])
        if core.stat().st_size > (PART_START - 1) * 512:
            raise RigError("core.img does not fit before the partition")
        return core

    def _make_disk(self, path: Path, shipped_cfg: Path) -> Path:
        part = self.workdir / "part.img"
        part.unlink(missing_ok=True)
        run(["mkfs.vfat", "-C", str(part), str(PART_KIB)])
        run(["mmd", "-i", str(part), "::/boot", "::/boot/grub"])
        self._put(part, "::/boot/grub/grub.cfg", HARNESS_CFG.format(setup="").encode())
        self._put(part, "::/boot/grub/kruxos.cfg", shipped_cfg.read_bytes())
        sectors = PART_KIB * 2
        with path.open("wb") as disk:
            disk.truncate(DISK_MIB << 20)
            disk.write(mbr(BOOT_IMG.read_bytes(), PART_START, sectors))
            disk.write(self.core_img.read_bytes())
            disk.seek(PART_START * 512)
            disk.write(part.read_bytes())
        part.unlink()
        return path

    def _put(self, image: str | Path, target: str, data: bytes) -> None:
        src = self.workdir / "upload.tmp"
        src.write_bytes(data)
        run(["mcopy", "-o", "-i", str(image), str(src), target])
        src.unlink()

    # -- per test ---------------------------------------------------------------

    def disk(self, dest: Path) -> Path:
        """A fresh copy of the template disk (no grubenv yet) at ``dest``."""
        shutil.copyfile(self.template, dest)
        return dest

    def put_env(self, disk: Path, env: bytes | None) -> None:
        """Write ``env`` as the disk's grubenv; ``None`` removes it (a never-written env)."""
        if env is None:
            if self.get_env(disk) is not None:
                run(["mdel", "-i", f"{disk}@@1M", ENV_PATH])
        else:
            self._put(f"{disk}@@1M", ENV_PATH, env)

    def get_env(self, disk: Path) -> bytes | None:
        """The disk's grubenv bytes, or ``None`` when the file is not there."""
        listing = run(["mdir", "-b", "-i", f"{disk}@@1M", "::/boot/grub"])
        if b"/grubenv\n" not in listing.replace(b"\r", b""):
            return None
        return run(["mcopy", "-n", "-i", f"{disk}@@1M", ENV_PATH, "-"])

    def make_env_read_only(self, disk: Path) -> None:
        """Move the disk's grubenv into a loopback FAT image: readable, never writable."""
        env = self.get_env(disk)
        image = self.workdir / "envdisk.img"
        image.unlink(missing_ok=True)
        run(["mkfs.vfat", "-C", str(image), "64"])
        if env is not None:
            self._put(image, "::/grubenv", env)
        run(["mcopy", "-o", "-i", f"{disk}@@1M", str(image), "::/boot/grub/envdisk.img"])
        harness = HARNESS_CFG.format(setup=READ_ONLY_SETUP).encode()
        self._put(f"{disk}@@1M", "::/boot/grub/grub.cfg", harness)
        image.unlink()

    def read_only_env(self, disk: Path) -> bytes | None:
        """The grubenv inside the loopback image of :meth:`make_env_read_only`."""
        image = self.workdir / "envdisk.img"
        run(["mcopy", "-n", "-o", "-i", f"{disk}@@1M", "::/boot/grub/envdisk.img",
             str(image)])
        try:
            return run(["mcopy", "-n", "-i", str(image), "::/grubenv", "-"])
        finally:
            image.unlink()

    def boot(self, disk: Path) -> GrubBoot:
        """Power the disk on once: the slot GRUB chose and the grubenv it left."""
        raw = self._qemu(disk)
        self.last_console = console_text(raw)
        found = _MARKER.search(self.last_console)
        if found is None:
            raise RigError(f"no KRUXOS-BOOT line from GRUB:\n{self.last_console}")
        slot, entry = found.groups()
        if entry != f"kruxos-{slot}":
            raise RigError(f"grub.cfg chose slot {slot} but menu entry {entry!r}")
        return GrubBoot(slot, self.get_env(disk))

    def _qemu(self, disk: Path) -> bytes:
        args = ["qemu-system-i386", "-accel", "tcg", "-m", "64", "-display", "none",
                "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nic", "none",
                "-drive", f"file={disk},format=raw,if=ide"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise RigError(
                f"QEMU did not halt in {BOOT_TIMEOUT} s:\n{console_text(out)}") from exc
        if proc.returncode != 0:
            raise RigError(f"QEMU exited {proc.returncode}: {err.decode(errors='replace')}")
        return out
