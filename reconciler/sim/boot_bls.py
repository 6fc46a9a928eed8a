"""The simulated device's systemd-boot: its entry choice and boot counting, on an ESP directory.

One call of :func:`boot_once` is one power-on (or watchdog reset). It follows
systemd-boot 252 (Debian 12), checked against the real one under QEMU by
``tests/boot/test_bls_qemu.py``:

1. Read ``loader/loader.conf`` (``default`` pattern) and every ``loader/entries/*.conf``
   (not ``auto-*``) whose ``linux``/``efi`` file exists on the ESP. An entry's id
   is its file name, lower-cased, counter included; ``+LEFT[-DONE]`` before
   ``.conf`` is its boot counter.
2. Sort: entries with 0 tries left last; then with a ``sort-key`` before
   without; by sort-key, machine-id, version (newest first); then by id, newest
   first (``strverscmp_improved``); then more tries left, fewer done.
3. Pick the first entry matching ``default`` (a case-insensitive glob); no
   match → the first entry.
4. A counted entry is renamed ``+(LEFT-1)-(DONE+1)`` (never below 0) **before**
   it boots; ``LoaderEntrySelected`` (the id before the rename) and
   ``LoaderBootCountPath`` are set. The sim keeps those EFI variables as
   efivarfs files in ``efivars/`` beside the ESP.

The LoaderEntryDefault / LoaderEntryOneShot EFI variables are never set on our
devices, so they are not emulated.
"""

from __future__ import annotations

import fnmatch
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from reconciler.boot import SlotName
from reconciler.durable import atomic_write, fsync_dir
from reconciler.errors import BootEnvError
from reconciler.sim.bootloader import BootChoice

__all__ = ["init_env", "boot_once", "parse_counter", "strverscmp_improved"]

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
_DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd-boot"

_LOADER_CONF = """\
timeout 0
editor no
auto-entries no
auto-firmware no
default kruxos-a[+.][1-9c]*
# kruxos: A=good B=empty
"""

_ENTRY = """\
title      KruxOS (slot {slot})
linux      /kruxos/{lower}/vmlinuz
initrd     /kruxos/{lower}/initrd.img
options    root=PARTLABEL=root-{lower} ro kruxos.slot={slot} systemd.watchdog_device=/dev/watchdog
"""


