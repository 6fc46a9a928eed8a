"""The ``uboot`` backend: A/B state in the U-Boot environment, read by ``deploy/uboot/boot.cmd``.

The env path given to the backend is the ``fw_env.config`` naming where the
environment lives (one copy, or a redundant pair: see :mod:`ubootenv`). The
variables and their meaning are exactly the ``grub`` backend's, so the
reconciler behaves the same on every bootloader:

=================  ==========================================================
``KRUXOS_DEFAULT`` ``A``/``B``: the good slot booted when no trial is armed
``KRUXOS_TRIAL``   ``A``/``B``, or absent: the slot armed for a trial boot
``KRUXOS_TRIES``   ``0``..``9``, or absent: trial boots left (boot.cmd counts down)
``KRUXOS_A``       mark of slot A: ``good``, ``staged``, ``bad`` or ``empty``
``KRUXOS_B``       mark of slot B, likewise
``KRUXOS_FALLBACK`` why the last trial ended without a confirm, or absent
=================  ==========================================================

In U-Boot an empty variable does not exist, so "empty" is written as absent
(GRUB keeps ``KRUXOS_TRIAL=``). The counter stays one digit, as on GRUB:
boot.cmd checks it against ``1``..``9`` before counting, so a damaged counter
ends the trial instead of being read as hex. Every other variable (``bootcmd``,
``bootargs``, ...) is foreign and kept as is.

Every successful write also refreshes ``kruxos-uboot.bak`` beside the
``fw_env.config`` (best effort), so :meth:`UBootBackend.safe_state` can name
the last good default when the env itself is corrupt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from reconciler.boot import SLOTS, BootState, Mark, SlotName, other, register, ubootenv
from reconciler.errors import BootEnvError
from reconciler.store import atomic_write

DEFAULT = "KRUXOS_DEFAULT"
TRIAL = "KRUXOS_TRIAL"
TRIES = "KRUXOS_TRIES"
FALLBACK = "KRUXOS_FALLBACK"
OWN = (DEFAULT, TRIAL, TRIES, "KRUXOS_A", "KRUXOS_B", FALLBACK)
MAX_TRIES = 9
MARKS: tuple[Mark, ...] = ("good", "staged", "bad", "empty")
BACKUP_NAME = "kruxos-uboot.bak"
_BACKUP_SIZE = 0x1000

__all__ = ["UBootBackend", "MAX_TRIES", "OWN", "exhausted_reason", "mark_var"]


def mark_var(slot: SlotName) -> str:
    """The variable holding ``slot``'s mark (``KRUXOS_A`` / ``KRUXOS_B``)."""
    return f"KRUXOS_{slot}"


def exhausted_reason(slot: SlotName) -> str:
    """The trace boot.cmd leaves in ``KRUXOS_FALLBACK`` when it gives up on ``slot``."""
    return f"{slot}: trial tries exhausted"


