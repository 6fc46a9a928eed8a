"""A full data disk never stops a rollback (a real, small tmpfs as the data dir).

The daemon keeps ``RESERVE_BYTES`` on the data dir; the first write that finds
the disk full gives them back, so the rollback's decision, outcome and state
are still written in order, and the audit head never drifts from the trail.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.config import load_device
from reconciler.reconcile import Reconciler
from reconciler.release.image import ImageHeader, encode_header
from tests.tmpfs import fill, mounted_tmpfs

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def small_data_dir_device(device_dir: Path) -> Iterator[Path]:
    """A simulated device whose data dir is a 2 MiB tmpfs of its own."""
    with mounted_tmpfs(device_dir / "data", "2m"):
        yield device_dir


def _on_trial_of(root: Path, rec: Reconciler, version: str, since: datetime) -> None:
    """Slot B holds ``version``, booted on trial, probed ``since`` without a healthy answer."""
    with open(root / "slots" / "sda3", "r+b") as f:
        f.write(encode_header(ImageHeader(version=version)))
    rec.backend.set_mark("B", "staged")
    rec.backend.arm_trial("B", 3)
    (root / "run" / "cmdline").write_text("root=/dev/sda3 kruxos.slot=B\n")
    rec.store.update(lambda doc: doc.update(trial={
        "boot_id": "boot-1", "slot": "B", "first_probe_at": since.isoformat(),
        "last_probe_at": since.isoformat(), "probes": 1,
        "timeout_reason": "Health check timeout — gateway failed to start"}))


def test_rollback_is_recorded_and_runs_on_a_full_data_disk(small_data_dir_device: Path) -> None:
    root = small_data_dir_device
    reboots: list[str] = []
    rec = Reconciler(load_device(root / "device.yaml"), rebooter=reboots.append,
                     clock=lambda: NOW)
    rec.run_pass("daemon")  # the reserve is set aside
    assert (root / "data" / "reserve").stat().st_size > 0
    _on_trial_of(root, rec, "1.0.1", since=NOW - timedelta(hours=1))
    filler = fill(root / "data")

    result = rec.run_pass("health")
    assert result.action is not None and result.action.kind == "rollback", result
    assert result.outcome is not None and result.outcome.ok, result.outcome
    assert reboots == ["Health check timeout — gateway failed to start"]
    verified = rec.audit.verify()
    assert verified.ok and verified.head_seq == verified.records, verified
    assert rec.store.section("failed")["version"] == "1.0.1"

    from reconciler.cli.status import status_lines
    from reconciler.inspect import inspect_device

    view = inspect_device(rec.device, NOW)
    assert any(line.startswith("Data disk: full") for line in
               status_lines(view.observed, view.policy, view.action, NOW))

    filler.unlink()
    rec.run_pass("daemon")  # space again: the reserve is replenished, and that is recorded
    assert not rec.store.reserve.in_use
    assert rec.audit.last() is not None
    assert any(r.action == "disk-space" for r in rec.audit.records())


def test_a_full_disk_while_keeping_the_last_good_spec_is_said_and_the_pass_goes_on(
        small_data_dir_device: Path) -> None:
    root = small_data_dir_device
    (root / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    rec = Reconciler(load_device(root / "device.yaml"), rebooter=lambda r: None,
                     clock=lambda: NOW)
    rec.run_pass("daemon")
    fill(root / "data")
    spec = root / "spec.yaml"
    spec.write_text(spec.read_text() + "# a new revision to keep\n")

    result = rec.run_pass("spec")
    assert result.action is not None and result.outcome is not None, result
    said = [r for r in rec.audit.records() if r.action == "pass-failed"]
    assert len(said) == 1 and "No space left on device" in said[0].reason, said
    assert "last good spec" in said[0].reason
