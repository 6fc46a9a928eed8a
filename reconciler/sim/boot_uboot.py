"""The simulated U-Boot: ``deploy/uboot/boot.cmd``'s logic on a U-Boot env via ``fw_env.config``.

One call of :func:`boot_once` is one power-on (or watchdog reset): it picks
the slot exactly as the shipped boot.cmd does and saves the env exactly as its
``saveenv`` would (the whole env, to the other copy of the redundant pair), so
the reconciler under test sees the env it would see on a board.

==================================  ===========================================  ============
env before the boot                 saved to the env (``saveenv``)               boots
==================================  ===========================================  ============
no ``KRUXOS_TRIAL`` (not A or B)    nothing                                      default
trial X, ``KRUXOS_TRIES`` 1..9      ``KRUXOS_TRIES`` one less (:data:`COUNTDOWN`) X
trial X, tries 0/absent/other       ``KRUXOS_X=bad``, ``KRUXOS_TRIAL`` removed,   default
                                    ``KRUXOS_FALLBACK="X: trial tries exhausted"``
trial X, counter cannot be saved    nothing                                      default
==================================  ===========================================  ============

"default" is ``KRUXOS_DEFAULT`` when it is ``B``, else ``A``. An env U-Boot
cannot load (no valid copy) leaves none of our variables set, as U-Boot then
runs on its built-in default environment: slot A boots and nothing is saved.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.boot import ubootenv
from reconciler.boot.ubootenv import EnvCopy
from reconciler.errors import BootEnvError
from reconciler.sim.bootloader import BootChoice, choose_and_save

CONFIG_NAME = "fw_env.config"
ENV_NAME = "uboot.env"
COPY_SIZE = 0x4000
#: What a board's env holds besides ours: kept untouched by the reconciler.
BOARD_ENV = {"bootcmd": "run distro_bootcmd", "bootdelay": "0", "boot_targets": "mmc0"}

__all__ = ["init_env", "boot_once", "CONFIG_NAME", "ENV_NAME", "COPY_SIZE"]


def init_env(boot_dir: Path) -> Path:
    """A board's redundant env: ``uboot.env`` (two 16 KiB copies) and its ``fw_env.config``.

    The first copy holds the board's own variables (flag 1), the second is
    erased, as after flashing a fresh board. Paths in the config are absolute,
    as ``fw_printenv`` resolves relative ones from its working directory.
    """
    boot_dir = boot_dir.resolve()
    boot_dir.mkdir(parents=True, exist_ok=True)
    env = boot_dir / ENV_NAME
    env.write_bytes(ubootenv.encode(BOARD_ENV, COPY_SIZE, 1) + ubootenv.PAD * COPY_SIZE)
    config = boot_dir / CONFIG_NAME
    config.write_text(ubootenv.config_text(
        [EnvCopy(env, 0, COPY_SIZE), EnvCopy(env, COPY_SIZE, COPY_SIZE)]))
    return config


def boot_once(env_path: Path) -> BootChoice:
    """Boot the simulated board once: choose a slot and save the env as boot.cmd would.

    boot.cmd's rules are grub.cfg's (see :func:`choose_and_save`); only the
    save differs: ``saveenv`` writes the whole env, where an empty value
    removes the variable.
    """
    return choose_and_save(_load(env_path), lambda changes: ubootenv.edit(env_path, set=changes))


def _load(env_path: Path) -> dict[str, str]:
    """The env U-Boot runs with: the current copy's variables, or none of ours."""
    try:
        return ubootenv.read_env(env_path)
    except (OSError, BootEnvError):
        return {}
