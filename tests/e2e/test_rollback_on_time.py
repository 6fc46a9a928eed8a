"""Nothing holds a rollback: a failing trial is rolled back on time whatever it is fed.

Each test arms a trial of a ``gateway-fails`` release on a simulated device
(``kruxos sim run``), waits for its first health probe, then feeds one bad
input. The rollback must still be decided no later than the first probe +
the timeout captured at arming + one interval, with 5 s of slack for a loaded
machine. The measured delay past the deadline is printed (``-s`` shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from datetime import datetime

import pytest

from tests.device import SimDevice
from tests.waiting import wait_for

TIMEOUT_S = 4
INTERVAL_S = 1
SLACK_S = 5


def _at(record: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(record["time"]))


def _invalid_spec(device: SimDevice) -> None:
    device.edit_spec(text="apiVersion: kruxos.io/v1\nkind: UpdatePolicy\nspec: [unclosed\n")


def _spec_changing_the_health_policy(device: SimDevice) -> None:
    text = device.spec.read_text().replace(f"timeout: {TIMEOUT_S}s", "timeout: 1h")
    text = text.replace("interval: 1s", "interval: 10m\n    url: http://127.0.0.1:9/none")
    device.edit_spec(text=text + "  rollback:\n    automatic: false\n")


def _spec_with_a_broken_channel_url(device: SimDevice) -> None:
    device.edit_spec(text=device.spec.read_text().replace("url: http://127.0.0.1:8080/",
                                                          'url: "http://[::1"'))


def _garbage_channel(device: SimDevice) -> None:
    (device.dir / "channel" / "metadata.json").write_bytes(b"\x00{not json" * 1000)


def _damaged_state_file(device: SimDevice) -> None:
    (device.dir / "data" / "state.json").write_bytes(b"\xff\xfe garbage " * 100)


def _state_file_and_its_copy_lost(device: SimDevice) -> None:
    """Neither copy survives: the trial's first probe comes back from the audit trail."""
    (device.dir / "data" / "state.json").write_bytes(b"{" * 30)
    (device.dir / "data" / "state.copy.json").write_bytes(b"")
    pid = device.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the daemon restarts and must rebuild the state


BAD_INPUTS: dict[str, Callable[[SimDevice], None]] = {
    "invalid spec": _invalid_spec,
    "spec changing the health policy": _spec_changing_the_health_policy,
    "spec with a broken channel URL": _spec_with_a_broken_channel_url,
    "garbage channel metadata": _garbage_channel,
    "damaged state file": _damaged_state_file,
    "state file and its copy lost, daemon killed": _state_file_and_its_copy_lost,
}


CASES = [(name, "grub") for name in BAD_INPUTS] + [
    ("state file and its copy lost, daemon killed", "uboot"),
    ("state file and its copy lost, daemon killed", "bls"),
]


def _failing_trial(device: SimDevice) -> dict[str, object]:
    """Start a trial of a ``gateway-fails`` release; return its first probe decision."""
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s",
                                                           f"timeout: {TIMEOUT_S}s"))
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--behaviour", "gateway-fails",
               "--size-mb", "1")
    device.start()
    device.edit_spec(version="1.0.2")
    found: dict[str, object] = device.wait_for(lambda: next(
        (r for r in device.audit_file_records() if r["kind"] == "decision"
         and r["action"] == "probe"), None), 40, "the first health probe of the trial")
    return found


@pytest.mark.parametrize(("bad_input", "backend"), CASES,
                         ids=[f"{name} ({backend})" for name, backend in CASES])
