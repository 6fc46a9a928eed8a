"""What a pass records and which requests it honours (real device files, one pass at a time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.actions import Reboot
from reconciler.config import load_device
from reconciler.daemon import Reconciler
from reconciler.inbox import submit
from reconciler.observe import observe
from reconciler.sim.device import init_device

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    init_device(tmp_path / "dev")
    (tmp_path / "dev" / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (tmp_path / "dev" / "run" / "boot_id").write_text("boot-1\n")
    return tmp_path / "dev"


def _reconciler(device_dir: Path) -> Reconciler:
    return Reconciler(load_device(device_dir / "device.yaml"), rebooter=lambda reason: None,
                      clock=lambda: NOW)


def _decisions(device_dir: Path, action: str) -> list[dict[str, object]]:
    out = []
    for path in sorted((device_dir / "data" / "audit").glob("audit-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in out if r["kind"] == "decision" and r["action"] == action]


def test_every_reboot_is_recorded_even_with_the_same_reason(device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    reconciler.backend.set_mark("B", "staged")
    reconciler.backend.mark_good("B")  # the bootloader boots B next: finish with a reboot
    for _ in range(3):
        assert isinstance(reconciler.run_pass("daemon").action, Reboot)
    reboots = _decisions(device_dir, "reboot")
    assert len(reboots) == 3, reboots
    assert len({r["reason"] for r in reboots}) == 1


def test_a_rollback_asked_in_one_boot_does_not_apply_in_the_next(device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    submit(device_dir / "data", "rollback")
    reconciler.run_pass("cli")  # taken while no good slot can be rolled back to
    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.request == "rollback"
    (device_dir / "run" / "boot_id").write_text("boot-2\n")  # the trial boot that follows
    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.request is None
