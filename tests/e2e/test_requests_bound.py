"""Requests are bound to the state they were made in (a real device, ``kruxos sim run``)."""

from __future__ import annotations

from tests.device import SimDevice


def test_rollback_asked_during_a_staging_does_not_roll_back_the_trial_that_follows(
        device: SimDevice) -> None:
    from reconciler.inbox import submit

    device.start("--channel-rate", "600")
    device.edit_spec(version="1.0.1")
    device.wait_for(lambda: (device.state().get("staging") or {}).get("done", 0) > 0, 30,
                    "the staging to start writing")
    taken = submit(device.dir / "data", "rollback")  # asked while nothing is on trial
    device.wait_for(lambda: not taken.exists(), 15, "the rollback request to be taken")

    device.wait_status("1.0.1", "CONFIRMED", timeout=90)
    assert device.status_json()["booted"] == "B"
    decisions = [r["action"] for r in device.audit_file_records() if r["kind"] == "decision"]
    assert "rollback-request" in decisions and "rollback" not in decisions, decisions
    assert "confirm" in decisions