def test_failing_trial_is_rolled_back_on_time_whatever_it_is_fed(
        device: SimDevice, bad_input: str, backend: str) -> None:
    if backend != "grub":  # the same device on another bootloader
        shutil.rmtree(device.dir)
        device.cli("sim", "init", str(device.dir), "--bootloader", backend)
    first_probe = _failing_trial(device)

    BAD_INPUTS[bad_input](device)
    status = device.cli("update", "status", check=False)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status

    rollback = device.wait_for(lambda: next(
        (r for r in device.audit_file_records() if r["kind"] == "decision"
         and r["action"] == "rollback"), None), TIMEOUT_S + INTERVAL_S + SLACK_S + 30,
        "the rollback decision")
    deadline_s = TIMEOUT_S + INTERVAL_S
    delay = (_at(rollback) - _at(first_probe)).total_seconds()
    print(f"\nrollback under '{bad_input}' ({backend}): {delay:.0f} s after the first probe "
          f"({delay - TIMEOUT_S:+.0f} s past the {TIMEOUT_S} s timeout)")
    assert delay <= deadline_s + SLACK_S, (delay, device.diagnostics())
    assert rollback["reason"].startswith("Health check timeout"), rollback
    device.wait_for(lambda: any(r["kind"] == "outcome" and r["decision"] == rollback["seq"]
                                and str(r["outcome"]).startswith("ok")
                                for r in device.audit_file_records()), 30,
                    "the rollback to run")
    verify = device.cli("audit", "verify", "--json")
    assert json.loads(verify.stdout)["ok"] is True, verify.stdout


def _audit_trail_cut_short(device: SimDevice) -> None:
    """The newest records are cut off the trail and the daemon restarts: damage, sealed."""
    newest = sorted((device.dir / "data" / "audit").glob("audit-*.jsonl"))[-1]
    lines = newest.read_bytes().splitlines(keepends=True)
    newest.write_bytes(b"".join(lines[:-2]))
    pid = device.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def test_failing_trial_is_rolled_back_on_time_over_a_damaged_audit_trail(
        device: SimDevice) -> None:
    BAD_INPUTS["audit trail cut short, daemon killed"] = _audit_trail_cut_short
    try:
        test_failing_trial_is_rolled_back_on_time_whatever_it_is_fed(
            device, "audit trail cut short, daemon killed", "grub")
    finally:
        del BAD_INPUTS["audit trail cut short, daemon killed"]
    verify = json.loads(device.cli("audit", "verify", "--json").stdout)
    assert any("found damaged" in r["reason"] for r in verify["reanchors"]), verify


def test_failing_trial_is_rolled_back_when_the_data_disk_turns_read_only(
        device: SimDevice) -> None:
    """A data disk remounted read-only (ext4's errors=remount-ro) during a failing trial:
    nothing can be recorded, and the rollback still comes on time (journal only)."""
    import subprocess
    import time

    _failing_trial(device)
    probed_at = time.monotonic()
    boots = len(device.boots())
    data = str(device.dir / "data")
    subprocess.run(["mount", "--bind", data, data], check=True)
    try:
        # A file the daemon opens for writing through the new bind mount before this
        # remount makes it fail with "mount point is busy" (EBUSY): ext4's own
        # remount-ro does not wait for writers, this stand-in must try again.
        wait_for(lambda: subprocess.run(["mount", "-o", "remount,bind,ro", data],
                                        capture_output=True).returncode == 0,
                 10, "the data disk remounted read-only", every=0.1)
        log = device.dir / "run" / "daemon.log"
        device.wait_for(lambda: "rollback runs anyway" in log.read_text(errors="replace"),
                        TIMEOUT_S + INTERVAL_S + SLACK_S + 10, "the unrecorded rollback")
        delay = time.monotonic() - probed_at
        print(f"\nrollback on a read-only data disk: {delay:.1f} s after the first probe was "
              f"seen ({delay - TIMEOUT_S:+.1f} s past the {TIMEOUT_S} s timeout)")
        assert delay <= TIMEOUT_S + INTERVAL_S + SLACK_S, (delay, device.diagnostics())
        device.wait_for(lambda: len(device.boots()) > boots, 30, "the reboot")
        device.wait_for(lambda: device.status_json()["booted"] == "A", 30, "slot A booted")
        text = log.read_text(errors="replace")
        assert "Traceback" not in text
        for run in text.split("started on")[1:]:  # one daemon process each
            assert run.count("audit trail cannot be written, no action runs") <= 1, \
                "a trail that stays unwritable is said once, not every few seconds"
    finally:
        subprocess.run(["umount", "-l", data], check=True)
