"""A full data disk never stops a rollback (a real, small tmpfs as the data dir).

The daemon keeps ``RESERVE_BYTES`` on the data dir; the first write that finds
the disk full gives them back, so the rollback's decision, outcome and state
are still written in order, and the audit head never drifts from the trail.
A failed write keeps no space, the reserve is taken back only when the disk
has room beyond it, and a daemon that finds the disk full before it ever had a
reserve starts, says so, and acts once there is room. The same promises through
the real processes: ``tests/e2e/test_full_disk.py``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.config import load_device
from reconciler.durable import atomic_write
from reconciler.errors import LockHeldError
from reconciler.reconcile import Reconciler
from reconciler.store import RESERVE_BYTES, Reserve, data_dir_lock
from tests.slots import claim
from tests.tmpfs import fill, free_bytes, mounted_tmpfs

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def small_data_dir_device(device_dir: Path) -> Iterator[Path]:
    """A simulated device whose data dir is a 2 MiB tmpfs of its own."""
    with mounted_tmpfs(device_dir / "data", "2m"):
        yield device_dir


def _tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def _on_trial_of(root: Path, rec: Reconciler, version: str, since: datetime) -> None:
    """Slot B holds ``version``, booted on trial, probed ``since`` without a healthy answer."""
    claim(root / "slots" / "sda3", version)
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


def _status(rec: Reconciler, now: datetime) -> list[str]:
    from reconciler.cli.status import status_lines
    from reconciler.inspect import inspect_device

    view = inspect_device(rec.device, now)
    return status_lines(view.observed, view.policy, view.action, now)


def test_a_rollback_due_passes_after_the_disk_filled_is_still_written_and_run(
        small_data_dir_device: Path) -> None:
    """The reserve given back by one pass is not taken again by the next pass's replenish."""
    root = small_data_dir_device
    now = [NOW]
    reboots: list[str] = []
    rec = Reconciler(load_device(root / "device.yaml"), rebooter=reboots.append,
                     clock=lambda: now[0])
    rec.run_pass("daemon")
    _on_trial_of(root, rec, "1.0.1", since=NOW - timedelta(seconds=2))  # an 8 s timeout
    fill(root / "data")

    probe = rec.run_pass("health")  # its records find the disk full: the reserve is given back
    assert probe.action is not None and probe.action.kind == "probe", probe
    assert probe.outcome is not None and rec.store.reserve.in_use
    (root / "data" / "other").write_bytes(bytes(4096))  # another writer takes a little of it
    now[0] = NOW + timedelta(seconds=10)
    result = rec.run_pass("health")

    assert result.action is not None and result.action.kind == "rollback", result
    assert result.outcome is not None and result.outcome.ok, result.outcome
    assert len(reboots) == 1 and reboots[0].startswith("Health check timeout"), reboots
    assert [r.action for r in rec.audit.records()][-2:] == ["rollback", "rollback"]
    assert not any(r.action == "disk-space" for r in rec.audit.records()), \
        "the disk never had room again"
    assert _tmp_files(root / "data") == []
    assert rec.store.section("failed")["version"] == "1.0.1"


def test_a_write_that_finds_the_disk_full_leaves_no_temporary_file_and_keeps_no_space(
        tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted_tmpfs(disk, "1m"):
        (disk / "filler").write_bytes(bytes(768 * 1024))
        free = free_bytes(disk)
        with pytest.raises(OSError) as raised:
            atomic_write(disk / "big", bytes(512 * 1024))
        assert raised.value.errno == errno.ENOSPC
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
        assert free_bytes(disk) == free


def test_the_reserve_is_taken_back_only_when_the_disk_has_room_beyond_it(
        tmp_path: Path) -> None:
    """Taking back the very space it gave would leave the disk full, and say it was not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted_tmpfs(disk, "2m"):
        reserve = Reserve(disk)
        assert reserve.replenish() and not reserve.in_use
        filler = fill(disk)
        assert reserve.release() and reserve.in_use  # a write found the disk full
        free = free_bytes(disk)
        assert free >= RESERVE_BYTES

        assert not reserve.replenish()
        assert reserve.in_use and _tmp_files(disk) == [] and free_bytes(disk) == free
        filler.unlink()
        assert reserve.replenish() and not reserve.in_use


def test_the_data_dir_lock_is_taken_on_a_full_disk_where_it_never_was_before(
        tmp_path: Path) -> None:
    """A daemon's first start on a full data disk: the lock holds, only without its name."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted_tmpfs(disk, "1m"):
        fill(disk)
        with data_dir_lock(disk, "kruxos daemon"):
            with pytest.raises(LockHeldError, match="is locked by another process"):
                with data_dir_lock(disk, "kruxos update"):
                    pass


def test_a_daemon_that_finds_the_disk_full_before_any_reserve_says_so_and_acts_once_there_is_room(
        small_data_dir_device: Path) -> None:
    """No reserve could ever be set aside: nothing can be recorded, so no action runs."""
    root = small_data_dir_device
    filler = fill(root / "data")
    rec = Reconciler(load_device(root / "device.yaml"), rebooter=lambda r: None,
                     clock=lambda: NOW)

    result = rec.run_pass("daemon")
    assert result.outcome is None and result.wake_at is not None, result
    assert list(rec.audit.records()) == []
    assert rec.store.reserve.in_use
    assert "Data disk: full (the space kept for rollback records is in use; free space on " \
        "the data dir)" in _status(rec, NOW)
    assert _tmp_files(root / "data") == []

    filler.unlink()
    result = rec.run_pass("daemon")
    assert result.outcome is not None and result.outcome.ok, result
    first = next(rec.audit.records())
    assert (first.kind, first.action) == ("event", "disk-space"), first
    assert not rec.store.reserve.in_use
    assert not any(line.startswith("Data disk:") for line in _status(rec, NOW))
