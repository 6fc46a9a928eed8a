"""How the rig builds the EFI payloads (``slot-a.efi``, ``slot-b.efi``) from ``payload.c``.

gnu-efi's usual recipe: compile position-independent with the EFI ABI
wrapper, link against ``crt0-efi-x86_64.o`` with gnu-efi's linker script into
an ELF shared object, then ``objcopy`` the sections into a PE32+ EFI
application (subsystem 10). Nothing built is committed; the rig calls
:func:`build_payloads` once per test session.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "payload.c"
GNU_EFI = {"include": Path("/usr/include/efi"), "crt0": Path("/usr/lib/crt0-efi-x86_64.o"),
           "lds": Path("/usr/lib/elf_x86_64_efi.lds"), "lib": Path("/usr/lib")}
CFLAGS = ("-fpic", "-fshort-wchar", "-fno-stack-protector", "-ffreestanding", "-mno-red-zone",
          "-maccumulate-outgoing-args", "-DEFI_FUNCTION_WRAPPER", "-Wall", "-O2")
SECTIONS = (".text", ".sdata", ".data", ".rodata", ".dynamic", ".dynsym", ".rel", ".rela",
            ".rel.*", ".rela.*", ".reloc")
TIMEOUT = 60.0
#: The gnu-efi files the build reads (for ``needs_tool``; listed in ``tests/tools.list``).
GNU_EFI_FILES = ("/usr/include/efi/efi.h", "/usr/lib/crt0-efi-x86_64.o",
                 "/usr/lib/elf_x86_64_efi.lds")


def build_payloads(out: Path) -> dict[str, Path]:
    """Build one payload per slot into ``out``; returns {"A": slot-a.efi, "B": slot-b.efi}."""
    out.mkdir(parents=True, exist_ok=True)
    return {slot: _build(slot, out) for slot in ("A", "B")}


def _build(slot: str, out: Path) -> Path:
    stem = out / f"slot-{slot.lower()}"
    include = GNU_EFI["include"]
    _run(["gcc", f"-I{include}", f"-I{include}/x86_64", f"-DSLOT=L'{slot}'", *CFLAGS,
          "-c", str(SOURCE), "-o", f"{stem}.o"])
    _run(["ld", "-nostdlib", "-znocombreloc", "-shared", "-Bsymbolic", "-T", str(GNU_EFI["lds"]),
          str(GNU_EFI["crt0"]), f"{stem}.o", f"-L{GNU_EFI['lib']}", "-lefi", "-lgnuefi",
          "-o", f"{stem}.so"])
    sections = [arg for name in SECTIONS for arg in ("-j", name)]
    _run(["objcopy", *sections, "--target", "efi-app-x86_64", "--subsystem=10",
          f"{stem}.so", f"{stem}.efi"])
    return stem.with_suffix(".efi")


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=TIMEOUT)
