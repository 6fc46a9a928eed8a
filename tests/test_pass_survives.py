"""A reconcile pass never kills the daemon: bad input is a named state or a recorded event.

Real simulated-device files (``kruxos sim init``), the real ``Reconciler``, one
pass at a time; the clock is injected.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.actions import Stage, Wait
from reconciler.config import load_device
from reconciler.reconcile import BACKOFF_CAP, Reconciler, backoff
from tests.slots import claim, legacy_header, write_at
from tests.waiting import wait_for

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _reconciler(device_dir: Path) -> Reconciler:
    return Reconciler(load_device(device_dir / "device.yaml"), rebooter=lambda reason: None,
                      clock=lambda: NOW)


def _records(device_dir: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted((device_dir / "data" / "audit").glob("audit-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def _set_spec(device_dir: Path, old: str, new: str) -> None:
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace(old, new))


def test_booted_slot_with_a_non_semver_identity_is_a_named_state_not_a_crash(
        device_dir: Path) -> None:
    claim(device_dir / "slots" / "sda2", "2024.1")
    _set_spec(device_dir, "version: 1.0.0", "version: 1.0.1")
    reconciler = _reconciler(device_dir)
    result = reconciler.run_pass("daemon")
    assert isinstance(result.action, Stage | Wait), result
    assert "2024.1" in result.action.reason and "not a semantic version" in result.action.reason
    from reconciler.observe import observe

    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.booted_slot.problem is not None
    assert "not a semantic version" in seen.booted_slot.problem
    assert not [r for r in _records(device_dir) if r["action"] == "pass-failed"]


def test_foreign_bytes_at_the_end_of_the_other_slot_are_named_as_a_problem(
        device_dir: Path) -> None:
    write_at(device_dir / "slots" / "sda3", -4096, b"\x53\xef" + b"ext4 superblock" * 10)
    reconciler = _reconciler(device_dir)
    from reconciler.observe import observe

    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.other_slot.version is None
    assert seen.other_slot.problem is not None and "foreign" in seen.other_slot.problem
    assert reconciler.run_pass("daemon").outcome is not None


def test_a_filesystem_at_byte_0_of_a_slot_is_no_problem_and_claims_nothing(
        device_dir: Path) -> None:
    write_at(device_dir / "slots" / "sda3", 1024, b"\x53\xef" + b"ext4 superblock" * 10)
    reconciler = _reconciler(device_dir)
    from reconciler.observe import observe

    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert (seen.other_slot.version, seen.other_slot.problem) == (None, None)


def test_a_slot_of_the_old_layout_is_still_read_by_its_header(device_dir: Path) -> None:
    write_at(device_dir / "slots" / "sda3", 0, legacy_header("1.0.1", BEHAVIOUR="healthy"))
    reconciler = _reconciler(device_dir)
    reconciler.backend.set_mark("B", "good")
    from reconciler.observe import observe

    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert (seen.other_slot.version, seen.other_slot.mark) == ("1.0.1", "good")
    assert seen.other_slot.problem is None


def test_any_exception_from_the_channel_makes_a_wait_not_a_failed_pass(
        device_dir: Path) -> None:
    _set_spec(device_dir, "version: 1.0.0", "version: 1.0.1")
    reconciler = _reconciler(device_dir)

    def broken(*args: object) -> object:
        raise ValueError("Invalid IPv6 URL")  # what an unparsed 'http://[::1' once raised

    reconciler.channel.view = broken
    for _ in range(3):
        result = reconciler.run_pass("daemon")
        assert isinstance(result.action, Wait), result
        assert "channel: ValueError: Invalid IPv6 URL" in result.action.reason
    assert not [r for r in _records(device_dir) if r["action"] == "pass-failed"]
    assert reconciler.audit.verify().ok


def test_an_exception_in_a_pass_is_recorded_once_and_the_next_pass_backs_off(
        device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda2\n")  # no kruxos.slot=
    waits = []
    for _ in range(4):
        result = reconciler.run_pass("daemon")
        assert result.action is None and result.outcome is None
        assert result.wake_at is not None
        waits.append((result.wake_at - NOW).total_seconds())
    assert 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4 and 3.2 <= waits[2] <= 4.8, waits
    failed = [r for r in _records(device_dir) if r["action"] == "pass-failed"]
    assert len(failed) == 1, failed
    assert failed[0]["kind"] == "event" and "kruxos.slot" in str(failed[0]["reason"])
    assert "Traceback" not in str(failed[0]["reason"])
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    assert reconciler.run_pass("daemon").outcome is not None  # back to normal passes


def test_backoff_doubles_up_to_its_cap_and_spreads_with_jitter() -> None:
    import random

    rng = random.Random(7)
    pauses = [backoff(n, rng) for n in range(1, 12)]
    assert all(p <= BACKOFF_CAP * 1.2 for p in pauses)
    assert pauses[-1] >= BACKOFF_CAP * 0.8
    spread = {backoff(3, rng) for _ in range(20)}
    assert len(spread) > 10 and all(timedelta(seconds=3.2) <= p <= timedelta(seconds=4.8)
                                    for p in spread)


def test_a_spec_that_breaks_the_reader_is_rejected_and_the_pass_goes_on(
        device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    reconciler.run_pass("daemon")
    (device_dir / "spec.yaml").write_text("spec:\n  version: " + "[" * 5000 + "]" * 5000 + "\n")
    result = reconciler.run_pass("spec")
    assert result.outcome is not None  # decided with the last good spec
    rejected = [r for r in _records(device_dir) if r["action"] == "spec-rejected"]
    assert len(rejected) == 1 and len(str(rejected[0]["reason"])) < 800, rejected


def test_state_lost_with_its_copy_keeps_the_failed_version_blocked(device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    claim(device_dir / "slots" / "sda3", "1.0.1")
    reconciler.backend.set_mark("B", "staged")
    reconciler.backend.arm_trial("B", 3)
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda3 kruxos.slot=B\n")
    _set_spec(device_dir, "version: 1.0.0", "version: 1.0.1")
    reconciler.store.update(lambda doc: doc.update(trial={
        "boot_id": "boot-1", "slot": "B", "first_probe_at": "2026-11-30T11:00:00+00:00",
        "last_probe_at": "2026-11-30T11:59:00+00:00", "consecutive_ok": 0, "probes": 9,
        "timeout_reason": "Health check timeout — gateway failed to start"}))
    assert reconciler.run_pass("health").action.kind == "rollback"  # type: ignore[union-attr]
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (device_dir / "run" / "boot_id").write_text("boot-2\n")
    (device_dir / "data" / "state.json").write_bytes(b"\0" * 100)
    (device_dir / "data" / "state.copy.json").unlink()

    again = _reconciler(device_dir)  # the daemon starting after the loss
    steps = [again.run_pass("daemon").action for _ in range(3)]
    assert [a.kind for a in steps if a] == ["restore-state", "note-fallback", "blocked"], steps
    result = again.run_pass("daemon")
    assert result.action is not None and result.action.kind == "blocked", result
    assert "1.0.1 was rolled back" in result.action.reason
    actions = [r["action"] for r in _records(device_dir)]
    assert "re-anchor" not in actions, "the audit head never lived in the state file"
    restored = [r for r in _records(device_dir)
                if r["action"] == "restore-state" and r["kind"] == "decision"]
    assert len(restored) == 1 and "1.0.1 stays blocked" in str(restored[0]["reason"])
    assert again.audit.verify().ok


def test_state_lost_during_a_trial_keeps_the_rollback_deadline(device_dir: Path) -> None:
    clock = [NOW]
    first = Reconciler(load_device(device_dir / "device.yaml"), rebooter=lambda r: None,
                       clock=lambda: clock[0])
    claim(device_dir / "slots" / "sda3", "1.0.1")
    first.backend.set_mark("B", "staged")
    first.backend.arm_trial("B", 3)
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda3 kruxos.slot=B\n")
    _set_spec(device_dir, "version: 1.0.0", "version: 1.0.1")
    assert first.run_pass("daemon").action.kind == "probe"  # type: ignore[union-attr]
    (device_dir / "data" / "state.json").write_bytes(b"{" * 30)
    (device_dir / "data" / "state.copy.json").write_bytes(b"")

    clock[0] = NOW + timedelta(seconds=8)  # the sim spec's timeout, counted from the probe
    again = Reconciler(load_device(device_dir / "device.yaml"), rebooter=lambda r: None,
                       clock=lambda: clock[0])
    restored = again.run_pass("health")
    assert restored.action is not None and restored.action.kind == "restore-state", restored
    assert restored.wake_at == clock[0], "the trial is judged at once after the restore"
    result = again.run_pass("health")
    assert result.action is not None and result.action.kind == "rollback", result
    rebuilt = [r for r in _records(device_dir)
               if r["action"] == "restore-state" and r["kind"] == "decision"]
    assert rebuilt and "first health probe" in str(rebuilt[0]["reason"])


@contextlib.contextmanager
def _daemon(device_dir: Path) -> Iterator[Path]:
    """``kruxos daemon`` of the device as a process of its own; yields its log file and
    stops it with SIGTERM (it must exit 0)."""
    log = device_dir / "run" / "daemon-test.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli.main", "daemon"],
                                env=dict(os.environ, KRUXOS_CONFIG=str(device_dir /
                                                                       "device.yaml")),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
        assert proc.poll() is None, "the daemon exited instead of going on"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_damaged_trail_is_sealed_and_the_daemon_goes_on(device_dir: Path) -> None:
    """Damage to the trail never stops the reconciler: it is kept as found, sealed, and
    the chain goes on (a daemon refusing to act would hold a rollback)."""
    _reconciler(device_dir).run_pass("daemon")
    trail = next((device_dir / "data" / "audit").glob("audit-*.jsonl"))
    trail.write_bytes(b"")  # the trail ends before the head: damage, not a lost head
    with _daemon(device_dir) as log:
        wait_for(lambda: " nothing: " in log.read_text(), 30, "the daemon's first decision")
        assert "Traceback" not in log.read_text()
        assert "the audit trail was found damaged" in log.read_text()
    records = _records(device_dir)
    details = records[0]["details"]
    assert records[0]["action"] == "re-anchor" and isinstance(details, dict)
    assert "sealed" in details
    assert records[1]["action"] == "nothing"


def test_what_a_crash_left_mid_write_is_removed_when_the_daemon_starts(
        device_dir: Path) -> None:
    """A kill between a temporary file's write and its rename leaves ``.NAME.tmp-PID``;
    the next daemon (holding the lock) removes it; a command's request is left alone."""
    _reconciler(device_dir).run_pass("daemon")
    data = device_dir / "data"
    left = [data / ".state.json.tmp-999999", data / "audit" / ".head.json.tmp-999998"]
    for path in left:
        path.write_bytes(b"half a document")
    (data / "inbox").mkdir(exist_ok=True)
    request = data / "inbox" / ".req-1.json.tmp-999997"
    request.write_bytes(b"{")  # a command writing its request right now
    with _daemon(device_dir) as log:
        wait_for(lambda: "watching" in log.read_text(), 30, "the daemon to start")
        assert not any(path.exists() for path in left)
        assert "removed .state.json.tmp-999999, left by a write a crash cut off" in \
            log.read_text()
        assert request.exists()


