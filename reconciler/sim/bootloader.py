"""The simulated device's bootloader: ``deploy/grub/grub.cfg``'s logic, run on a grubenv file.

One call of :func:`boot_once` is one power-on (or watchdog reset) of the
simulated device: it picks the slot exactly as the shipped grub.cfg does and
changes the env file exactly as GRUB's ``save_env`` would, so the reconciler
under test sees the same env it would see on hardware.

The logic, kept as small as grub.cfg so the two can be compared line by line
(``tests/boot/test_grub_qemu.py`` also boots every scenario on real GRUB under
QEMU and requires the same slot and a byte-identical env after each boot):

==================================  ===========================================  ============
env before the boot                 saved to the env (``save_env``)              boots
==================================  ===========================================  ============
no ``KRUXOS_TRIAL`` (not A or B)    nothing                                      default
trial X, ``KRUXOS_TRIES`` 1..9      ``KRUXOS_TRIES`` one less (:data:`COUNTDOWN`) X
trial X, tries 0/empty/other        ``KRUXOS_X=bad``, ``KRUXOS_TRIAL=``,          default
                                    ``KRUXOS_FALLBACK="X: trial tries exhausted"``
trial X, counter cannot be saved    nothing                                      default
==================================  ===========================================  ============

"default" is ``KRUXOS_DEFAULT`` when it is ``B``, else ``A``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.boot import SlotName, grubenv
from reconciler.boot.abvars import (
    DEFAULT,
    FALLBACK,
    MAX_TRIES,
    TRIAL,
    TRIES,
    exhausted_reason,
    mark_var,
)
from reconciler.errors import BootEnvError

#: grub.cfg's if/elif chain: the try count before the boot → the count saved.
COUNTDOWN: dict[str, str] = {str(n): str(n - 1) for n in range(MAX_TRIES, 0, -1)}

_SLOT_NAMES: dict[str, SlotName] = {"A": "A", "B": "B"}

#: Stores some variables in the env, raising ``OSError``/``BootEnvError`` if it cannot.
SaveFn = Callable[[Mapping[str, str]], object]

__all__ = ["BootChoice", "COUNTDOWN", "boot_once", "choose_and_save"]


@dataclass(frozen=True)
class BootChoice:
    """What one boot chose, and why (``trace`` reads like GRUB's console line)."""

    slot: SlotName
    trial: bool
    tries_left_after: int
    fell_back: bool
    trace: str


def boot_once(env_path: Path) -> BootChoice:
    """Boot the simulated device once: choose a slot and update the env as GRUB would.

    A missing env is a device whose grubenv was never written: it boots A. An
    env GRUB could not load (corrupt) is treated the same way, as GRUB's
    ``load_env`` would leave every variable unset.
    """
    return choose_and_save(_load(env_path), lambda changes: grubenv.edit(env_path, set=changes))


def choose_and_save(env: Mapping[str, str], save: SaveFn) -> BootChoice:
    """One run of the shipped boot script over ``env``: the slot chosen, its changes ``save``d.

    Shared by every emulator of a boot script over the ``KRUXOS_*`` variables
    (GRUB's grub.cfg, U-Boot's boot.cmd): they differ only in how ``save``
    stores the changes, so the countdown and give-up rules live here once.
    """
    default: SlotName = "B" if env.get(DEFAULT) == "B" else "A"
    trial = _SLOT_NAMES.get(env.get(TRIAL, ""))
    if trial is None:
        return BootChoice(default, False, 0, False, f"no trial: boot default {default}")
    tries = env.get(TRIES, "")
    if tries in COUNTDOWN:
        return _count_down(save, default, trial, COUNTDOWN[tries])
    return _give_up(save, default, trial)


def _count_down(save: SaveFn, default: SlotName, trial: SlotName, left: str) -> BootChoice:
    """Save the lower count first; only then boot the trial slot (else the default)."""
    try:
        save({TRIES: left})
    except (OSError, BootEnvError):
        trace = f"cannot save the try counter: boot default {default}"
        return BootChoice(default, False, 0, False, trace)
    trace = f"trial {trial}: {left} tries left after this boot"
    return BootChoice(trial, True, int(left), False, trace)


def _give_up(save: SaveFn, default: SlotName, trial: SlotName) -> BootChoice:
    """Tries used up: mark the trial slot bad, clear the trial, boot the default."""
    reason = exhausted_reason(trial)
    try:
        save({mark_var(trial): "bad", TRIAL: "", FALLBACK: reason})
    except (OSError, BootEnvError):
        pass  # the bootloader prints its save error and boots the default all the same
    return BootChoice(default, False, 0, True, f"{reason}: boot default {default}")


def _load(env_path: Path) -> dict[str, str]:
    """What ``load_env`` leaves set: the file's variables, or none if it cannot be read."""
    try:
        return grubenv.read_env(env_path)
    except (OSError, BootEnvError):
        return {}


EmulatorFn = Callable[[Path], BootChoice]
_EMULATORS = {"grub": __name__, "uboot": "reconciler.sim.boot_uboot",
              "bls": "reconciler.sim.boot_bls"}


def emulator_for(backend: str) -> EmulatorFn:
    """The emulator of the shipped boot script for ``backend`` (its ``boot_once``)."""
    import importlib

    try:
        module = _EMULATORS[backend]
    except KeyError:
        raise ValueError(f"no simulated bootloader for backend {backend!r}") from None
    boot: EmulatorFn = importlib.import_module(module).boot_once
    return boot
