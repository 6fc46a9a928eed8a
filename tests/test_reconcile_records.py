"""What a pass records and which requests it honours (real device files, one pass at a time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.actions import Outcome, Reboot, Wait
from reconciler.config import load_device
from reconciler.errors import (
    BootEnvError,
    ChannelUnavailable,
    ReleaseError,
    Stopped,
    TemporaryError,
)
from reconciler.inbox import submit
from reconciler.observe import observe
from reconciler.reconcile import Reconciler

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


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


def test_a_rollback_asked_on_one_release_does_not_apply_to_the_next(device_dir: Path) -> None:
    """A request is about the slot and release running when it was asked: it survives a
    power cut on them (tests/test_request_binding.py), and not a boot into another."""
    reconciler = _reconciler(device_dir)
    submit(device_dir / "data", "rollback")
    reconciler.run_pass("cli")  # taken while no good slot can be rolled back to
    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.request == "rollback"
    (device_dir / "run" / "boot_id").write_text("boot-2\n")  # a power cut, the same slot
    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.request == "rollback"
    from tests.slots import claim

    claim(device_dir / "slots" / "sda3", "1.0.1")  # then a boot into another release
    reconciler.backend.set_mark("B", "good")
    (device_dir / "run" / "cmdline").write_text("root=/dev/sda3 kruxos.slot=B\n")
    (device_dir / "run" / "boot_id").write_text("boot-3\n")
    seen = observe(reconciler.device, reconciler.store, reconciler.backend)
    assert seen.request is None


def _staged_101(device_dir: Path, reconciler: Reconciler) -> None:
    from tests.slots import claim

    claim(device_dir / "slots" / "sda3", "1.0.1")
    reconciler.backend.set_mark("B", "staged")
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))


def test_loop_breaker_stops_forward_reboots_after_three_that_never_confirm(
        device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    _staged_101(device_dir, reconciler)
    kinds = [reconciler.run_pass("daemon").action.kind for _ in range(5)]  # type: ignore[union-attr]
    # every reboot "happens" but the bootloader never boots the trial slot
    assert kinds == ["reboot", "reboot", "reboot", "blocked", "blocked"], kinds
    blocked = _decisions(device_dir, "blocked")
    assert len(blocked) == 1 and str(blocked[0]["reason"]).startswith("loop breaker: 3 reboots")
    from reconciler.cli.status import status_lines
    from reconciler.inspect import inspect_device

    view = inspect_device(reconciler.device, NOW)
    assert any(line.startswith("Next: loop breaker") for line in
               status_lines(view.observed, view.policy, view.action, NOW))


def test_loop_breaker_is_cleared_by_a_new_spec_revision(device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    _staged_101(device_dir, reconciler)
    for _ in range(4):
        reconciler.run_pass("daemon")
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text() + "# a new revision\n")
    assert reconciler.run_pass("spec").action.kind == "reboot"  # type: ignore[union-attr]


def test_loop_breaker_is_cleared_by_a_persons_request(device_dir: Path) -> None:
    reconciler = _reconciler(device_dir)
    _staged_101(device_dir, reconciler)
    for _ in range(4):
        reconciler.run_pass("daemon")
    submit(device_dir / "data", "resume")
    assert reconciler.run_pass("cli").action.kind == "resume"  # type: ignore[union-attr]
    assert reconciler.run_pass("cli").action.kind == "reboot"  # type: ignore[union-attr]


def _outcomes(device_dir: Path, action: str) -> list[dict[str, object]]:
    out = []
    for path in sorted((device_dir / "data" / "audit").glob("audit-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in out if r["kind"] == "outcome" and r["action"] == action]


def test_a_persons_request_is_named_by_its_decision_and_outcomes_carry_codes(
        device_dir: Path) -> None:
    """A command follows its own request by id, and reads how an action ended by its code,
    never by the words of a reason or an outcome."""
    reconciler = _reconciler(device_dir)
    asked = submit(device_dir / "data", "rollback")
    reconciler.run_pass("cli")  # refused: no good slot to roll back to
    taken = _decisions(device_dir, "rollback-request")
    assert [r["details"] for r in taken] == [{"request": asked.name}], taken
    pin = submit(device_dir / "data", "pin", version="1.0.0", reboot="next-boot")
    reconciler.run_pass("cli")
    assert _decisions(device_dir, "pin")[-1]["details"] == {"request": pin.name,
                                                            "version": "1.0.0"}
    outcome = _outcomes(device_dir, "rollback-request")[-1]
    assert outcome["details"] == {"code": str(outcome["outcome"]).split(":")[0]}, outcome


@pytest.mark.parametrize(("error", "code", "ok"), [
    (None, "ok", True),
    (Stopped("staging of 1.0.1 stopped at block 3 of 9; it resumes there"), "stopped", False),
    (ChannelUnavailable("channel: connection refused"), "unavailable", False),
    (TemporaryError("the server said 503"), "unavailable", False),
    (ReleaseError("block 3: sha256 mismatch"), "refused", False),
    (BootEnvError("grubenv unreadable"), "failed", False),
    (OSError(28, "No space left on device"), "failed", False),
    (RuntimeError("a bug"), "failed", False),
], ids=["done", "stopped", "channel-down", "temporary", "refused", "boot-env", "disk-full",
        "bug"])
def test_how_an_action_ended_is_one_code(device_dir: Path, error: Exception | None, code: str,
                                         ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = _reconciler(device_dir)
    executor = reconciler.executor

    def dispatch(action: object, policy: object) -> str:
        if error is not None:
            raise error
        return "done"

    monkeypatch.setattr(executor, "_dispatch", dispatch)
    outcome = executor.run(Wait("a wait"), None)
    assert (outcome.code, outcome.ok) == (code, ok), outcome


def test_an_outcome_code_must_agree_with_ok() -> None:
    with pytest.raises(ValueError, match="outcome code"):
        Outcome(False, "it broke", code="ok")
    with pytest.raises(ValueError, match="outcome code"):
        Outcome(True, "done", code="refused")
    with pytest.raises(ValueError, match="outcome code"):
        Outcome(False, "it broke", code="oops")
