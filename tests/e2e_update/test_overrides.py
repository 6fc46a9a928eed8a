"""A pin made at the device and the GitOps spec: the override rule, end to end.

While a pin holds, its version is the desired one; it ends when the version the
spec asks for resolves to something new, or on ``kruxos update resume``. A spec edit
that leaves the spec's version alone, and every resync, leave the pin alone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from .conftest import (
    SimDevice,
    decisions_with_outcomes,
    events,
    json_of,
    run_cli,
    set_spec_block,
    steady_for,
    wait_staging_started,
)


def _at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["time"]))  # to the second


def _repeats(device: SimDevice) -> int:
    """Passes that repeated the last decision (the audit trail records them as a count)."""
    return int(device.audit_head().get("repeats", 0))


def test_a_pin_survives_spec_edits_and_resyncs_until_the_spec_names_a_new_version(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.publish("1.0.2")
    device.start()
    result = run_cli(device, "update", "apply", "1.0.2", "--yes", "--json")
    assert result.returncode == 0 and json_of(result)["version"] == "1.0.2", result
    device.wait_status("1.0.2", "CONFIRMED")
    assert device.status_json()["override"]["version"] == "1.0.2"

    device.spec.write_text(device.spec.read_text().replace("interval: 1s", "interval: 2s"))
    passes = _repeats(device)
    stages = len(decisions_with_outcomes(device, "stage"))
    steady_for(device, 3, lambda: device.status_json()["override"]["version"] == "1.0.2"
               and len(decisions_with_outcomes(device, "stage")) == stages)
    assert _repeats(device) - passes >= 2, "the resync did not run"
    assert device.status_json()["slots"]["B"]["version"] == "1.0.2"
    assert not events(device, "override-ended")

    device.publish("1.0.3")
    device.edit_spec(version="1.0.3")
    ended = device.wait_for(lambda: events(device, "override-ended"), 10, "the pin to end")
    assert ended[0]["reason"] == ("the pin of 1.0.2 ended: the spec now wants 1.0.3 "
                                  "(it wanted 1.0.0 when pinned)"), ended
    device.wait_status("1.0.3", "CONFIRMED", timeout=40)
    assert device.status_json()["override"] is None


def test_cancel_stops_a_slow_download_pins_the_running_version_and_resume_hands_back(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--size-mb", "8")
    device.start("--channel-rate", "2000")
    device.edit_spec(version="1.0.2")
    wait_staging_started(device, "1.0.2")

    result = run_cli(device, "update", "cancel", "--json")
    assert result.returncode == 0, result
    assert json_of(result) == {"ok": True, "pinned": "1.0.0"}
    stopped = device.wait_for(lambda: [o for _, o in decisions_with_outcomes(device, "stage")
                                       if o is not None], 10, "the download to stop")
    assert not stopped[-1]["outcome"].startswith("ok"), stopped
    assert stopped[-1]["details"]["code"] == "stopped", stopped
    doc = device.status_json()
    assert doc["staging"] is None and doc["slots"]["B"]["mark"] not in ("staged", "good"), doc
    assert doc["override"]["version"] == "1.0.0", doc
    stages = len(decisions_with_outcomes(device, "stage"))
    passes = _repeats(device)
    steady_for(device, 3, lambda: len(decisions_with_outcomes(device, "stage")) == stages)
    assert _repeats(device) - passes >= 2, "the resync did not run"
    assert len(device.boots()) == 1

    result = run_cli(device, "update", "resume", "--json")
    assert result.returncode == 0 and json_of(result) == {"ok": True, "dropped": "1.0.0"}
    assert "the spec rules again" in events(device, "resume")[0]["reason"]
    device.wait_status("1.0.2", "CONFIRMED", timeout=40)
    assert device.status_json()["override"] is None
    again = run_cli(device, "update", "resume")
    assert again.returncode == 0 and "No pin at this device" in again.stdout


def test_a_spec_edit_that_ends_a_pin_leads_to_its_stage_without_waiting_for_the_resync(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="5m")  # only the spec watcher can start the stage
    device.publish("1.0.2")
    device.start()
    assert run_cli(device, "update", "apply", "1.0.1", "--no-reboot").returncode == 0
    assert run_cli(device, "update", "cancel").returncode == 0  # pins 1.0.0 at the device
    assert device.status_json()["override"]["version"] == "1.0.0"
    stages = len(decisions_with_outcomes(device, "stage"))
    device.edit_spec(version="1.0.2")
    device.wait_for(lambda: events(device, "override-ended"), 10, "the pin to end")
    device.wait_for(lambda: len(decisions_with_outcomes(device, "stage")) > stages, 10,
                    "the stage the spec edit calls for (not at the 5 min resync)")
    # The promise is in seconds, so it is read off the device's own timestamps: the
    # stage is decided within 5 s of the pin's end (about 50 ms on an idle machine).
    ended_at = _at(events(device, "override-ended")[-1])
    staged_at = _at(decisions_with_outcomes(device, "stage")[stages][0])
    assert timedelta(0) <= staged_at - ended_at <= timedelta(seconds=5), (ended_at, staged_at)
    device.wait_status("1.0.2", "CONFIRMED", timeout=60)


def test_cancel_with_nothing_staged_holds_an_update_about_to_start_or_is_refused(
        device: SimDevice) -> None:
    device.start()
    refused = run_cli(device, "update", "cancel")
    assert refused.returncode == 1 and refused.stderr == (
        "error: nothing to cancel: slot A (sda2) runs 1.0.0, which is what is wanted, and "
        "nothing is staged or staging\n"), refused
    assert device.status_json()["override"] is None and not events(device, "cancel")

    # The spec wants 1.0.1, staged only in a window that is closed: nothing staged yet.
    set_spec_block(device, "  rollout:\n    stage: in-window\n    windows:\n"
                   f"      - days: [{_closed_day()}]\n        start: \"03:00\"\n"
                   "        duration: 1h\n        timezone: UTC")
    device.edit_spec(text=device.spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    device.wait_for(lambda: "stages in a maintenance window" in device.status_json()[
        "next"]["reason"], 30, "the stage to wait for its window")
    held = run_cli(device, "update", "cancel")
    assert held.returncode == 0 and held.stdout == (
        "Nothing was staged yet; 1.0.0 stays until the spec changes or 'kruxos update "
        "resume'.\n"), held
    cancel = events(device, "cancel")
    assert len(cancel) == 1 and cancel[0]["reason"].startswith(
        "nothing was staged yet (1.0.1 was next); 1.0.0 stays pinned"), cancel
    assert device.status_json()["override"]["version"] == "1.0.0"


def _closed_day() -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=3)).strftime("%a").lower()


def test_cancel_then_resume_after_a_manual_rollback_does_not_boot_back_into_it(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED")
    rollback = run_cli(device, "update", "rollback", "--json")  # its schema is checked too
    assert rollback.returncode == 0, rollback
    assert json_of(rollback) == {"ok": True, "rolling_back_to": "1.0.0", "slot": "A (sda2)"}
    device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.1)")
    for command in ("cancel", "resume"):
        result = run_cli(device, "update", command)
        assert result.returncode in (0, 1), result
    boots = len(device.boots())
    steady_for(device, 4, lambda: len(device.boots()) == boots)
    doc = device.status_json()
    assert doc["booted"] == "A" and doc["next"]["action"] == "blocked", doc
    assert not [r for r in device.audit_file_records() if r["action"] == "unblock"]
