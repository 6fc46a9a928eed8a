"""The whole update flow on a simulated device booting with U-Boot (boot.cmd's logic).

Real processes only: ``kruxos sim init DIR --bootloader uboot``, ``kruxos sim
run DIR``, the spec edited on disk, the device read through ``kruxos update
status`` and ``fw_printenv``. The device driver is the end-to-end suite's
:class:`SimDevice` (``tests/device.py``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.boot import ubootenv
from tests.device import SimDevice


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Any]:
    """A simulated U-Boot device (not started); stopped and cleaned up in teardown."""
    dev = SimDevice(tmp_path / "dev")
    out = dev.cli("sim", "init", str(dev.dir), "--bootloader", "uboot").stdout
    assert f"export KRUXOS_CONFIG={dev.config}" in out
    dev.set_config(resync="1s")
    try:
        yield dev
    finally:
        try:
            dev.stop()
        finally:
            dev.kill_leftovers()


def env_of(dev: Any) -> dict[str, str]:
    return ubootenv.read_env(dev.dir / "boot" / "fw_env.config")


@pytest.mark.needs_tool("fw_printenv")
def test_a_uboot_device_is_laid_out_as_a_redundant_env(device: Any) -> None:
    assert "backend: uboot" in device.config.read_text()
    assert "env: boot/fw_env.config" in device.config.read_text()
    copies = ubootenv.read_config(device.dir / "boot" / "fw_env.config")
    assert len(copies) == 2
    env = env_of(device)
    assert (env["KRUXOS_DEFAULT"], env["KRUXOS_A"], env["KRUXOS_B"]) == ("A", "good", "empty")
    assert env["bootcmd"] == "run distro_bootcmd"  # the board's variables stay
    out = subprocess.run(["fw_printenv", "-c", str(device.dir / "boot" / "fw_env.config"),
                          "-n", "KRUXOS_DEFAULT"], capture_output=True, text=True,
                         timeout=10, check=True)
    assert out.stdout.strip() == "A"


def test_spec_edit_stages_trials_and_confirms_then_a_broken_release_rolls_back(
    device: Any
) -> None:
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s", "timeout: 3s"))
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED", timeout=40)
    boots = device.boots()
    assert len(boots) == 2 and "chose slot B (sda3): trial B: 2 tries left" in boots[1], boots
    env = env_of(device)
    assert (env["KRUXOS_DEFAULT"], env["KRUXOS_B"], env["KRUXOS_A"]) == ("B", "good", "good")
    assert "KRUXOS_TRIAL" not in env and env["bootcmd"] == "run distro_bootcmd"

    device.publish("1.0.2", "gateway-fails")
    device.edit_spec(version="1.0.2")
    device.wait_status("1.0.1", "CONFIRMED (rolled back from 1.0.2)", timeout=60)
    env = env_of(device)
    assert (env["KRUXOS_DEFAULT"], env["KRUXOS_A"]) == ("B", "bad"), env
    assert "KRUXOS_TRIAL" not in env and env.get("KRUXOS_FALLBACK"), env
    assert device.status_json()["booted"] == "B"
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
        assert f"chose slot B (sda3): trial B: {left} tries left" in line, boots
    assert "chose slot A (sda2)" in boots[4] and "tries exhausted" in boots[4], boots
    assert env_of(device)["KRUXOS_B"] == "bad"
