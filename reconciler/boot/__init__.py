"""Bootloader backends: one small Protocol, one module per bootloader, chosen by name.

The bootloader holds the half of the A/B contract that must work even when the
new slot's kernel hangs before our daemon runs: it counts trial boots down and
falls back to the previous good slot by itself. The reconciler only arms a
trial, marks slots and reads what the bootloader did.

Slot marks kept in the environment:

- ``good``    bootable, confirmed; the default slot is always good
- ``staged``  holds a verified image that was never booted (not bootable yet)
- ``bad``     not bootable: being written, failed on trial, or emptied
- ``empty``   never written

Backends do not import each other; :data:`REGISTRY` maps names to factories.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reconciler.observed import SLOTS, Mark, SlotName, other

__all__ = ["SLOTS", "Mark", "SlotName", "other", "BootState", "Backend", "REGISTRY",
           "register", "open_backend"]


@dataclass(frozen=True)
class BootState:
    """What the bootloader environment says, in backend-neutral terms."""

    default: SlotName
    trial: SlotName | None = None
    tries_left: int = 0
    marks: Mapping[SlotName, Mark] = field(default_factory=lambda: {"A": "good", "B": "empty"})
    fallback_reason: str | None = None


class Backend(Protocol):
    """The five operations every bootloader backend offers (plus ``read`` and ``repair``)."""

    name: str

    def read(self) -> BootState:
        """The current boot state; a corrupt env raises ``BootEnvError``."""

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        """Mark a slot (``bad`` before writing it, ``staged`` after verifying it)."""

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        """Boot ``slot`` next, at most ``tries`` times, the default staying as fallback."""

    def mark_good(self, slot: SlotName) -> None:
        """Confirm ``slot``: it becomes the default, the trial and its counter end."""

    def rollback(self, reason: str) -> None:
        """End any trial, mark the trial slot bad, keep/make the previous good slot default."""

    def repair(self, state: BootState) -> str | None:
        """Write ``state`` as a fresh env over one that cannot be read (never guessed over);
        returns what else was done (a file rebuilt or moved aside) for the audit trail."""


BackendFactory = Callable[[Path], Backend]
REGISTRY: dict[str, BackendFactory] = {}


def register(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Class decorator adding a backend to :data:`REGISTRY` under ``name``."""

    def add(factory: BackendFactory) -> BackendFactory:
        REGISTRY[name] = factory
        return factory

    return add


def open_backend(name: str, env_path: Path) -> Backend:
    """The backend called ``name``, working on the environment at ``env_path``."""
    _load_builtin()
    try:
        factory = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        from reconciler.errors import ConfigError

        raise ConfigError(f"unknown bootloader backend {name!r} (known: {known})") from None
    return factory(env_path)


def _load_builtin() -> None:
    """Import the built-in backends (every module of this package) so they register."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
