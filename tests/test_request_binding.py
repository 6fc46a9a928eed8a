"""A person's confirm or rollback is bound to the boot it was asked in, and survives a crash.

Every reboot the reconciler makes drops the request of its boot, so a request
from an earlier boot is what a crash or a power cut left before it ran (the
crash matrix found a manual rollback lost so: decided, killed, never run). It
holds while the same slot runs the same version, and never for another slot
or version (a rollback asked during a staging does not roll back the trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.actions import Reboot
from reconciler.config import load_device
from reconciler.executor import Executor
from reconciler.observe import backend_for, observe
from reconciler.store import StateStore


def _observe_request(device_dir: Path, request: dict[str, Any], boot_id: str) -> Any:
    device = load_device(device_dir / "device.yaml")
    store = StateStore(device.data_dir)
    store.put("request", request)
    (device_dir / "run" / "boot_id").write_text(f"{boot_id}\n")
    return observe(device, store, backend_for(device)).request


@pytest.mark.parametrize(("boot_id", "slot", "version", "seen"), [
    ("boot-1", "A", "1.0.0", "rollback"),  # the boot it was asked in
    ("boot-2", "A", "1.0.0", "rollback"),  # a crash before it ran: same slot, same version
    ("boot-2", "A", "0.9.0", None),        # another version runs there now
    ("boot-2", "B", "1.0.0", None),        # asked in another slot
    ("boot-1", "B", "1.0.0", None),
])
def test_a_request_holds_in_its_boot_and_after_a_crash_on_the_same_slot_and_version(
        device_dir: Path, boot_id: str, slot: str, version: str, seen: str | None) -> None:
    request = {"kind": "rollback", "boot_id": "boot-1", "slot": slot, "version": version}
    assert _observe_request(device_dir, request, boot_id) == seen


def test_a_reboot_the_reconciler_makes_drops_the_request_of_its_boot(device_dir: Path) -> None:
    device = load_device(device_dir / "device.yaml")
    store = StateStore(device.data_dir)
    store.put("request", {"kind": "rollback", "boot_id": "boot-1", "slot": "A",
                          "version": "1.0.0"})
    reboots: list[str] = []
    executor = Executor(device, store, backend_for(device), stager=None,  # type: ignore[arg-type]
                        rebooter=reboots.append)
    outcome = executor.run(Reboot("B", "finish the trial"), None)
    assert outcome.ok and reboots == ["finish the trial"], outcome
    assert "request" not in store.load()


class _DiesInRollback:
    """A backend whose rollback write is cut off (as a kill in it would)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def rollback(self, reason: str) -> None:
        raise RuntimeError("killed in the boot env write")


def test_a_manual_rollback_keeps_its_request_until_the_boot_env_is_written(
        device_dir: Path) -> None:
    from reconciler.actions import Rollback

    device = load_device(device_dir / "device.yaml")
    store = StateStore(device.data_dir)
    request = {"kind": "rollback", "boot_id": "boot-1", "slot": "A", "version": "1.0.0"}
    store.put("request", request)
    reboots: list[str] = []
    action = Rollback("A", "B", "1.0.0", "a person asked")
    cut = Executor(device, store, _DiesInRollback(backend_for(device)),
                   stager=None, rebooter=reboots.append)  # type: ignore[arg-type]
    assert not cut.run(action, None).ok and reboots == []
    assert store.load()["request"] == request  # to be done again after the restart
