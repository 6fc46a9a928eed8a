"""The ``uboot`` backend: A/B state in the U-Boot environment, read by ``deploy/uboot/boot.cmd``.

The env path given to the backend is the ``fw_env.config`` naming where the
environment lives (one copy, or a redundant pair: see :mod:`ubootenv`). The
variables and the rules over them are :mod:`reconciler.boot.abvars`'s, shared
with the ``grub`` backend so the reconciler behaves the same on every
bootloader; this module only keeps them in the U-Boot env.

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

from reconciler.boot import SlotName, register, ubootenv
from reconciler.boot.abvars import (
    MAX_TRIES,
    OWN,
    VariableBackend,
    exhausted_reason,
    mark_var,
    state_of,
)
from reconciler.durable import atomic_write
from reconciler.errors import BootEnvError
from reconciler.failpoints import failpoint

BACKUP_NAME = "kruxos-uboot.bak"
_BACKUP_SIZE = 0x1000

__all__ = ["UBootBackend", "MAX_TRIES", "OWN", "exhausted_reason", "mark_var"]


@register("uboot")
class UBootBackend(VariableBackend):
    """A/B boot state in a U-Boot env described by a ``fw_env.config``; foreign variables kept."""

    name = "uboot"
    loader = "U-Boot"

    def __init__(self, env_path: Path) -> None:
        super().__init__(env_path, Path(env_path).with_name(BACKUP_NAME))

    def _load(self) -> dict[str, str]:
        """The env's variables (missing or blank → empty; corrupt → ``BootEnvError``)."""
        return ubootenv.read_env(self.env_path)

    def _store(self, env: dict[str, str]) -> None:
        """Write the env (empty variables of ours absent), then our variables to the backup."""
        new = _present(env)
        ubootenv.write_env(self.env_path, new)
        failpoint("uboot.env-written")
        own = {key: value for key, value in new.items() if key in OWN}
        with contextlib.suppress(OSError, BootEnvError):
            atomic_write(self.backup_path, ubootenv.encode(own, _BACKUP_SIZE))

    def _store_fresh(self, env: dict[str, str]) -> None:
        """Every copy rewritten valid (the first newest), without reading the damaged ones."""
        new = _present(env)
        copies = ubootenv.read_config(self.env_path)
        redundant = len(copies) == 2
        for index, copy in enumerate(copies):
            flag = (1 - index) if redundant else None
            data = ubootenv.encode(new, copy.size, flag)
            ubootenv.write_copy(copy, data)
        own = {key: value for key, value in new.items() if key in OWN}
        with contextlib.suppress(OSError, BootEnvError):
            atomic_write(self.backup_path, ubootenv.encode(own, _BACKUP_SIZE))

    def _fits(self, env: dict[str, str]) -> None:
        """U-Boot's save cannot record more than one env copy holds."""
        copies = ubootenv.read_config(self.env_path)
        flag = 0 if len(copies) == 2 else None
        try:
            ubootenv.encode(_present(env), copies[0].size, flag)
        except BootEnvError as exc:
            raise self._no_room(exc) from exc

    def _backup_default(self) -> SlotName | None:
        """As for GRUB: the default last written to the backup (boot.cmd never changes it)."""
        with contextlib.suppress(BootEnvError, OSError):
            decoded = ubootenv.decode(self.backup_path.read_bytes(), False, str(self.backup_path))
            if decoded is not None:
                return state_of(decoded[1], self.backup_path, self._prefix).default
        return None


def _present(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without our empty variables: U-Boot has no empty variable."""
    return {key: value for key, value in env.items() if value != "" or key not in OWN}

