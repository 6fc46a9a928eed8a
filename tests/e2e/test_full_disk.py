"""A full data disk never stops a rollback: proven through ``kruxos sim run``.

The simulated device's data dir is a small tmpfs of its own (2 MiB: the
daemon's 256 KiB reserve, the state, a spec copy and a few hundred audit
records fit with room to spare). A ``gateway-fails`` release goes on trial
and the data disk is filled to the last byte while the trial runs. The
rollback must still be decided on time (the first probe + the timeout
captured at arming + one interval, 5 s of slack), written in order with its
outcome, and leave the failed version blocked; status says the disk is full.
Once space is freed the reserve comes back (an audit event says so) and the
device follows its spec again.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.device import SimDevice
from tests.tmpfs import fill, mounted_tmpfs

TIMEOUT_S = 4
INTERVAL_S = 1
SLACK_S = 5
DATA_DISK = "2m"


@pytest.fixture
def small_disk_device(make_device: Callable[..., SimDevice]) -> Iterator[SimDevice]:
    """A simulated device whose data dir is a 2 MiB tmpfs, with a 4 s health timeout.

    ``1.0.2`` is published as a release whose gateway never starts.
    """
    device = make_device()
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s",
                                                           f"timeout: {TIMEOUT_S}s"))
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--behaviour", "gateway-fails",
               "--size-mb", "1")
    with mounted_tmpfs(device.dir / "data", DATA_DISK):
        try:
            yield device
        finally:  # nothing may hold the mount when it goes
            try:
                device.stop()
            finally:
                device.kill_leftovers()


def _at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["time"]))


def _first(device: SimDevice, kind: str, action: str,
           after: int = 0) -> dict[str, Any] | None:
    return next((r for r in device.audit_file_records() if r["kind"] == kind
                 and r["action"] == action and r["seq"] > after), None)


def _outcome_of(device: SimDevice, decision: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in device.audit_file_records() if r["kind"] == "outcome"
                 and r["decision"] == decision["seq"]), None)


def _wake(device: SimDevice) -> None:
    """Ask the daemon for a pass now (what ``SIGHUP`` from a person or the CLI does)."""
    pid = device.daemon_pid()
    assert pid is not None, device.diagnostics()
    os.kill(pid, signal.SIGHUP)


def _says_full(device: SimDevice) -> bool:
    lines = [line for line in device.status_lines() if line.startswith("Data disk:")]
    return lines == ["Data disk: full (the space kept for rollback records is in use; free "
                     "space on the data dir)"] and device.status_json()["disk_full"] is True


def _says_not_full(device: SimDevice) -> bool:
    return not any(line.startswith("Data disk:") for line in device.status_lines()) \
        and device.status_json()["disk_full"] is False


def _start_trial(device: SimDevice) -> dict[str, Any]:
    """Start the device, ask for the failing release, return its trial's first probe."""
    device.start()
    device.edit_spec(version="1.0.2")
    probe = device.wait_for(lambda: _first(device, "decision", "probe"), 40,
                            "the first health probe of the trial")
    assert (device.dir / "data" / "reserve").stat().st_size == 256 * 1024
    return probe


def _first_probe_of_boot(device: SimDevice, boot_id: str) -> datetime | None:
    """When this boot's trial was first probed (each boot's try has its own timeout).

    Read from the state while the trial runs: the trail folds a probe decision
    that repeats the last one, and a new boot's first probe repeats the last boot's.
    """
    trial = device.state().get("trial") or {}
    if trial.get("boot_id") != boot_id or not trial.get("first_probe_at"):
        return None
    return datetime.fromisoformat(trial["first_probe_at"])


def _rolled_back_in_order(device: SimDevice, rollback: dict[str, Any]) -> None:
    """The rollback's decision, then its outcome (ok), then the rollback boot, 1.0.2 blocked."""
    assert rollback["reason"].startswith("Health check timeout"), rollback
    outcome = device.wait_for(lambda: _outcome_of(device, rollback), 30, "the rollback to run")
    assert str(outcome["outcome"]).startswith("ok"), outcome
    assert outcome["seq"] > rollback["seq"], (rollback, outcome)
    status = device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.2)", timeout=40)
    assert status["failed"]["version"] == "1.0.2", status
    assert status["next"]["action"] == "blocked", status["next"]
    assert "1.0.2" in status["next"]["reason"], status["next"]
    verify = device.cli("audit", "verify", "--json")
    assert json.loads(verify.stdout)["ok"] is True, verify.stdout


