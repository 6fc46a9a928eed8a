"""The ``grub`` backend: A/B state in GRUB's environment block, read by ``deploy/grub/grub.cfg``.

Variables we own (every other variable in the block is foreign and kept as is,
in its place):

=================  ==========================================================
``KRUXOS_DEFAULT`` ``A``/``B``: the good slot booted when no trial is armed
``KRUXOS_TRIAL``   ``A``/``B`` or empty: the slot armed for a trial boot
``KRUXOS_TRIES``   ``0``..``9`` or empty: trial boots left (GRUB counts down)
``KRUXOS_A``       mark of slot A: ``good``, ``staged``, ``bad`` or ``empty``
``KRUXOS_B``       mark of slot B, likewise
``KRUXOS_FALLBACK`` why the last trial ended without a confirm, or empty
=================  ==========================================================

GRUB script has no arithmetic, so the counter is a single digit that grub.cfg
counts down with an if/elif chain: more than :data:`MAX_TRIES` is refused. The
only writer besides us is GRUB's ``save_env``, which changes ``KRUXOS_TRIES``
on each trial boot and, when the tries are used up, ``KRUXOS_<slot>``,
``KRUXOS_TRIAL`` and ``KRUXOS_FALLBACK``. ``save_env`` cannot grow the file, so
arming a trial first checks that GRUB's worst-case write will fit.

Every successful write is copied to ``grubenv.bak`` beside the env, so that
:meth:`GrubBackend.safe_state` can name the last good default even when the
env itself is corrupt.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

from reconciler.boot import SLOTS, BootState, Mark, SlotName, grubenv, other, register
from reconciler.errors import BootEnvError
from reconciler.store import atomic_write

DEFAULT = "KRUXOS_DEFAULT"
TRIAL = "KRUXOS_TRIAL"
TRIES = "KRUXOS_TRIES"
FALLBACK = "KRUXOS_FALLBACK"
MAX_TRIES = 9
MARKS: tuple[Mark, ...] = ("good", "staged", "bad", "empty")
BACKUP_NAME = "grubenv.bak"

__all__ = ["GrubBackend", "MAX_TRIES", "exhausted_reason", "mark_var"]


def mark_var(slot: SlotName) -> str:
    """The variable holding ``slot``'s mark (``KRUXOS_A`` / ``KRUXOS_B``)."""
    return f"KRUXOS_{slot}"


def exhausted_reason(slot: SlotName) -> str:
    """The trace grub.cfg leaves in ``KRUXOS_FALLBACK`` when it gives up on ``slot``."""
    return f"{slot}: trial tries exhausted"


@register("grub")
class GrubBackend:
    """A/B boot state kept in one GRUB env file; all writes atomic, foreign variables kept."""

    name = "grub"

    def __init__(self, env_path: Path) -> None:
        self.env_path = Path(env_path)
        self.backup_path = self.env_path.with_name(BACKUP_NAME)

    # -- reading -----------------------------------------------------------

    def read(self) -> BootState:
        """The boot state; a missing env or one without our variables is a fresh device."""
        return _state(self._load(), self.env_path)

    def safe_state(self) -> BootState:
        """The conservative answer when :meth:`read` fails, so callers never crash-loop.

        The default is the last one written to the backup copy (GRUB never
        changes the default, so the backup is current on that point), else A.
        Nothing else is trusted: no trial, the other slot not bootable.
        """
        try:
            return self.read()
        except BootEnvError:
            pass
        try:
            default = _state(_read(self.backup_path), self.backup_path).default
        except (BootEnvError, FileNotFoundError):
            default = "A"
        return BootState(default=default, marks={default: "good", other(default): "bad"})

    # -- the Protocol's operations ------------------------------------------

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        """Mark a slot; the default stays good, and un-staging the trial slot disarms it.

        Marking the armed trial slot ``bad`` (before rewriting it) also clears
        the trial, so GRUB never boots a slot that is being written.
        """
        _check_slot(slot)
        if mark not in MARKS:
            raise BootEnvError(f"grub backend: unknown mark {mark!r}")
        env = self._load()
        state = _state(env, self.env_path)
        if slot == state.default and mark != "good":
            raise BootEnvError(f"grub backend: {slot} is the default slot; it stays good")
        changes: dict[str, str] = {mark_var(slot): mark}
        if slot == state.trial:
            if mark == "good":
                raise BootEnvError(f"grub backend: {slot} is on trial; confirm it with mark_good")
            changes.update({TRIAL: "", TRIES: ""})
        self._write(env, changes)

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        """Boot ``slot`` next, at most ``tries`` times; the good default stays the fallback."""
        _check_slot(slot)
        if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
            raise BootEnvError(f"grub backend: tries must be 1..{MAX_TRIES}, got {tries!r}")
        env = self._load()
        state = _state(env, self.env_path)
        if slot == state.default:
            raise BootEnvError(f"grub backend: {slot} is the default slot; nothing to trial")
        if state.marks[slot] not in ("staged", "good"):
            raise BootEnvError(
                f"grub backend: cannot arm {slot} for a trial: it is marked {state.marks[slot]}"
            )
        changes = {TRIAL: slot, TRIES: str(tries), FALLBACK: ""}
        self._check_room_for_grub(env, changes, slot)
        self._write(env, changes)

    def mark_good(self, slot: SlotName) -> None:
        """Confirm ``slot``: it becomes the default and the trial ends.

        The previous default keeps its ``good`` mark: it is the slot a later
        manual rollback returns to. Confirming twice is harmless.
        """
        _check_slot(slot)
        env = self._load()
        mark = _state(env, self.env_path).marks[slot]
        if mark not in ("staged", "good"):
            raise BootEnvError(f"grub backend: cannot confirm {slot}: it is marked {mark}")
        self._write(env, {DEFAULT: slot, mark_var(slot): "good", TRIAL: "", TRIES: ""})

    def rollback(self, reason: str) -> None:
        """Abandon the trial slot (marked bad), or with no trial go back to the other good slot.

        With a trial armed (tries left or not) the default is already the
        previous good slot: the trial slot is marked bad and the trial ends.
        With no trial, the other slot becomes the default if it is good (a
        manual rollback after a confirmed update); else there is nothing to go
        back to and ``BootEnvError`` is raised. ``reason`` is kept in
        ``KRUXOS_FALLBACK`` either way.
        """
        env = self._load()
        state = _state(env, self.env_path)
        if state.trial is not None:
            changes = {mark_var(state.trial): "bad", TRIAL: "", TRIES: "", FALLBACK: reason}
        elif state.marks[other(state.default)] == "good":
            changes = {DEFAULT: other(state.default), FALLBACK: reason}
        else:
            raise BootEnvError(
                f"grub backend: nothing to roll back to: no trial armed and "
                f"{other(state.default)} is marked {state.marks[other(state.default)]}"
            )
        self._write(env, changes)

    # -- private -------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        """The env's variables; missing file → empty; corrupt → prefixed ``BootEnvError``."""
        try:
            return _read(self.env_path)
        except FileNotFoundError:
            return {}

    def _write(self, env: dict[str, str], changes: Mapping[str, str]) -> None:
        """Apply ``changes`` in place, then refresh the backup copy.

        Our variables missing from the env are added after the foreign ones,
        so every write leaves all six present and foreign ones where they were.
        """
        try:
            block = grubenv.render(_next_env(env, changes, self.env_path))
        except BootEnvError as exc:
            raise BootEnvError(f"grub backend: {self.env_path}: {exc}") from exc
        atomic_write(self.env_path, block)
        atomic_write(self.backup_path, block)

    def _check_room_for_grub(
        self, env: dict[str, str], changes: Mapping[str, str], slot: SlotName
    ) -> None:
        """Refuse a trial whose exhaustion GRUB's in-place ``save_env`` could not record."""
        worst = {**changes, mark_var(slot): "bad", TRIAL: "", TRIES: "0",
                 FALLBACK: exhausted_reason(slot)}
        try:
            grubenv.render(_next_env(env, worst, self.env_path))
        except BootEnvError as exc:
            raise BootEnvError(
                f"grub backend: {self.env_path}: no room for GRUB to record a failed trial: {exc}"
            ) from exc


