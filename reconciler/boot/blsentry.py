"""BLS entry files and loader.conf lines: which slot an entry boots, and what a repair of
the ESP keeps or rebuilds.

An entry of ours boots a KruxOS slot only if it holds a ``linux`` (or ``efi``)
line and exactly one ``kruxos.slot=A|B`` option: the daemon reads the booted
slot from that option, so an entry without it cannot boot a working device.
:func:`read_slot` says which slot an entry file boots, or why it boots none;
:func:`find_entries` sorts every ``kruxos-*.conf`` of the ESP that way, by
content rather than by name.

An entry that is gone is rebuilt from the other slot's (:func:`rebuild_entry`)
only when that one follows the shipped layout (``deploy/systemd-boot/kruxos-a.conf``),
whose slot-specific values are known:

=================================================  =====================================
``linux``, ``efi``, ``initrd``, ``devicetree``,     every path under ``/kruxos/a/``
``devicetree-overlay``
``options``                                        ``kruxos.slot=A``, ``root=PARTLABEL=root-a``
``title``                                          ``(slot A)`` (shown in the menu only)
=================================================  =====================================

Anything else that could name a slot would be copied to the wrong one: a
``version`` line, a key this module does not know, another ``root=`` form, a
lone ``a`` in a value (``mount.usr=PARTLABEL=usr-a``). Then the rebuild is
refused with the reason, never guessed at.

:func:`salvage_conf` keeps the loader.conf lines a repair may carry over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.boot import SLOTS, SlotName, other
from reconciler.durable import read_at_most
from reconciler.errors import BootEnvError
from reconciler.quoting import excerpt, printable

__all__ = ["MAX_ENTRY_BYTES", "SHIPPED_NOTE", "SHIPPED_SETTINGS", "Found", "entry_slot",
           "find_entries", "read_slot", "rebuild_entry", "salvage_conf", "wanted_content"]

#: The largest entry file read (a real one is a few lines).
MAX_ENTRY_BYTES = 64 << 10
#: loader.conf's settings as ``deploy/systemd-boot/loader.conf`` ships them: what a repair
#: writes when no setting of the damaged file survives.
SHIPPED_SETTINGS = ("timeout 0", "editor no", "auto-entries no", "auto-firmware no")
#: The comment written above them.
SHIPPED_NOTE = "# settings as shipped: the previous loader.conf could not be read"
#: The longest loader.conf line a repair keeps (a real one is a few dozen characters).
MAX_CONF_LINE = 256

_PATH_KEYS = ("linux", "efi", "initrd", "devicetree", "devicetree-overlay")
#: Keys carried over unchanged (still checked for a lone slot letter).
_PLAIN_KEYS = ("machine-id", "sort-key", "architecture")
_LINE = re.compile(r"^(\s*)(\S+)(\s+)(.*?)\s*$")
_SLOT_OPTION = re.compile(r"^kruxos\.slot=(.*)$")
_CONF_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_QUOTE = 60


@dataclass
class Found:
    """Our entry files (``kruxos-*.conf``) by the slot their content boots (``None``: none),
    each slot's content, and why each of the others boots nothing."""

    files: dict[str, SlotName | None]
    content: dict[SlotName, bytes]
    why: dict[str, str]


