"""How a command finds who reconciles the device: the daemon, itself, or a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import link as link_module
from reconciler.cli.link import connect
from reconciler.config import load_device
from reconciler.errors import LockHeldError
from tests.device import data_dir_lock_held

_held = data_dir_lock_held


def test_a_daemon_holding_the_lock_gets_the_request(device_dir: Path) -> None:
    device = load_device(device_dir / "device.yaml")
    with _held(device.data_dir, "kruxos daemon (pid 4242)\n"), connect(device) as link:
        assert link.pid == 4242


def test_no_holder_means_the_command_holds_the_lock_itself(device_dir: Path) -> None:
    device = load_device(device_dir / "device.yaml")
    with connect(device) as link:
        assert link.pid is None
        with pytest.raises(LockHeldError, match=r"locked by kruxos update \(pid \d+\)"), \
                connect(device):
            pass


def test_another_command_is_refused_naming_it(device_dir: Path) -> None:
    device = load_device(device_dir / "device.yaml")
    with _held(device.data_dir, "kruxos update (pid 4711)\n"), \
            pytest.raises(LockHeldError) as refused, connect(device):
        pass
    assert str(refused.value) == (
        f"{device.data_dir} is locked by kruxos update (pid 4711): another command is "
        "changing this device; run this one again when it has finished")


def test_a_holder_that_never_names_itself_is_refused_after_the_wait(
        device_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "NAMELESS_HOLDER_WAIT", 0.3)
    device = load_device(device_dir / "device.yaml")
    with _held(device.data_dir, ""), pytest.raises(LockHeldError, match="another process"), \
            connect(device):
        pass
