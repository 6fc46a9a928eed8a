"""The whole update flow on a simulated device booting with systemd-boot (its counting rules).

Real processes only: ``kruxos sim init DIR --bootloader bls``, ``kruxos sim run
DIR``, the spec edited on disk, the device read through ``kruxos update
status`` and the entry names on the simulated ESP. The device driver is the
end-to-end suite's :class:`SimDevice`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.device import SimDevice


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Any]:
    """A simulated systemd-boot device (not started); stopped and cleaned up in teardown."""
    dev = SimDevice(tmp_path / "dev")
    out = dev.cli("sim", "init", str(dev.dir), "--bootloader", "bls").stdout
    assert f"export KRUXOS_CONFIG={dev.config}" in out
    dev.set_config(resync="1s")
    try:
        yield dev
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_leftovers()


def entries(dev: Any) -> list[str]:
    return sorted(p.name for p in (dev.dir / "boot" / "esp" / "loader" / "entries").iterdir())


def test_a_bls_device_is_laid_out_as_an_esp(device: Any) -> None:
    assert "backend: bls" in device.config.read_text()
    assert "env: boot/esp" in device.config.read_text()
    assert entries(device) == ["kruxos-a.conf", "kruxos-b+0.conf"]


def test_spec_edit_stages_trials_and_confirms_then_a_broken_release_rolls_back(
    device: Any
) -> None:
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s", "timeout: 3s"))
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED", timeout=40)
    boots = device.boots()
    assert len(boots) == 2 and "boot kruxos-b+3.conf (2 tries left after)" in boots[1], boots
    assert entries(device) == ["kruxos-a.conf", "kruxos-b.conf"]

    device.publish("1.0.2", "gateway-fails")
    device.edit_spec(version="1.0.2")
    device.wait_status("1.0.1", "CONFIRMED (rolled back from 1.0.2)", timeout=60)
    assert entries(device) == ["kruxos-a+0-1.conf", "kruxos-b.conf"]
    doc = device.status_json()
    assert doc["booted"] == "B"
    assert device.cli("audit", "verify").returncode == 0


def test_a_hung_trial_is_counted_down_by_the_bootloader_and_falls_back(device: Any) -> None:
    device.publish("1.0.2", "hangs")
    device.start("--watchdog", "1")
    device.edit_spec(version="1.0.2")
    doc = device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.2)", timeout=40)
    assert doc["booted"] == "A"
    boots = device.boots()
    assert len(boots) == 5, boots
    for line, left in zip(boots[1:4], (2, 1, 0), strict=True):
        assert f"({left} tries left after)" in line, boots
    assert "matched nothing" in boots[4] and "kruxos-a.conf" in boots[4], boots
    assert entries(device) == ["kruxos-a.conf", "kruxos-b+0-3.conf"]