def read_slot(path: Path) -> tuple[SlotName, bytes]:
    """The slot an entry file boots, and its bytes; ``BootEnvError`` saying why it boots
    none, worded to follow the file's name (``is not UTF-8``, ``names no kernel ...``)."""
    try:
        raw, too_large = read_at_most(path, MAX_ENTRY_BYTES)
    except OSError as exc:
        raise BootEnvError(f"is unreadable: {exc.strerror or exc}") from exc
    if too_large:
        raise BootEnvError(f"is larger than {MAX_ENTRY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeError as exc:
        raise BootEnvError("is not UTF-8") from exc
    return entry_slot(text), raw


def find_entries(entries_dir: Path) -> Found:
    """Every ``kruxos-*.conf`` sorted by the slot it boots; two different entries for one
    slot cannot be repaired without a guess (``BootEnvError``)."""
    try:
        names = sorted(p.name for p in entries_dir.iterdir())
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise BootEnvError(f"bls backend: cannot list {entries_dir}: "
                           f"{exc.strerror or exc}") from exc
    found = Found({}, {}, {})
    for name in names:
        if name.startswith("kruxos-") and name.endswith(".conf"):
            _sort_entry(entries_dir, name, found)
    return found


def wanted_content(found: Found, finals: dict[SlotName, str],
                   entries_dir: Path) -> tuple[dict[SlotName, bytes], list[str]]:
    """Each slot's entry: its own, else rebuilt from the other slot's (named by the name in
    ``finals`` when one of its copies has it); notes of what was rebuilt, for the trail."""
    content = dict(found.content)
    notes: list[str] = []
    for slot in SLOTS:
        if slot in content:
            continue
        source = other(slot)
        if source not in content:
            raise BootEnvError(
                f"bls backend: cannot repair {entries_dir} without a guess: no entry of slot A "
                "or B to rebuild the other from; install the shipped entries by hand "
                "(docs/bootloader-systemd-boot.md)")
        names = [n for n, owner in found.files.items() if owner == source]
        name = printable(finals[source] if finals[source] in names else names[0], _QUOTE)
        try:
            text = rebuild_entry(content[source].decode("utf-8"), source, slot, name)
        except BootEnvError as exc:
            raise BootEnvError(
                f"bls backend: cannot repair {entries_dir} without a guess: slot {slot} has no "
                f"entry and slot {source}'s cannot be its template: {exc}; write "
                f"{finals[slot]} by hand (docs/bootloader-systemd-boot.md)") from exc
        content[slot] = text.encode("utf-8")
        notes.append(f"slot {slot}'s entry rebuilt from {name}")
    return content, notes


def entry_slot(text: str) -> SlotName:
    """The slot an entry's text boots; ``BootEnvError`` saying why when it boots none."""
    fields = _fields(text)
    if not any(value for key, value in fields if key in ("linux", "efi")):
        raise BootEnvError("names no kernel (no linux or efi line)")
    slots = [m.group(1) for key, value in fields if key == "options"
             for m in map(_SLOT_OPTION.match, value.split()) if m]
    if len(slots) != 1 or slots[0] not in ("A", "B"):
        raise BootEnvError("does not name its slot once (kruxos.slot=A or B in options)")
    return "A" if slots[0] == "A" else "B"


def rebuild_entry(text: str, source: SlotName, target: SlotName, source_name: str) -> str:
    """Slot ``target``'s entry made from ``source``'s entry ``text`` (named ``source_name``),
    its slot-specific values swapped; ``BootEnvError`` naming what cannot be swapped."""
    if entry_slot(text) != source:
        raise BootEnvError(f"{source_name} is not slot {source}'s entry")
    out = [f"# Slot {target}'s entry, rebuilt by the reconciler from {source_name}",
           f"# (slot {source}'s) when it was found missing or unreadable."]
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or match.group(2).startswith("#"):
            continue  # blank lines and comments (they may speak of the other slot)
        indent, key, gap, value = match.groups()
        out.append(f"{indent}{key}{gap}{_swap(key, value, source, target, source_name)}")
    return "\n".join(out) + "\n"


def salvage_conf(raw: bytes | None, own: tuple[str, ...]) -> tuple[list[str], bool]:
    """The lines of a damaged loader.conf a repair keeps, the shipped settings added if
    none is a setting; and whether they were added.

    ``raw`` is ``None`` when the file is missing or too large to read. A line is
    kept when it is UTF-8, printable (a tab allowed), at most :data:`MAX_CONF_LINE`
    characters, and blank, a comment or a ``key value`` setting; the ``default``
    line and the comments starting with one of the prefixes ``own`` are the
    backend's and are written anew.
    """
    kept = [line for line in _decoded_lines(raw or b"") if _keep(line, own)]
    shipped = not any(_setting(line) for line in kept)
    if shipped:
        kept += [SHIPPED_NOTE, *SHIPPED_SETTINGS]
    while kept and not kept[-1].strip():
        kept.pop()
    return kept, shipped


# -- private ------------------------------------------------------------------


def _sort_entry(entries_dir: Path, name: str, found: Found) -> None:
    try:
        slot, raw = read_slot(entries_dir / name)
    except BootEnvError as exc:
        found.files[name] = None
        found.why[name] = str(exc)
        return
    if slot in found.content and found.content[slot] != raw:
        first = next(n for n, owner in found.files.items() if owner == slot)
        raise BootEnvError(
            f"bls backend: cannot repair {entries_dir} without a guess: slot {slot} has two "
            f"different entries, {excerpt(first, _QUOTE)} and {excerpt(name, _QUOTE)}; move "
            "the wrong one out of loader/entries (docs/bootloader-systemd-boot.md)")
    found.content.setdefault(slot, raw)
    found.files[name] = slot


def _fields(text: str) -> list[tuple[str, str]]:
    fields = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts and not parts[0].startswith("#"):
            fields.append((parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return fields


def _swap(key: str, value: str, source: SlotName, target: SlotName, where: str) -> str:
    if key == "title":
        return value.replace(f"(slot {source})", f"(slot {target})")
    if key in _PATH_KEYS:
        return " ".join(_swap_path(key, path, source, target, where) for path in value.split())
    if key == "options":
        return " ".join(_swap_option(token, source, target, where) for token in value.split())
    if key in _PLAIN_KEYS:
        return _unnamed(key, value, source, where)
    raise BootEnvError(f"{where}: its {excerpt(key, _QUOTE)} line is not one the backend "
                       "knows how to carry over to the other slot")


def _swap_path(key: str, path: str, source: SlotName, target: SlotName, where: str) -> str:
    prefix = f"/kruxos/{source.lower()}/"
    if not path.startswith(prefix):
        raise BootEnvError(f"{where}: {key} {excerpt(path, _QUOTE)} is not under {prefix}")
    rest = _unnamed(key, path[len(prefix):], source, where)
    return f"/kruxos/{target.lower()}/{rest}"


def _swap_option(token: str, source: SlotName, target: SlotName, where: str) -> str:
    if token == f"kruxos.slot={source}":
        return f"kruxos.slot={target}"
    if token.startswith("root="):
        if token != f"root=PARTLABEL=root-{source.lower()}":
            raise BootEnvError(f"{where}: option {excerpt(token, _QUOTE)} is not "
                               f"root=PARTLABEL=root-{source.lower()}")
        return f"root=PARTLABEL=root-{target.lower()}"
    return _unnamed("option", token, source, where)


def _unnamed(what: str, value: str, source: SlotName, where: str) -> str:
    """``value`` itself, unless a lone slot letter in it may name slot ``source``."""
    if re.search(rf"(?<![A-Za-z0-9]){source}(?![A-Za-z0-9])", value, re.IGNORECASE):
        raise BootEnvError(f"{where}: {what} {excerpt(value, _QUOTE)} may name slot {source}")
    return value


def _decoded_lines(raw: bytes) -> list[str]:
    lines = []
    for chunk in raw.split(b"\n"):
        try:
            lines.append(chunk.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return lines


def _keep(line: str, own: tuple[str, ...]) -> bool:
    if len(line) > MAX_CONF_LINE or not line.replace("\t", " ").isprintable():
        return False
    if line.startswith(own):
        return False
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return True
    key = stripped.split(None, 1)[0]
    return key != "default" and _CONF_KEY.match(key) is not None


def _setting(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")