def _read(path: Path) -> dict[str, str]:
    """``grubenv.read_env`` with the backend's name on its errors."""
    try:
        return grubenv.read_env(path)
    except BootEnvError as exc:
        raise BootEnvError(f"grub backend: {exc}") from exc


def _next_env(env: Mapping[str, str], changes: Mapping[str, str], path: Path) -> dict[str, str]:
    """``env`` with ``changes`` applied and any of our variables it lacked filled in."""
    new = dict(env)
    for key, value in _own_vars(_state(env, path)).items():
        new.setdefault(key, value)
    new.update(changes)
    return new


def _own_vars(state: BootState) -> dict[str, str]:
    """Our variables for ``state``, in the order they are first written."""
    return {
        DEFAULT: state.default,
        TRIAL: state.trial or "",
        TRIES: str(state.tries_left) if state.trial else "",
        mark_var("A"): state.marks["A"],
        mark_var("B"): state.marks["B"],
        FALLBACK: state.fallback_reason or "",
    }


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise BootEnvError(f"grub backend: unknown slot {slot!r}")


def _state(env: Mapping[str, str], path: Path) -> BootState:
    """Translate our variables into a ``BootState``; a value we never write is corrupt."""
    default = _slot_value(env, DEFAULT, path, "A")
    if default is None:
        raise BootEnvError(f"grub backend: {path}: {DEFAULT} is empty")
    trial = _slot_value(env, TRIAL, path, "")
    tries = env.get(TRIES, "")
    if tries not in ("", *map(str, range(MAX_TRIES + 1))):
        raise BootEnvError(f"grub backend: {path}: {TRIES}={tries!r} is not 0..{MAX_TRIES}")
    marks = {slot: _mark(env, slot, default, path) for slot in SLOTS}
    return BootState(
        default=default,
        trial=trial,
        tries_left=int(tries or 0) if trial else 0,
        marks=marks,
        fallback_reason=env.get(FALLBACK) or None,
    )


def _slot_value(env: Mapping[str, str], key: str, path: Path, missing: str) -> SlotName | None:
    value = env.get(key, missing)
    if value not in ("A", "B", ""):
        raise BootEnvError(f"grub backend: {path}: {key}={value!r} is not A or B")
    return cast(SlotName, value) if value else None


def _mark(env: Mapping[str, str], slot: SlotName, default: SlotName, path: Path) -> Mark:
    """A slot's mark; an absent mark is ``good`` for the default slot, else ``empty``."""
    value = env.get(mark_var(slot)) or ("good" if slot == default else "empty")
    if value not in MARKS:
        raise BootEnvError(f"grub backend: {path}: {mark_var(slot)}={value!r} is not a mark")
    return value
