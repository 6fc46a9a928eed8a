"""Fixtures of the power-cut tests: the filesystem (``mount.py``) and a device on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.device import SimDevice
from tests.powercut.device import CutDevice
from tests.powercut.mount import PowercutMount, powercut

#: Changing operations of an update on the simulated device (measured: grub 309).
SPAN = 310

__all__ = ["powercut", "cut_device"]


@pytest.fixture
def cut_device(tmp_path: Path, powercut: Callable[..., PowercutMount]
               ) -> Iterator[Callable[..., tuple[CutDevice, int]]]:
    """Factory: a booted device of a bootloader on the power-cut filesystem, and how many
    changing operations an update takes (its span): counted on an update without a cut
    (``count=True``), else the figure measured so (``test_device_cuts.SPAN``).

    Teardown ends the device's processes before the filesystems are unmounted."""
    made: list[SimDevice] = []

    def make(bootloader: str, count: bool) -> tuple[CutDevice, int]:
        device = SimDevice(tmp_path / f"dev-{bootloader}")
        made.append(device)
        device.cli("sim", "init", str(device.dir), "--bootloader", bootloader)
        rig = CutDevice(device, powercut, tmp_path / f"cut-{bootloader}")
        rig.boot()
        if not count:
            return rig, SPAN
        span = rig.update(rig.new_version())
        assert span > 20, f"an update took only {span} changing operations"
        return rig, span

    yield make
    for device in made:
        try:
            device.stop()
        finally:
            device.kill_leftovers()
