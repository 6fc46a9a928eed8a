"""The A/B state machine over the ``KRUXOS_*`` variables, shared by every env-variable backend.

GRUB and U-Boot keep the reconciler's state in the same six variables with
the same meaning, so the reconciler behaves the same on every bootloader:

=================  ==========================================================
``KRUXOS_DEFAULT`` ``A``/``B``: the good slot booted when no trial is armed
``KRUXOS_TRIAL``   ``A``/``B`` or empty: the slot armed for a trial boot
``KRUXOS_TRIES``   ``0``..``9`` or empty: trial boots left (the boot script counts down)
``KRUXOS_A``       mark of slot A: ``good``, ``staged``, ``bad`` or ``empty``
``KRUXOS_B``       mark of slot B, likewise
``KRUXOS_FALLBACK`` why the last trial ended without a confirm, or empty
=================  ==========================================================

Neither boot script has arithmetic to spare, so the counter is one digit:
more than :data:`MAX_TRIES` is refused. The rules (what each operation may do,
what a value we never write means) live here once, in :class:`VariableBackend`;
a backend module only says how its env is stored: :meth:`~VariableBackend._load`,
:meth:`~VariableBackend._store`, :meth:`~VariableBackend._fits` and
:meth:`~VariableBackend._backup_default`. Keeping one copy is what keeps the
bootloaders from drifting apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

from reconciler.boot import SLOTS, BootState, Mark, SlotName, other
from reconciler.errors import BootEnvError

DEFAULT = "KRUXOS_DEFAULT"
TRIAL = "KRUXOS_TRIAL"
TRIES = "KRUXOS_TRIES"
FALLBACK = "KRUXOS_FALLBACK"
OWN = (DEFAULT, TRIAL, TRIES, "KRUXOS_A", "KRUXOS_B", FALLBACK)
MAX_TRIES = 9
MARKS: tuple[Mark, ...] = ("good", "staged", "bad", "empty")

__all__ = ["DEFAULT", "TRIAL", "TRIES", "FALLBACK", "OWN", "MAX_TRIES", "MARKS",
           "VariableBackend", "exhausted_reason", "mark_var", "state_of"]


def mark_var(slot: SlotName) -> str:
    """The variable holding ``slot``'s mark (``KRUXOS_A`` / ``KRUXOS_B``)."""
    return f"KRUXOS_{slot}"


def exhausted_reason(slot: SlotName) -> str:
    """The trace the boot script leaves in ``KRUXOS_FALLBACK`` when it gives up on ``slot``."""
    return f"{slot}: trial tries exhausted"


