"""The ``bls`` backend: systemd-boot automatic boot assessment on BLS entries.

The env path is the ESP directory. Files we own there:

==============================  ===================================================
``loader/entries/kruxos-a.conf``  slot A's entry; its *name* carries the boot counter
``loader/entries/kruxos-b.conf``  slot B's entry, likewise
``loader/loader.conf``            only its ``default`` line and our ``# kruxos`` comments
``kruxos/damaged/``               where a repair moves ``kruxos-*.conf`` files that boot no slot
==============================  ===================================================

Entry names (systemd-boot renames them itself, ``+LEFT-DONE``, before each boot):

- ``kruxos-X.conf``         no counter: a good slot, booted without counting
- ``kruxos-X+N[-D].conf``   N >= 1 tries left: a trial; systemd-boot boots it and
                            renames it ``+(N-1)-(D+1)`` first
- ``kruxos-X+0[-D].conf``   no tries left: systemd-boot never picks it (sorted last,
                            and our ``default`` pattern skips it)

``default kruxos-X[+.][1-9c]*`` names the *target*: slot X's entry when it is good
(``.c``onf) or has tries left (``+1``..``+9``), never at ``+0``. When the target's
tries are exhausted the pattern matches nothing and systemd-boot boots the first
entry in its sort order: the other slot's good entry (entries at ``+0`` sort last).
So the target is the trial slot during a trial and the default slot otherwise.

Marks that systemd-boot cannot express (``staged``, ``bad``, ``empty``) and the
last fallback reason live in loader.conf comments (``# kruxos: A=good B=staged``,
``# kruxos-fallback: ...``), which systemd-boot ignores. A slot not good and not
on trial has its entry at ``+0`` (``+0-D`` when bad), so it is never booted.

systemd-boot leaves no fallback trace, but it does set ``LoaderEntrySelected``
(the entry it booted, before the rename). A target at ``+0`` that is the booted
entry is a trial on its last try; one that is not (or when the variable is
unknown) means the tries ran out and systemd-boot fell back: we report
``fallback_reason`` and the next write records it in loader.conf.

Every change is one atomic rename of an entry and one atomic rewrite of
loader.conf, ordered so that a power cut between the two leaves a state that
systemd-boot and :meth:`BlsBackend.read` agree on (see the docs page).

A damaged ESP (loader.conf missing, too large, not UTF-8 or without our lines;
an entry missing, doubled or under a name we never write) is rewritten by
:meth:`BlsBackend.repair` from what is known good. Entries are told apart by
the slot their ``kruxos.slot=`` option boots, not by their names; a missing
one is rebuilt from the other slot's only when that one follows the shipped
layout (:mod:`reconciler.boot.blsentry`); what cannot be repaired without a
guess is refused with the reason, and nothing is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.boot import SLOTS, BootState, Mark, SlotName, other, register
from reconciler.boot.blsentry import Found, find_entries, read_slot, salvage_conf, wanted_content
from reconciler.durable import atomic_write, fsync_dir, make_dirs, read_at_most
from reconciler.errors import BootEnvError
from reconciler.failpoints import failpoint
from reconciler.quoting import excerpt, printable

MAX_TRIES = 9
MARKS: tuple[Mark, ...] = ("good", "staged", "bad", "empty")
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
SYS_EFIVARS = Path("/sys/firmware/efi/efivars")
MARKS_PREFIX = "# kruxos:"
FALLBACK_PREFIX = "# kruxos-fallback:"
#: Where a repair moves files of ours that boot no slot (systemd-boot reads only loader/entries).
DAMAGED_DIR = "kruxos/damaged"

__all__ = ["BlsBackend", "MAX_TRIES", "default_pattern", "entry_name", "exhausted_reason",
           "parse_entry_name", "read_efivar_string"]

#: A counter as systemd-boot writes it: decimal ASCII, no leading zero, and (our limit) at
#: most five digits; anything else in one of our names is odd, never a number guessed at.
_COUNTER = r"(0|[1-9][0-9]{0,4})"
_ENTRY = re.compile(rf"kruxos-([a-z0-9]+)(?:\+{_COUNTER}(?:-{_COUNTER})?)?\.conf")
#: The largest loader.conf read (a real one is a few lines).
MAX_CONF_BYTES = 64 << 10
#: Characters of a foreign value quoted in an error.
_QUOTE = 80
_PATTERN = re.compile(r"^kruxos-([ab])\[\+\.\]\[1-9c\]\*$")


def exhausted_reason(slot: SlotName) -> str:
    """The fallback reason reported when systemd-boot gave up on ``slot`` (as grub's)."""
    return f"{slot}: trial tries exhausted"


def default_pattern(slot: SlotName) -> str:
    """loader.conf's ``default`` for target ``slot``: its entry when good or with tries left."""
    return f"kruxos-{slot.lower()}[+.][1-9c]*"


def entry_name(slot: SlotName, left: int | None = None, done: int | None = None) -> str:
    """``kruxos-a.conf``, ``kruxos-a+3.conf`` or ``kruxos-a+0-3.conf``."""
    counter = "" if left is None else f"+{left}" + ("" if done is None else f"-{done}")
    return f"kruxos-{slot.lower()}{counter}.conf"


@dataclass(frozen=True)
class _Entry:
    name: str
    left: int | None = None  # None: no counter (good)
    done: int | None = None

    @property
    def good(self) -> bool:
        return self.left is None


def parse_entry_name(name: str) -> tuple[SlotName, int | None, int | None] | None:
    """(slot, left, done) of one of our entry names; ``None`` for a foreign entry.

    A name starting ``kruxos-`` that we would never write raises ``BootEnvError``
    (other digits than ASCII, a leading zero, a counter of more than five digits).
    """
    if not name.startswith("kruxos-") or not name.endswith(".conf"):
        return None
    match = _ENTRY.fullmatch(name)
    if match is None or match.group(1) not in ("a", "b"):
        raise BootEnvError(f"bls backend: odd entry name {_quote(name)}")
    slot: SlotName = "A" if match.group(1) == "a" else "B"
    left, done = match.group(2), match.group(3)
    return slot, int(left) if left is not None else None, int(done) if done is not None else None


def _quote(text: str) -> str:
    """At most :data:`_QUOTE` characters of a foreign name or line, for an error message."""
    return excerpt(text, _QUOTE)


def read_efivar_string(path: Path) -> str | None:
    """An efivarfs file's value as text (4 attribute bytes, then NUL-ended UTF-16LE)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return raw[4:].decode("utf-16-le", "replace").split("\0", 1)[0] or None


@dataclass(frozen=True)
class _View:
    """What is on the ESP, before interpretation."""

    target: SlotName
    entries: dict[SlotName, _Entry | None]
    marks: dict[SlotName, Mark]
    fallback: str | None
    conf_lines: tuple[str, ...]  # loader.conf without our lines


@register("bls")
class BlsBackend:
    """A/B boot state in systemd-boot's entry names and loader.conf on the ESP."""

    name = "bls"

    def __init__(self, env_path: Path, efivars: Path | None = None) -> None:
        self.esp = Path(env_path)
        self.entries_dir = self.esp / "loader" / "entries"
        self.conf_path = self.esp / "loader" / "loader.conf"
        if efivars is None:
            beside = self.esp.parent / "efivars"
            efivars = beside if beside.is_dir() else SYS_EFIVARS
        self.efivars = efivars

    # -- reading -----------------------------------------------------------

    def read(self) -> BootState:
        """The boot state; missing or odd files raise ``BootEnvError`` ("bls backend: ...")."""
        return self._load()[1]

    def booted_slot(self) -> SlotName | None:
        """The slot systemd-boot booted this time (``LoaderEntrySelected``), if known."""
        value = read_efivar_string(self.efivars / f"LoaderEntrySelected-{LOADER_GUID}")
        match = re.match(r"^kruxos-([ab])[+.]", (value or "").lower())
        if match is None:
            return None
        return "A" if match.group(1) == "a" else "B"

    def safe_state(self) -> BootState:
        """The conservative answer when :meth:`read` fails: the slot systemd-boot would
        boot without counting (the target if its entry is good, else the other good one,
        else A); nothing else trusted."""
        try:
            return self.read()
        except BootEnvError:
            pass
        default: SlotName = "A"
        try:
            names = {p.name for p in self.entries_dir.iterdir()}
            text = (self._conf_bytes() or b"").decode("utf-8", "replace")
            target = _parse_target(text, self.conf_path)
            for slot in (target, other(target)):
                if entry_name(slot) in names:
                    default = slot
                    break
        except (OSError, BootEnvError):
            pass
        return BootState(default=default, marks={default: "good", other(default): "bad"})

    # -- the Protocol's operations ------------------------------------------

    def repair(self, state: BootState) -> str | None:
        """Make the ESP say exactly ``state``, whatever is on it now; returns what was
        rebuilt, removed or moved aside (for the audit trail), ``None`` if only renames.

        Each ``kruxos-*.conf`` belongs to the slot its ``kruxos.slot=`` option boots;
        one that boots none is moved to ``kruxos/damaged/``, a copy of another is
        removed, a slot with no entry gets one rebuilt from the other slot's
        (:func:`~reconciler.boot.blsentry.wanted_content`). Steps, in this order so a
        kill between any two leaves the ESP booting what it booted or what ``state``
        allows, and readable or repairable by the next pass: the default slot's good
        entry; loader.conf (targeting it); the strays moved aside; the other slot's
        entry. With a trial loader.conf comes last instead, as when arming, so the
        trial slot is targeted only once it is counted. What cannot be done without a
        guess raises ``BootEnvError`` saying why, before anything is written.
        """
        _check_repair(state)
        found = find_entries(self.entries_dir)
        finals = {slot: _final_name(state, slot, found) for slot in SLOTS}
        content, notes = wanted_content(found, finals, self.entries_dir)
        lines, shipped = salvage_conf(self._conf_bytes(), (MARKS_PREFIX, FALLBACK_PREFIX))
        fallback = " ".join((state.fallback_reason or "").split()) or None
        conf = _View(target=state.trial or state.default, entries={"A": None, "B": None},
                     marks=dict(state.marks), fallback=fallback, conf_lines=tuple(lines))
        try:
            self._place(state.default, finals[state.default], content, found, notes)
            if state.trial is None:
                self._write_conf(conf)  # from here on the default boots, whatever else is there
            for name in [name for name, slot in found.files.items() if slot is None]:
                self._aside(name, found, notes)
            self._place(other(state.default), finals[other(state.default)], content, found,
                        notes)
        except OSError as exc:
            raise BootEnvError(f"bls backend: cannot repair {self.entries_dir}: "
                               f"{exc.strerror or exc}") from exc
        if state.trial is not None:
            self._write_conf(conf)  # as when arming: the counted entry first, then target it
        if shipped:
            notes.append("loader.conf written with the shipped settings")
        return "; ".join(notes) or None

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        """Mark a slot; the default stays good; un-marking the trial slot disarms it."""
        _check_slot(slot)
        if mark not in MARKS:
            raise BootEnvError(f"bls backend: unknown mark {mark!r}")
        view, state = self._load()
        if slot == state.default and mark != "good":
            raise BootEnvError(f"bls backend: {slot} is the default slot; it stays good")
        if slot == state.trial and mark == "good":
            raise BootEnvError(f"bls backend: {slot} is on trial; confirm it with mark_good")
        target = state.default if slot == state.trial else view.target
        new = replace(view, marks={**view.marks, slot: mark}, target=target)
        if mark == "good":
            self._rename(view, slot, entry_name(slot))
            self._write_conf(new)
        else:
            self._write_conf(new)  # stop targeting it first, then make it unbootable
            self._rename(view, slot, _unbootable_name(slot, mark, view.entries[slot]))

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        """Boot ``slot`` next, at most ``tries`` times; the good default stays the fallback."""
        _check_slot(slot)
        if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
            raise BootEnvError(f"bls backend: tries must be 1..{MAX_TRIES}, got {tries!r}")
        view, state = self._load()
        if slot == state.default:
            raise BootEnvError(f"bls backend: {slot} is the default slot; nothing to trial")
        if state.marks[slot] not in ("staged", "good"):
            raise BootEnvError(
                f"bls backend: cannot arm {slot} for a trial: it is marked {state.marks[slot]}")
        self._rename(view, slot, entry_name(slot, tries))  # counted, not yet targeted
        self._write_conf(replace(view, target=slot, fallback=None))

    def mark_good(self, slot: SlotName) -> None:
        """Confirm ``slot`` (what ``systemd-bless-boot good`` does: strip the counter);
        it becomes the target. The previous default stays good, for a manual rollback."""
        _check_slot(slot)
        view, state = self._load()
        mark = state.marks[slot]
        if mark not in ("staged", "good"):
            raise BootEnvError(f"bls backend: cannot confirm {slot}: it is marked {mark}")
        self._rename(view, slot, entry_name(slot))
        self._write_conf(replace(view, target=slot, marks={**view.marks, slot: "good"}))

    def rollback(self, reason: str) -> None:
        """Abandon the trial slot (marked bad), or with no trial go back to the other good slot.

        Same rules as the grub backend; ``reason`` is kept in loader.conf either way.
        """
        view, state = self._load()
        reason = " ".join(reason.split())
        if state.trial is not None:
            trial = state.trial
            self._write_conf(replace(view, target=state.default, fallback=reason,
                                     marks={**view.marks, trial: "bad"}))
            self._rename(view, trial, _unbootable_name(trial, "bad", view.entries[trial]))
            return
        back = other(state.default)
        if state.marks[back] != "good":
            raise BootEnvError(
                f"bls backend: nothing to roll back to: no trial armed and "
                f"{back} is marked {state.marks[back]}")
        self._write_conf(replace(view, target=back, fallback=reason))

    # -- private -------------------------------------------------------------

    def _load(self) -> tuple[_View, BootState]:
        """The ESP as found, and its state; an exhausted trial is folded into the view
        (target back on the default, trial slot bad, reason kept) for the next write."""
        view = _read_view(self.conf_path, self.entries_dir)
        state = _state(view, self.booted_slot(), self.esp)
        if view.target != state.default and state.trial is None:
            view = replace(view, target=state.default, fallback=state.fallback_reason,
                           marks={**view.marks, view.target: "bad"})
        return view, state

    def _rename(self, view: _View, slot: SlotName, name: str) -> None:
        entry = view.entries[slot]
        if entry is None:
            raise BootEnvError(f"bls backend: {self.entries_dir}: no entry for slot {slot}")
        if entry.name == name:
            return
        try:
            os.rename(self.entries_dir / entry.name, self.entries_dir / name)
            failpoint("bls.entry-renamed")
            fsync_dir(self.entries_dir)
        except OSError as exc:
            raise BootEnvError(f"bls backend: cannot rename {entry.name} to {name}: "
                               f"{exc.strerror or exc}") from exc

    def _place(self, slot: SlotName, final: str, content: dict[SlotName, bytes],
               found: Found, notes: list[str]) -> None:
        """Slot ``slot``'s entry under the name ``final``: renamed from a file that holds
        it, else written; its other copies removed. A stray in the way is moved aside."""
        files = found.files
        if files.get(final, "-") != slot:
            if final in files and files[final] is None:
                self._aside(final, found, notes)
            sources = [name for name, owner in files.items() if owner == slot]
            if sources and final not in files:
                os.rename(self.entries_dir / sources[0], self.entries_dir / final)
                del files[sources[0]]
            else:
                atomic_write(self.entries_dir / final, content[slot])
            files[final] = slot
        for name in [name for name, owner in files.items() if owner == slot and name != final]:
            (self.entries_dir / name).unlink()
            del files[name]
            notes.append(f"{printable(name, _QUOTE)} removed (a copy of {final})")
        fsync_dir(self.entries_dir)

    def _aside(self, name: str, found: Found, notes: list[str]) -> None:
        """Move a file that boots no slot of ours out of systemd-boot's sight, kept for a person."""
        aside = self.esp / DAMAGED_DIR
        make_dirs(aside)
        os.rename(self.entries_dir / name, aside / name)
        fsync_dir(aside)
        fsync_dir(self.entries_dir)
        del found.files[name]
        notes.append(f"{printable(name, _QUOTE)} moved to {DAMAGED_DIR}/, as it "
                     f"{found.why[name]}")

    def _conf_bytes(self) -> bytes | None:
        """loader.conf's bytes, or ``None`` when it is missing, unreadable or too large."""
        try:
            raw, too_large = read_at_most(self.conf_path, MAX_CONF_BYTES)
        except OSError:
            return None
        return None if too_large else raw

    def _write_conf(self, view: _View) -> None:
        lines = [*view.conf_lines, f"default {default_pattern(view.target)}",
                 f"{MARKS_PREFIX} " + " ".join(f"{s}={view.marks[s]}" for s in SLOTS)]
        if view.fallback:
            lines.append(f"{FALLBACK_PREFIX} {view.fallback}")
        try:
            atomic_write(self.conf_path, ("\n".join(lines) + "\n").encode("utf-8"),
                         label="loader-conf")
        except OSError as exc:
            raise BootEnvError(f"bls backend: cannot write {self.conf_path}: "
                               f"{exc.strerror or exc}") from exc


def _check_repair(state: BootState) -> None:
    """A state the ESP can say: the default good, a trial of the other slot with 0..9 tries."""
    _check_slot(state.default)
    marks = dict(state.marks)
    if set(marks) != set(SLOTS) or any(mark not in MARKS for mark in marks.values()):
        raise BootEnvError(f"bls backend: cannot repair to marks {excerpt(marks, _QUOTE)}")
    if marks[state.default] != "good":
        raise BootEnvError(f"bls backend: {state.default} is the default slot; it stays good")
    if state.trial is not None:
        if state.trial != other(state.default) or marks[state.trial] not in ("staged", "good"):
            raise BootEnvError(f"bls backend: cannot repair to a trial of {state.trial!r} "
                               f"marked {marks.get(state.trial)!r}")
        if not 0 <= state.tries_left <= MAX_TRIES:
            raise BootEnvError(f"bls backend: tries must be 0..{MAX_TRIES}, "
                               f"got {state.tries_left!r}")


def _final_name(state: BootState, slot: SlotName, found: Found) -> str:
    """The name that says ``state`` for ``slot`` (a bad slot keeps the tries it had done)."""
    mark = state.marks[slot]
    if slot == state.trial:
        return entry_name(slot, state.tries_left)
    if mark == "good":
        return entry_name(slot)
    if mark != "bad":
        return entry_name(slot, 0)
    done = 0
    for name, owner in found.files.items():
        try:
            parsed = parse_entry_name(name)
        except BootEnvError:
            continue
        if owner == slot and parsed is not None and parsed[0] == slot:
            done = max(done, parsed[2] or 0)
    return entry_name(slot, 0, done)


def _unbootable_name(slot: SlotName, mark: Mark, entry: _Entry | None) -> str:
    """``+0`` for staged/empty, ``+0-D`` for bad (keeping the tries done)."""
    if mark != "bad":
        return entry_name(slot, 0)
    return entry_name(slot, 0, entry.done if entry and entry.done is not None else 0)


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise BootEnvError(f"bls backend: unknown slot {slot!r}")


def _read_conf(path: Path) -> str:
    """loader.conf's text; a file larger than any real one is refused unread."""
    raw, too_large = read_at_most(path, MAX_CONF_BYTES)
    if too_large:
        raise BootEnvError(f"bls backend: {path}: larger than {MAX_CONF_BYTES} bytes")
    return raw.decode("utf-8")


def _read_view(conf_path: Path, entries_dir: Path) -> _View:
    try:
        text = _read_conf(conf_path)
        names = sorted(p.name for p in entries_dir.iterdir())
    except (OSError, UnicodeDecodeError) as exc:
        raise BootEnvError(f"bls backend: cannot read the ESP: {exc}") from exc
    entries: dict[SlotName, _Entry | None] = {"A": None, "B": None}
    for name in names:
        parsed = parse_entry_name(name)
        if parsed is None:
            continue
        slot, left, done = parsed
        if entries[slot] is not None:
            raise BootEnvError(f"bls backend: {entries_dir}: two entries for slot {slot}: "
                               f"{entries[slot].name} and {name}")  # type: ignore[union-attr]
        entries[slot] = _Entry(name, left, done)
    for slot, entry in entries.items():
        if entry is not None:
            _check_content(entries_dir / entry.name, slot)
    own = (MARKS_PREFIX, FALLBACK_PREFIX)
    return _View(
        target=_parse_target(text, conf_path),
        entries=entries,
        marks=_parse_marks(text, conf_path),
        fallback=_comment(text, FALLBACK_PREFIX),
        conf_lines=tuple(line for line in text.splitlines()
                         if not line.startswith(own) and _key(line) != "default"),
    )


def _check_content(path: Path, slot: SlotName) -> None:
    """An entry systemd-boot would drop, or that boots the other slot, is damage too."""
    try:
        boots = read_slot(path)[0]
    except BootEnvError as exc:
        raise BootEnvError(f"bls backend: {path.name} {exc}") from exc
    if boots != slot:
        raise BootEnvError(f"bls backend: {path.name} boots slot {boots}, not {slot}")


def _key(line: str) -> str:
    return line.strip().split(None, 1)[0] if line.strip() else ""


def _parse_target(text: str, path: Path) -> SlotName:
    values = [line.strip().split(None, 1)[1:] for line in text.splitlines()
              if _key(line) == "default"]
    if not values or not values[-1]:
        raise BootEnvError(f"bls backend: {path}: no 'default' line")
    match = _PATTERN.match(values[-1][0].strip())
    if match is None:
        raise BootEnvError(f"bls backend: {path}: default {_quote(values[-1][0].strip())} is not "
                           f"ours ({default_pattern('A')} or {default_pattern('B')})")
    return "A" if match.group(1) == "a" else "B"


def _comment(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip() or None
    return None


def _parse_marks(text: str, path: Path) -> dict[SlotName, Mark]:
    marks: dict[SlotName, Mark] = {}
    for item in (_comment(text, MARKS_PREFIX) or "").split():
        slot, _, mark = item.partition("=")
        if slot not in SLOTS or mark not in MARKS:
            raise BootEnvError(f"bls backend: {path}: odd mark {_quote(item)}")
        marks[slot] = mark
    return marks


def _state(view: _View, booted: SlotName | None, esp: Path) -> BootState:
    """Interpret the view as systemd-boot will act on it at the next boot."""
    target = view.target
    entry = view.entries[target]
    if entry is None:
        raise BootEnvError(f"bls backend: {esp}: loader.conf targets slot {target}, "
                           "which has no entry")
    if view.entries[other(target)] is None:
        raise BootEnvError(f"bls backend: {esp}: slot {other(target)} has no entry "
                           f"(kruxos-{other(target).lower()}*.conf)")
    if entry.good:
        return BootState(default=target, marks=_marks(view, target, None),
                         fallback_reason=view.fallback)
    default = other(target)
    fallback = view.entries[default]
    if fallback is None or not fallback.good:
        raise BootEnvError(f"bls backend: {esp}: slot {target} is counted but slot {default} "
                           "has no good entry to fall back to")
    left = entry.left or 0
    if left > 0 or booted == target:
        return BootState(default=default, trial=target, tries_left=left,
                         marks=_marks(view, default, target), fallback_reason=view.fallback)
    marks = {**_marks(view, default, None), target: "bad"}
    return BootState(default=default, marks=marks, fallback_reason=exhausted_reason(target))


def _marks(view: _View, default: SlotName, trial: SlotName | None) -> dict[SlotName, Mark]:
    marks: dict[SlotName, Mark] = {}
    for slot in SLOTS:
        mark = view.marks.get(slot, "empty")
        entry = view.entries[slot]
        if slot == default:
            mark = "good"
        elif slot == trial:
            mark = mark if mark in ("staged", "good") else "staged"
        elif mark == "good" and (entry is None or not entry.good):
            mark = "bad"
        marks[slot] = mark
    return marks
