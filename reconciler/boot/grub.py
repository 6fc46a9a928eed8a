"""The ``grub`` backend: A/B state in GRUB's environment block, read by ``deploy/grub/grub.cfg``.

The variables and the rules over them are :mod:`reconciler.boot.abvars`'s;
this module only keeps them in a grubenv file. Every other variable in the
block is foreign and kept as is, in its place; our variables are written even
when empty (``KRUXOS_TRIAL=``).

The only writer besides us is GRUB's ``save_env``, which changes ``KRUXOS_TRIES``
on each trial boot and, when the tries are used up, ``KRUXOS_<slot>``,
``KRUXOS_TRIAL`` and ``KRUXOS_FALLBACK``. ``save_env`` cannot grow the file, so
arming a trial first checks that GRUB's worst-case write will fit.

Every successful write is copied to ``grubenv.bak`` beside the env, so that
:meth:`GrubBackend.safe_state` can name the last good default even when the
env itself is corrupt.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.boot import SlotName, grubenv, register
from reconciler.boot.abvars import MAX_TRIES, VariableBackend, exhausted_reason, mark_var, state_of
from reconciler.durable import atomic_write
from reconciler.errors import BootEnvError
from reconciler.failpoints import failpoint

BACKUP_NAME = "grubenv.bak"

__all__ = ["GrubBackend", "MAX_TRIES", "exhausted_reason", "mark_var"]


@register("grub")
class GrubBackend(VariableBackend):
    """A/B boot state kept in one GRUB env file, written where GRUB reads it; foreign
    variables kept."""

    name = "grub"
    loader = "GRUB"

    def __init__(self, env_path: Path) -> None:
        super().__init__(env_path, Path(env_path).with_name(BACKUP_NAME))

    def _load(self) -> dict[str, str]:
        """The env's variables; missing file → empty; corrupt → prefixed ``BootEnvError``."""
        try:
            return self._read(self.env_path)
        except FileNotFoundError:
            return {}

    def _store(self, env: dict[str, str]) -> None:
        """Write the block in place (:func:`grubenv.write_block`: GRUB reads its sectors,
        not the journal), then the same bytes to the backup copy (read only by us)."""
        try:
            block = grubenv.render(env)
        except BootEnvError as exc:
            raise BootEnvError(f"{self._prefix}{self.env_path}: {exc}") from exc
        grubenv.write_block(self.env_path, block, label="grubenv")
        failpoint("grub.env-written")
        atomic_write(self.backup_path, block, label="grubenv-backup")

    def _fits(self, env: dict[str, str]) -> None:
        """GRUB's in-place ``save_env`` can only write what fits in the block."""
        try:
            grubenv.render(env)
        except BootEnvError as exc:
            raise self._no_room(exc) from exc

    def _backup_default(self) -> SlotName | None:
        try:
            return state_of(self._read(self.backup_path), self.backup_path, self._prefix).default
        except (BootEnvError, FileNotFoundError):
            return None

    def _read(self, path: Path) -> dict[str, str]:
        """``grubenv.read_env`` with the backend's name on its errors."""
        try:
            return grubenv.read_env(path)
        except BootEnvError as exc:
            raise BootEnvError(f"{self._prefix}{exc}") from exc
