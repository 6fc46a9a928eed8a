"""Real systemd-boot (Debian 12, v252) under QEMU with OVMF, booting our shipped entries.

Nothing is mounted: the ESP is a bare FAT image (``mkfs.vfat -C``, no partition
table) filled with mtools:

- ``/EFI/BOOT/BOOTX64.EFI`` = ``systemd-bootx64.efi``;
- ``/loader/loader.conf`` and ``/loader/entries/kruxos-*.conf`` copied from the
  directory our backend works on (the shipped ``deploy/systemd-boot`` files);
- each entry's ``linux`` image (``/kruxos/X/vmlinuz``) is the tiny EFI payload of
  ``tests/boot/efi`` built for that slot; it prints
  ``KRUXOS-BOOT slot=X entry=<LoaderEntrySelected>`` and powers the machine off.

One boot (:meth:`BlsRig.boot`) puts the backend's files on a fresh copy of the
template image, boots it (``OVMF_VARS`` copied per boot, so no EFI variable
survives), and reads the entry names back with ``mdir``: the renames
systemd-boot made are what the backend then sees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from .efi.build import GNU_EFI_FILES, build_payloads

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "systemd-boot"
SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
#: Everything the rig runs or reads (names from ``tests/tools.list``).
TOOLS = ("qemu-system-x86_64", "mkfs.vfat", "mcopy", "mmd", "mdir", "gcc", "ld", "objcopy",
         str(SD_BOOT), str(OVMF_CODE), str(OVMF_VARS), *GNU_EFI_FILES)
BOOT_TIMEOUT = 40.0  # seconds; a boot takes about 4 s under TCG
TOOL_TIMEOUT = 30.0
MARKER = re.compile(r"KRUXOS-BOOT slot=([AB]) entry=(\S+)")


def run(cmd: list[str], timeout: float = TOOL_TIMEOUT) -> bytes:
    """Run a tool; fail with its stderr."""
    result = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}: "
                             f"{result.stderr.decode(errors='replace')}")
    return result.stdout


class Booted(NamedTuple):
    slot: str
    entry_selected: str  # LoaderEntrySelected as the payload read it
    entries: list[str]   # loader/entries/ after the boot


class BlsRig:
    """The payloads and a template ESP image, built once per session."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.payloads = build_payloads(work / "efi")
        self.template = work / "template.img"
        self.last_console = ""
        self._make_template()

    def _make_template(self) -> None:
        img = str(self.template)
        run(["mkfs.vfat", "-C", img, "16384"])
        run(["mmd", "-i", img, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries",
             "::/kruxos", "::/kruxos/a", "::/kruxos/b"])
        run(["mcopy", "-i", img, str(SD_BOOT), "::/EFI/BOOT/BOOTX64.EFI"])
        initrd = self.work / "initrd.img"
        initrd.write_bytes(b"not a real initrd\n")
        for slot, payload in self.payloads.items():
            run(["mcopy", "-i", img, str(payload), f"::/kruxos/{slot.lower()}/vmlinuz"])
            run(["mcopy", "-i", img, str(initrd), f"::/kruxos/{slot.lower()}/initrd.img"])

    def esp_dir(self, esp: Path) -> Path:
        """A fresh ESP directory for the backend: the shipped loader.conf and entries
        (A good, B at +0), and placeholders for the images the entries name."""
        (esp / "loader" / "entries").mkdir(parents=True)
        (esp.parent / "efivars").mkdir(exist_ok=True)
        shutil.copy(DEPLOY / "loader.conf", esp / "loader" / "loader.conf")
        shutil.copy(DEPLOY / "kruxos-a.conf", esp / "loader" / "entries" / "kruxos-a.conf")
        shutil.copy(DEPLOY / "kruxos-b.conf", esp / "loader" / "entries" / "kruxos-b+0.conf")
        for slot in ("a", "b"):
            (esp / "kruxos" / slot).mkdir(parents=True)
            (esp / "kruxos" / slot / "vmlinuz").write_bytes(b"placeholder\n")
            (esp / "kruxos" / slot / "initrd.img").write_bytes(b"placeholder\n")
        return esp

    def boot(self, esp: Path, image: Path) -> Booted:
        """Boot real systemd-boot once on the files of ``esp``; read the entries back."""
        shutil.copy(self.template, image)
        img = str(image)
        run(["mcopy", "-i", img, str(esp / "loader" / "loader.conf"), "::/loader/loader.conf"])
        for entry in sorted((esp / "loader" / "entries").iterdir()):
            run(["mcopy", "-i", img, str(entry), f"::/loader/entries/{entry.name}"])
        vars_fd = image.with_suffix(".vars.fd")
        shutil.copy(OVMF_VARS, vars_fd)
        console = self._qemu(image, vars_fd)
        self.last_console = console
        found = MARKER.findall(console)
        if len(found) != 1:
            raise AssertionError(f"expected one KRUXOS-BOOT line; console:\n{console[-3000:]}")
        return Booted(found[0][0], found[0][1], self.entries(image))

    @staticmethod
    def entries(image: Path) -> list[str]:
        """The names in ``/loader/entries`` of ``image`` (``mdir -b``), sorted."""
        out = run(["mdir", "-b", "-i", str(image), "::/loader/entries"]).decode()
        return sorted(line.rsplit("/", 1)[-1] for line in out.splitlines() if line.strip())

    def _qemu(self, image: Path, vars_fd: Path) -> str:
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-nographic",
               "-serial", "stdio", "-vga", "none", "-no-reboot", "-monitor", "none", "-nic",
               "none",
               "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,file={vars_fd}",
               "-drive", f"if=none,id=esp,format=raw,file={image}",
               "-device", "virtio-blk-pci,drive=esp,bootindex=0"]
        try:
            result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace").replace("\r", "")
            raise AssertionError(
                f"QEMU did not power off in {BOOT_TIMEOUT}s:\n{out[-3000:]}") from None
        return result.stdout.decode(errors="replace").replace("\r", "")


def sync_names(esp: Path, names: list[str]) -> None:
    """Rename the entries of ``esp`` as systemd-boot left them on the image (one per slot)."""
    directory = esp / "loader" / "entries"
    for name in names:
        slot = re.match(r"kruxos-([ab])", name)
        if slot is None:
            continue
        for old in directory.glob(f"kruxos-{slot.group(1)}*.conf"):
            if old.name != name:
                old.rename(directory / name)
