"""The running system as the reconciler sees it: which slot booted, which boot this is,
and what release each slot's own bytes name.

One of the reconciler's collaborators (:class:`reconciler.reconcile.Parts`), so a
pass runs against an in-memory machine in tests and the model checker; the real
one reads the kernel command line, the boot id and the slots of the device.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from reconciler.config import Device
from reconciler.observed import SlotName
from reconciler.release.identity import SlotIdentity, read_identity


class Machine(Protocol):
    """What the running system says about itself."""

    def booted_slot(self) -> SlotName:
        """The slot running now; raises ``ConfigError`` when it cannot be told."""

    def boot_id(self) -> str:
        """An id that changes on every boot (``unknown`` when it cannot be read)."""

    def slot_identity(self, slot: SlotName) -> tuple[SlotIdentity | None, str | None]:
        """The release ``slot``'s own bytes name, or why they name none; raises OSError
        (``FileNotFoundError`` when the slot's device does not exist)."""


class DeviceMachine:
    """The real machine: the kernel command line, the boot id, the slot devices."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def booted_slot(self) -> SlotName:
        return self.device.booted_slot()

    def boot_id(self) -> str:
        return self.device.current_boot_id()

    def slot_identity(self, slot: SlotName) -> tuple[SlotIdentity | None, str | None]:
        path = self.device.slot_paths[slot]
        # A slot whose device is missing is not an empty slot: a disk that came up
        # under another name, or an image layer naming the wrong partition.
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return read_identity(path)