@register("uboot")
class UBootBackend:
    """A/B boot state in a U-Boot env described by a ``fw_env.config``; foreign variables kept."""

    name = "uboot"

    def __init__(self, env_path: Path) -> None:
        self.env_path = Path(env_path)
        self.backup_path = self.env_path.with_name(BACKUP_NAME)

    # -- reading -----------------------------------------------------------

    def read(self) -> BootState:
        """The boot state; a missing or blank env, or one without our variables, is fresh."""
        return _state(self._load(), self.env_path)

    def safe_state(self) -> BootState:
        """The conservative answer when :meth:`read` fails, so callers never crash-loop.

        As for GRUB: the default last written to the backup (boot.cmd never
        changes the default), else A; no trial, the other slot not bootable.
        """
        try:
            return self.read()
        except BootEnvError:
            pass
        default: SlotName = "A"
        with contextlib.suppress(BootEnvError, OSError):
            decoded = ubootenv.decode(self.backup_path.read_bytes(), False, str(self.backup_path))
            if decoded is not None:
                default = _state(decoded[1], self.backup_path).default
        return BootState(default=default, marks={default: "good", other(default): "bad"})

    # -- the Protocol's operations ------------------------------------------

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        """Mark a slot; the default stays good, and un-staging the trial slot disarms it."""
        _check_slot(slot)
        if mark not in MARKS:
            raise BootEnvError(f"uboot backend: unknown mark {mark!r}")
        env = self._load()
        state = _state(env, self.env_path)
        if slot == state.default and mark != "good":
            raise BootEnvError(f"uboot backend: {slot} is the default slot; it stays good")
        changes: dict[str, str] = {mark_var(slot): mark}
        if slot == state.trial:
            if mark == "good":
                raise BootEnvError(f"uboot backend: {slot} is on trial; confirm it with mark_good")
            changes.update({TRIAL: "", TRIES: ""})
        self._write(env, changes)

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        """Boot ``slot`` next, at most ``tries`` times; the good default stays the fallback."""
        _check_slot(slot)
        if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
            raise BootEnvError(f"uboot backend: tries must be 1..{MAX_TRIES}, got {tries!r}")
        env = self._load()
        state = _state(env, self.env_path)
        if slot == state.default:
            raise BootEnvError(f"uboot backend: {slot} is the default slot; nothing to trial")
        if state.marks[slot] not in ("staged", "good"):
            raise BootEnvError(
                f"uboot backend: cannot arm {slot} for a trial: it is marked {state.marks[slot]}"
            )
        changes = {TRIAL: slot, TRIES: str(tries), FALLBACK: ""}
        self._check_room(env, {**changes, mark_var(slot): "bad", TRIAL: "", TRIES: "0",
                               FALLBACK: exhausted_reason(slot)})
        self._write(env, changes)

    def mark_good(self, slot: SlotName) -> None:
        """Confirm ``slot``: it becomes the default and the trial ends (the old slot stays good)."""
        _check_slot(slot)
        env = self._load()
        mark = _state(env, self.env_path).marks[slot]
        if mark not in ("staged", "good"):
            raise BootEnvError(f"uboot backend: cannot confirm {slot}: it is marked {mark}")
        self._write(env, {DEFAULT: slot, mark_var(slot): "good", TRIAL: "", TRIES: ""})

    def rollback(self, reason: str) -> None:
        """Abandon the trial slot (marked bad), or with no trial go back to the other good slot.

        Exactly the ``grub`` backend's rule: with a trial armed the default is
        already the previous good slot; with none, the other slot must be
        ``good`` to become the default, else ``BootEnvError``. ``reason`` goes
        into ``KRUXOS_FALLBACK``.
        """
        env = self._load()
        state = _state(env, self.env_path)
        if state.trial is not None:
            changes = {mark_var(state.trial): "bad", TRIAL: "", TRIES: "", FALLBACK: reason}
        elif state.marks[other(state.default)] == "good":
            changes = {DEFAULT: other(state.default), FALLBACK: reason}
        else:
            raise BootEnvError(
                f"uboot backend: nothing to roll back to: no trial armed and "
                f"{other(state.default)} is marked {state.marks[other(state.default)]}"
            )
        self._write(env, changes)

    # -- private -------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        """The env's variables (missing or blank → empty; corrupt → ``BootEnvError``)."""
        return ubootenv.read_env(self.env_path)

    def _write(self, env: dict[str, str], changes: Mapping[str, str]) -> None:
        """Apply ``changes`` (all of our variables written, empty ones absent), then the backup."""
        new = _next_env(env, changes, self.env_path)
        ubootenv.write_env(self.env_path, new)
        own = {key: value for key, value in new.items() if key in OWN}
        with contextlib.suppress(OSError, BootEnvError):
            atomic_write(self.backup_path, ubootenv.encode(own, _BACKUP_SIZE))

    def _check_room(self, env: dict[str, str], worst: Mapping[str, str]) -> None:
        """Refuse a trial whose exhaustion U-Boot's save could not record (the env is full)."""
        copies = ubootenv.read_config(self.env_path)
        flag = 0 if len(copies) == 2 else None
        try:
            ubootenv.encode(_next_env(env, worst, self.env_path), copies[0].size, flag)
        except BootEnvError as exc:
            raise BootEnvError(
                f"uboot backend: {self.env_path}: no room for U-Boot to record a failed trial: "
                f"{exc}") from exc


def _next_env(env: Mapping[str, str], changes: Mapping[str, str], path: Path) -> dict[str, str]:
    """``env`` with ``changes`` applied, our missing variables filled in, empty ones dropped."""
    new = dict(env)
    for key, value in _own_vars(_state(env, path)).items():
        new.setdefault(key, value)
    new.update(changes)
    return {key: value for key, value in new.items() if value != "" or key not in OWN}


def _own_vars(state: BootState) -> dict[str, str]:
    """Our variables for ``state`` (empty ones are dropped when written)."""
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
        raise BootEnvError(f"uboot backend: unknown slot {slot!r}")


def _state(env: Mapping[str, str], path: Path) -> BootState:
    """Translate our variables into a ``BootState``; a value we never write is corrupt."""
    default = _slot_value(env, DEFAULT, path, "A")
    if default is None:
        raise BootEnvError(f"uboot backend: {path}: {DEFAULT} is empty")
    trial = _slot_value(env, TRIAL, path, "")
    tries = env.get(TRIES, "")
    if tries not in ("", *map(str, range(MAX_TRIES + 1))):
        raise BootEnvError(f"uboot backend: {path}: {TRIES}={tries!r} is not 0..{MAX_TRIES}")
    return BootState(
        default=default,
        trial=trial,
        tries_left=int(tries or 0) if trial else 0,
        marks={slot: _mark(env, slot, default, path) for slot in SLOTS},
        fallback_reason=env.get(FALLBACK) or None,
    )


def _slot_value(env: Mapping[str, str], key: str, path: Path, missing: str) -> SlotName | None:
    value = env.get(key, missing)
    if value not in ("A", "B", ""):
        raise BootEnvError(f"uboot backend: {path}: {key}={value!r} is not A or B")
    return cast(SlotName, value) if value else None


def _mark(env: Mapping[str, str], slot: SlotName, default: SlotName, path: Path) -> Mark:
    """A slot's mark; an absent mark is ``good`` for the default slot, else ``empty``."""
    value = env.get(mark_var(slot)) or ("good" if slot == default else "empty")
    if value not in MARKS:
        raise BootEnvError(f"uboot backend: {path}: {mark_var(slot)}={value!r} is not a mark")
    return value
