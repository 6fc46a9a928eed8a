"""Fixtures of the crash matrix: simulated devices of each bootloader, stopped in teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.device import SimDevice


@pytest.fixture
def crash_device(tmp_path: Path) -> Iterator[Callable[[str, str], SimDevice]]:
    """Factory: ``kruxos sim init NAME --bootloader BACKEND`` (not started)."""
    made: list[SimDevice] = []

    def make(backend: str, name: str) -> SimDevice:
        dev = SimDevice(tmp_path / name)
        made.append(dev)
        dev.cli("sim", "init", str(dev.dir), "--bootloader", backend)
        dev.set_config(resync="1s")
        return dev

    yield make
    for dev in made:
        try:
            dev.stop()
        finally:
            dev.kill_leftovers()