def test_a_first_spec_that_is_rejected_does_not_claim_a_last_good_spec(device_dir: Path) -> None:
    (device_dir / "spec.yaml").write_text((device_dir / "spec.yaml").read_text().replace(
        "interval: 1s", "interval: 5 seconds"))
    reconciler = _reconciler(device_dir)
    reconciler.run_pass("daemon")
    rejected = [r for r in _records(device_dir) if r["action"] == "spec-rejected"]
    assert len(rejected) == 1, rejected
    reason = str(rejected[0]["reason"])
    assert "keeping the last good spec" not in reason, reason
    assert reason.endswith("(no good spec was read before it: nothing new starts until one is "
                           "written)"), reason


def test_a_slot_device_that_does_not_exist_is_named_and_nothing_is_staged(
        device_dir: Path) -> None:
    """Not read as an empty slot: a disk that came up under another name names no slot."""
    (device_dir / "slots" / "sda3").unlink()
    _set_spec(device_dir, "version: 1.0.0", "version: 1.0.1")
    reconciler = _reconciler(device_dir)
    from reconciler.cli.status import _other_slot_lines
    from reconciler.observe import observe

    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.other_slot.missing and seen.other_slot.version is None
    path = str(device_dir / "slots" / "sda3")
    assert seen.other_slot.problem == f"its device {path} does not exist"
    assert _other_slot_lines(seen, "1.0.1") == [
        f"Other slot: B (sda3) missing: its device {path} does not exist"]
    result = reconciler.run_pass("daemon")
    assert isinstance(result.action, Wait), result
    assert result.action.reason.startswith(
        f"cannot stage 1.0.1: slot B (sda3): its device {path} does not exist")
    assert result.action.until == NOW + timedelta(minutes=1)
    assert not (device_dir / "slots" / "sda3").exists()  # nothing created in its place
    assert not [r for r in _records(device_dir) if r["action"] in ("stage", "pass-failed")]