class VariableBackend:
    """The Protocol's operations written once over the ``KRUXOS_*`` variables.

    A subclass sets ``name`` (the registry name, also the error prefix) and
    ``loader`` (the bootloader as people call it) and provides the storage hooks.
    """

    name: str
    loader: str

    def __init__(self, env_path: Path, backup_path: Path) -> None:
        self.env_path = Path(env_path)
        self.backup_path = backup_path

    @property
    def _prefix(self) -> str:
        return f"{self.name} backend: "

    # -- storage hooks -------------------------------------------------------

    def _load(self) -> dict[str, str]:
        """The env's variables; a missing env is empty, a corrupt one ``BootEnvError``."""
        raise NotImplementedError

    def _store(self, env: dict[str, str]) -> None:
        """Write ``env`` (all six of our variables present), then refresh the backup."""
        raise NotImplementedError

    def _fits(self, env: dict[str, str]) -> None:
        """Raise ``BootEnvError`` (see :meth:`_no_room`) if the bootloader cannot save ``env``."""
        raise NotImplementedError

    def _backup_default(self) -> SlotName | None:
        """The default slot recorded in the backup copy, or ``None`` if it cannot be read."""
        raise NotImplementedError

    # -- reading -------------------------------------------------------------

    def read(self) -> BootState:
        """The boot state; a missing env or one without our variables is a fresh device."""
        return self._state(self._load())

    def safe_state(self) -> BootState:
        """The conservative answer when :meth:`read` fails, so callers never crash-loop.

        The default is the last one written to the backup copy (the boot script
        never changes the default, so the backup is current on that point),
        else A. Nothing else is trusted: no trial, the other slot not bootable.
        """
        try:
            return self.read()
        except BootEnvError:
            pass
        default = self._backup_default() or "A"
        return BootState(default=default, marks={default: "good", other(default): "bad"})

    # -- the Protocol's operations -------------------------------------------

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        """Mark a slot; the default stays good, and un-staging the trial slot disarms it.

        Marking the armed trial slot ``bad`` (before rewriting it) also clears
        the trial, so the bootloader never boots a slot that is being written.
        """
        self._check_slot(slot)
        if mark not in MARKS:
            raise BootEnvError(f"{self._prefix}unknown mark {mark!r}")
        env = self._load()
        state = self._state(env)
        if slot == state.default and mark != "good":
            raise BootEnvError(f"{self._prefix}{slot} is the default slot; it stays good")
        changes: dict[str, str] = {mark_var(slot): mark}
        if slot == state.trial:
            if mark == "good":
                raise BootEnvError(f"{self._prefix}{slot} is on trial; confirm it with mark_good")
            changes.update({TRIAL: "", TRIES: ""})
        self._write(env, changes)

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        """Boot ``slot`` next, at most ``tries`` times; the good default stays the fallback."""
        self._check_slot(slot)
        if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
            raise BootEnvError(f"{self._prefix}tries must be 1..{MAX_TRIES}, got {tries!r}")
        env = self._load()
        state = self._state(env)
        if slot == state.default:
            raise BootEnvError(f"{self._prefix}{slot} is the default slot; nothing to trial")
        if state.marks[slot] not in ("staged", "good"):
            raise BootEnvError(
                f"{self._prefix}cannot arm {slot} for a trial: it is marked {state.marks[slot]}"
            )
        changes = {TRIAL: slot, TRIES: str(tries), FALLBACK: ""}
        worst = {**changes, mark_var(slot): "bad", TRIAL: "", TRIES: "0",
                 FALLBACK: exhausted_reason(slot)}
        self._fits(self._next_env(env, worst))
        self._write(env, changes)

    def mark_good(self, slot: SlotName) -> None:
        """Confirm ``slot``: it becomes the default and the trial ends.

        The previous default keeps its ``good`` mark: it is the slot a later
        manual rollback returns to. Confirming twice is harmless.
        """
        self._check_slot(slot)
        env = self._load()
        mark = self._state(env).marks[slot]
        if mark not in ("staged", "good"):
            raise BootEnvError(f"{self._prefix}cannot confirm {slot}: it is marked {mark}")
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
        state = self._state(env)
        if state.trial is not None:
            changes = {mark_var(state.trial): "bad", TRIAL: "", TRIES: "", FALLBACK: reason}
        elif state.marks[other(state.default)] == "good":
            changes = {DEFAULT: other(state.default), FALLBACK: reason}
        else:
            raise BootEnvError(
                f"{self._prefix}nothing to roll back to: no trial armed and "
                f"{other(state.default)} is marked {state.marks[other(state.default)]}"
            )
        self._write(env, changes)

    def repair(self, state: BootState) -> None:
        """Write a fresh env holding exactly ``state`` over one that cannot be read.

        The damaged env's foreign variables cannot be read either, so they are
        lost with it; the bootloader's own defaults stand in for them.
        """
        self._store_fresh(_own_vars(state))

    def _store_fresh(self, env: dict[str, str]) -> None:
        """Write ``env`` without reading what is there (overridden where a write reads)."""
        self._store(env)

    # -- private -------------------------------------------------------------

    def _state(self, env: Mapping[str, str]) -> BootState:
        return state_of(env, self.env_path, self._prefix)

    def _write(self, env: dict[str, str], changes: Mapping[str, str]) -> None:
        """Apply ``changes``; our variables missing from the env are added after foreign ones."""
        self._store(self._next_env(env, changes))

    def _next_env(self, env: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
        """``env`` with ``changes`` applied and any of our variables it lacked filled in."""
        new = dict(env)
        for key, value in _own_vars(self._state(env)).items():
            new.setdefault(key, value)
        new.update(changes)
        return new

    def _no_room(self, exc: BootEnvError) -> BootEnvError:
        """The error for a trial whose exhaustion the bootloader could not record."""
        return BootEnvError(f"{self._prefix}{self.env_path}: no room for {self.loader} "
                            f"to record a failed trial: {exc}")

    def _check_slot(self, slot: str) -> None:
        if slot not in SLOTS:
            raise BootEnvError(f"{self._prefix}unknown slot {slot!r}")


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


def state_of(env: Mapping[str, str], where: Path, prefix: str) -> BootState:
    """Translate our variables into a ``BootState``; a value we never write is corrupt.

    ``where`` names the env in errors, ``prefix`` is the backend's (``"grub backend: "``).
    """
    default = _slot_value(env, DEFAULT, "A", f"{prefix}{where}")
    if default is None:
        raise BootEnvError(f"{prefix}{where}: {DEFAULT} is empty")
    trial = _slot_value(env, TRIAL, "", f"{prefix}{where}")
    tries = env.get(TRIES, "")
    if tries not in ("", *map(str, range(MAX_TRIES + 1))):
        raise BootEnvError(f"{prefix}{where}: {TRIES}={tries!r} is not 0..{MAX_TRIES}")
    return BootState(
        default=default,
        trial=trial,
        tries_left=int(tries or 0) if trial else 0,
        marks={slot: _mark(env, slot, default, f"{prefix}{where}") for slot in SLOTS},
        fallback_reason=env.get(FALLBACK) or None,
    )


def _slot_value(env: Mapping[str, str], key: str, missing: str, at: str) -> SlotName | None:
    value = env.get(key, missing)
    if value not in ("A", "B", ""):
        raise BootEnvError(f"{at}: {key}={value!r} is not A or B")
    return cast(SlotName, value) if value else None


def _mark(env: Mapping[str, str], slot: SlotName, default: SlotName, at: str) -> Mark:
    """A slot's mark; an absent mark is ``good`` for the default slot, else ``empty``."""
    value = env.get(mark_var(slot)) or ("good" if slot == default else "empty")
    if value not in MARKS:
        raise BootEnvError(f"{at}: {mark_var(slot)}={value!r} is not a mark")
    return value