def _room_again(device: SimDevice, filler: Path) -> dict[str, Any]:
    """Free the space and ask for a pass: the reserve comes back, and an event says so."""
    before = max((r["seq"] for r in device.audit_file_records()), default=0)
    filler.unlink()
    _wake(device)
    event = device.wait_for(lambda: _first(device, "event", "disk-space", after=before), 30,
                            "the reserve to come back")
    assert "reserved again" in event["reason"], event
    assert (device.dir / "data" / "reserve").stat().st_size == 256 * 1024
    assert _says_not_full(device), device.status_lines()
    leftovers = [p.name for p in (device.dir / "data").iterdir() if ".tmp-" in p.name]
    assert leftovers == [], leftovers
    verify = device.cli("audit", "verify", "--json")
    assert json.loads(verify.stdout)["ok"] is True, verify.stdout
    return event


def test_a_data_disk_filled_during_a_trial_does_not_stop_its_rollback(
        small_disk_device: SimDevice) -> None:
    device = small_disk_device
    first_probe = _start_trial(device)

    filler = fill(device.dir / "data")

    rollback = device.wait_for(lambda: _first(device, "decision", "rollback"),
                               TIMEOUT_S + INTERVAL_S + SLACK_S + 30, "the rollback decision")
    delay = (_at(rollback) - _at(first_probe)).total_seconds()
    print(f"\nrollback on a full data disk: {delay:.1f} s after the first probe "
          f"({delay - TIMEOUT_S:+.1f} s past the {TIMEOUT_S} s timeout)")
    assert delay <= TIMEOUT_S + INTERVAL_S + SLACK_S, (delay, device.diagnostics())
    _rolled_back_in_order(device, rollback)
    assert _says_full(device), device.status_lines()
    assert _first(device, "event", "disk-space") is None, "the disk never had room again"

    _room_again(device, filler)
    device.edit_spec(version="1.0.1")  # the device follows its spec again
    device.wait_status("1.0.1", "CONFIRMED", timeout=60)
    assert device.cli("audit", "verify").returncode == 0


def test_a_daemon_started_on_a_full_data_disk_still_rolls_back_the_trial(
        small_disk_device: SimDevice) -> None:
    """The reserve set aside before the disk filled is there for the daemon that starts now.

    ``sim run`` stopped mid-trial and started again is a power cycle: the
    bootloader counts a try and the new boot's health check has its own timeout.
    """
    device = small_disk_device
    _start_trial(device)
    device.stop()
    filler = fill(device.dir / "data")
    assert (device.dir / "data" / "reserve").stat().st_size == 256 * 1024
    last = device.audit_file_records()[-1]["seq"]

    device.start()
    boot_id = (device.dir / "run" / "boot_id").read_text().strip()
    first_probe_at = device.wait_for(lambda: _first_probe_of_boot(device, boot_id), 30,
                                     "the first health probe of the new boot")
    rollback = device.wait_for(lambda: _first(device, "decision", "rollback", after=last),
                               TIMEOUT_S + INTERVAL_S + SLACK_S + 30, "the rollback decision")
    delay = (_at(rollback) - first_probe_at).total_seconds()
    print(f"\nrollback by a daemon started on a full data disk: {delay:.1f} s after the "
          f"boot's first probe ({delay - TIMEOUT_S:+.1f} s past the {TIMEOUT_S} s timeout)")
    assert delay <= TIMEOUT_S + INTERVAL_S + SLACK_S, (delay, device.diagnostics())
    _rolled_back_in_order(device, rollback)
    assert _says_full(device), device.status_lines()
    assert _first(device, "event", "disk-space") is None, "the disk never had room again"

    _room_again(device, filler)


def test_a_daemon_that_never_had_a_reserve_says_the_disk_is_full_and_acts_once_there_is_room(
        small_disk_device: SimDevice) -> None:
    """A fresh device whose data disk is full before the daemon's first start: nothing can be
    recorded, so nothing runs; status and the daemon's log say why."""
    device = small_disk_device
    filler = fill(device.dir / "data")
    device.start()
    device.wait_for(lambda: "the data disk is full" in (device.dir / "run" / "daemon.log")
                    .read_text(), 30, "the daemon to say the data disk is full")
    assert _says_full(device), device.status_lines()
    assert device.audit_file_records() == []
    assert (device.dir / "data" / "reserve").stat().st_size == 0

    event = _room_again(device, filler)
    decision = device.wait_for(lambda: _first(device, "decision", "nothing", after=event["seq"]),
                               30, "the daemon's first decision")
    outcome = device.wait_for(lambda: _outcome_of(device, decision), 30, "its outcome")
    assert str(outcome["outcome"]).startswith("ok"), outcome