def init_env(boot_dir: Path) -> Path:
    """Lay out a fresh ESP in ``boot_dir/esp``: A good and the default, B empty (at ``+0``)."""
    esp = boot_dir / "esp"
    (esp / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    (boot_dir / "efivars").mkdir(parents=True, exist_ok=True)
    atomic_write(esp / "loader" / "loader.conf", _shipped("loader.conf", _LOADER_CONF))
    for slot, name in (("A", "kruxos-a.conf"), ("B", "kruxos-b+0.conf")):
        lower = slot.lower()
        text = _shipped(f"kruxos-{lower}.conf", _ENTRY.format(slot=slot, lower=lower))
        atomic_write(esp / "loader" / "entries" / name, text)
        for image in ("vmlinuz", "initrd.img"):
            atomic_write(esp / "kruxos" / lower / image, b"simulated\n")
    return esp


def _shipped(name: str, fallback: str) -> bytes:
    """The file from ``deploy/systemd-boot`` (what a device ships), else the same built in."""
    try:
        return (_DEPLOY / name).read_bytes()
    except OSError:
        return fallback.encode()


@dataclass(frozen=True)
class _Entry:
    file: str
    id: str
    left: int | None
    done: int | None
    fields: dict[str, str]


def boot_once(env_path: Path) -> BootChoice:
    """Boot the simulated device once: choose an entry and count it down as systemd-boot does."""
    esp = Path(env_path)
    entries = _sorted(_entries(esp))
    if not entries:
        raise BootEnvError(f"bls sim: {esp}: no bootable entry (systemd-boot shows its menu)")
    pattern = _default_pattern(esp)
    chosen = next((e for e in entries if pattern and _match(pattern, e.id)), None)
    fell_back = chosen is None
    chosen = chosen or entries[0]
    left_after = _bump(esp, chosen)
    _set_efivars(esp, chosen, left_after)
    slot = _slot_of(chosen)
    trial = chosen.left is not None
    how = f"default {pattern!r} matched" if not fell_back else \
        f"default {pattern!r} matched nothing: first entry"
    trace = f"{how}: boot {chosen.file}" + (f" ({left_after} tries left after)" if trial else "")
    return BootChoice(slot, trial, left_after or 0, fell_back, trace)


def parse_counter(file: str, suffix: str = ".conf") -> tuple[int | None, int | None, str]:
    """(left, done, prefix) of ``+LEFT[-DONE]`` before ``suffix``, as systemd-boot parses it."""
    stem = file[: -len(suffix)] if file.lower().endswith(suffix) else file
    match = re.search(r"\+(\d+)(?:-(\d+))?$", stem)
    if match is None:
        return None, None, stem
    done = int(match.group(2)) if match.group(2) is not None else 0
    return int(match.group(1)), done, stem[: match.start()]


def _entries(esp: Path) -> list[_Entry]:
    directory = esp / "loader" / "entries"
    try:
        files = sorted(p.name for p in directory.iterdir())
    except OSError:
        return []
    found = []
    for file in files:
        if file.startswith((".", "auto-")) or not file.lower().endswith(".conf"):
            continue
        fields = _fields((directory / file).read_text(errors="replace"))
        loader = fields.get("linux") or fields.get("efi")
        if not loader or not (esp / loader.lstrip("/")).is_file():
            continue  # systemd-boot drops entries whose image is missing
        left, done, _ = parse_counter(file)
        found.append(_Entry(file, file.lower(), left, done, fields))
    return found


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts and not parts[0].startswith("#"):
            fields.setdefault(parts[0], parts[1].strip() if len(parts) > 1 else "")
    return fields


def _sorted(entries: list[_Entry]) -> list[_Entry]:
    import functools

    return sorted(entries, key=functools.cmp_to_key(_compare))


def _compare(a: _Entry, b: _Entry) -> int:
    """systemd-boot 252's ``config_entry_compare``."""
    r = _cmp(a.left == 0, b.left == 0)
    if r:
        return r
    ka, kb = a.fields.get("sort-key"), b.fields.get("sort-key")
    r = _cmp(ka is None, kb is None)
    if r:
        return r
    if ka is not None and kb is not None:
        r = _cmp(ka, kb) or _cmp(a.fields.get("machine-id", ""), b.fields.get("machine-id", ""))
        r = r or -strverscmp_improved(a.fields.get("version", ""), b.fields.get("version", ""))
        if r:
            return r
    r = -strverscmp_improved(a.id, b.id)
    if r or a.left is None or b.left is None:
        return r
    return -_cmp(a.left, b.left) or _cmp(a.done or 0, b.done or 0)


def _cmp(a: object, b: object) -> int:
    return int((a > b) - (a < b))  # type: ignore[operator]


def strverscmp_improved(a: str, b: str) -> int:
    """systemd's ``strverscmp_improved``: ``~`` older than anything, ``-``/``^``/``.``
    separators, numbers by value, letter runs by bytes; returns -1, 0 or 1."""
    if not a or not b:
        return _cmp(a, b)
    i = j = 0
    while True:
        i, j = _skip_invalid(a, i), _skip_invalid(b, j)
        for sep in ("~", "-", "^", "."):
            ca, cb = a[i:i + 1], b[j:j + 1]
            if sep == "-" and (not ca or not cb):
                return _cmp(ca, cb)  # one string ended: the longer is newer
            if ca == sep or cb == sep:
                r = _cmp(ca != sep, cb != sep)
                if r:
                    return r
                i, j = i + 1, j + 1
        ca, cb = a[i:i + 1], b[j:j + 1]
        digits = ca.isdigit() or cb.isdigit()
        run = re.compile(r"[0-9]*" if digits else r"[A-Za-z]*")
        sa, sb = run.match(a, i).group(), run.match(b, j).group()  # type: ignore[union-attr]
        if digits:
            r = _cmp(bool(sa), bool(sb))
            na, nb = sa.lstrip("0"), sb.lstrip("0")
            r = r or _cmp(len(na), len(nb)) or _cmp(na, nb)
        else:
            n = min(len(sa), len(sb))
            r = _cmp(sa[:n], sb[:n]) or _cmp(len(sa), len(sb))
        if r:
            return r
        i, j = i + len(sa), j + len(sb)


def _skip_invalid(s: str, i: int) -> int:
    while i < len(s) and not (s[i].isascii() and (s[i].isalnum() or s[i] in "~-^.")):
        i += 1
    return i


def _default_pattern(esp: Path) -> str | None:
    try:
        text = (esp / "loader" / "loader.conf").read_text(errors="replace")
    except OSError:
        return None
    value = None
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0] == "default":
            value = parts[1].strip()
    return value


def _match(pattern: str, entry_id: str) -> bool:
    return fnmatch.fnmatchcase(entry_id.lower(), pattern.lower())


def _bump(esp: Path, entry: _Entry) -> int | None:
    """Rename a counted entry one try down before booting it; its tries left after."""
    if entry.left is None:
        return None
    left, done = max(entry.left - 1, 0), (entry.done or 0) + 1
    _, _, prefix = parse_counter(entry.file)
    directory = esp / "loader" / "entries"
    try:
        os.rename(directory / entry.file, directory / f"{prefix}+{left}-{done}.conf")
        fsync_dir(directory)
    except OSError:
        pass  # systemd-boot logs "Failed to rename ..., ignoring" and boots it anyway
    return left


def _set_efivars(esp: Path, entry: _Entry, left_after: int | None) -> None:
    """The volatile variables systemd-boot sets for the OS, as efivarfs files."""
    efivars = esp.parent / "efivars"
    efivars.mkdir(exist_ok=True)
    values = {"LoaderEntrySelected": entry.id}
    if left_after is not None:
        _, _, prefix = parse_counter(entry.file)
        values["LoaderBootCountPath"] = \
            f"\\loader\\entries\\{prefix}+{left_after}-{(entry.done or 0) + 1}.conf"
    else:
        (efivars / f"LoaderBootCountPath-{LOADER_GUID}").unlink(missing_ok=True)
    for name, value in values.items():
        data = struct.pack("<I", 6) + (value + "\0").encode("utf-16-le")
        atomic_write(efivars / f"{name}-{LOADER_GUID}", data)


def _slot_of(entry: _Entry) -> SlotName:
    match = re.search(r"(?:^|\s)kruxos\.slot=([AB])(?:\s|$)", entry.fields.get("options", ""))
    if match is None:
        match = re.match(r"kruxos-([ab])", entry.id)
    if match is None:
        raise BootEnvError(f"bls sim: entry {entry.file} names no slot (kruxos.slot=A|B)")
    return "A" if match.group(1).upper() == "A" else "B"
