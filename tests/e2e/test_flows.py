"""Whole update flows on a simulated device, driven only by editing its spec.

Real processes throughout: ``kruxos sim run`` boots the bootloader logic, the
simulated OS and ``kruxos daemon``; the tests read the device only through
``kruxos update status`` and ``kruxos audit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.device import SimDevice


def _versions_in(records: list[dict[str, Any]], action: str, version: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "decision" and r["action"] == action
            and version in r["reason"]]


def _converge_to_101(device: SimDevice) -> None:
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED")


def _shorten_health_timeout(device: SimDevice, timeout: str = "3s") -> None:
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s", f"timeout: {timeout}"))


def test_spec_edit_stages_reboots_probes_and_confirms_the_new_version(device: SimDevice) -> None:
    device.start()
    _converge_to_101(device)

    assert device.status_lines()[:4] == [
        "Boot slot: B (sda3)",
        "Version: 1.0.1",
        "Boot status: CONFIRMED",
        "Previous: 1.0.0 (sda2, available for rollback)",
    ]
    steps = [r["action"] for r in device.decisions()
             if r["action"] in ("stage", "reboot", "probe", "confirm")]
    first = {a: steps.index(a) for a in ("stage", "reboot", "probe", "confirm")}
    assert first["stage"] < first["reboot"] < first["probe"] < first["confirm"], steps
    outcomes = {r["decision"]: r["outcome"] for r in device.audit_records()
                if r["kind"] == "outcome"}
    for record in device.decisions():
        if record["action"] in ("stage", "reboot", "confirm"):
            assert outcomes[record["seq"]].startswith("ok"), (record, outcomes)
    verify = device.cli("audit", "verify")
    assert verify.stdout.startswith("audit trail OK"), verify.stdout
    assert len(device.boots()) == 2, device.boots()


def test_broken_release_rolls_back_with_the_reason_from_the_health_answer(
        device: SimDevice) -> None:
    _shorten_health_timeout(device)
    device.start()
    _converge_to_101(device)
    device.publish("1.0.2", "gateway-fails")
    device.edit_spec(version="1.0.2")

    device.wait_for(lambda: device.status_json()["rolled_back_from"] == "1.0.2", 40,
                    "the rollback from 1.0.2", every=0.3)
    device.wait_status("1.0.1", "CONFIRMED (rolled back from 1.0.2)")
    assert device.status_lines()[:4] == [
        "Boot slot: B (sda3)",
        "Version: 1.0.1",
        "Boot status: CONFIRMED (rolled back from 1.0.2)",
        "Rollback reason: Health check timeout — gateway failed to start",
    ]
    records = device.audit_records()
    rollbacks = [r for r in records if r["kind"] == "decision" and r["action"] == "rollback"]
    assert [r["reason"] for r in rollbacks] == ["Health check timeout — gateway failed to start"]
    assert device.cli("audit", "verify").returncode == 0


def test_rollback_reason_names_the_service_the_health_answer_names(device: SimDevice) -> None:
    _shorten_health_timeout(device)
    device.publish_image("1.0.2", BEHAVIOUR="gateway-fails",
                         FAILING_SERVICES="database:migration failed")
    device.start()
    device.edit_spec(version="1.0.2")

    doc = device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.2)", timeout=40)
    assert doc["rollback_reason"] == "Health check timeout — database migration failed"
    assert "Rollback reason: Health check timeout — database migration failed" in \
        device.status_lines()
    assert "gateway" not in doc["rollback_reason"]


def test_failed_version_is_not_retried_until_the_spec_asks_for_another(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    _shorten_health_timeout(device)
    device.publish("1.0.2", "gateway-fails")
    device.start()
    device.edit_spec(version="1.0.2")
    device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.2)", timeout=40)
    boots_after_rollback = len(device.boots())
    assert boots_after_rollback == 3, device.boots()  # A, trial B, back to A

    _resync_passes(device, 2)  # and no new attempt in them
    records = device.audit_records()
    assert len(_versions_in(records, "stage", "1.0.2")) == 1, records
    assert len(_versions_in(records, "reboot", "1.0.2")) == 1, records
    assert len(device.boots()) == boots_after_rollback, device.boots()
    assert device.status_json()["next"]["action"] == "blocked"
    assert _versions_in(records, "blocked", "1.0.2"), records

    device.publish("1.0.3")
    device.edit_spec(version="1.0.3")
    device.wait_status("1.0.3", "CONFIRMED", timeout=30)
    events = [r for r in device.audit_records() if r["action"] == "unblock"]
    assert events and "1.0.2" in events[0]["reason"], events
    assert device.cli("audit", "verify").returncode == 0


def test_hung_trial_boot_counts_tries_down_falls_back_and_is_not_retried(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.publish("1.0.2", "hangs")
    device.start("--watchdog", "1")
    device.edit_spec(version="1.0.2")

    doc = device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.2)", timeout=40)
    assert doc["booted"] == "A"
    assert "trial" in doc["rollback_reason"].lower(), doc["rollback_reason"]
    boots = device.boots()
    # boot 1: A; boots 2..4: trial B with 2, 1, 0 tries left, each hanging; boot 5: back to A
    assert len(boots) == 5, boots
    for line, left in zip(boots[1:4], (2, 1, 0), strict=True):
        assert f"chose slot B (sda3): trial B: {left} tries left" in line, boots
    assert "chose slot A (sda2)" in boots[4] and "tries exhausted" in boots[4], boots
    assert device.console_text().count("hangs at boot") == 3
    notes = [r for r in device.audit_records()
             if r["kind"] == "decision" and r["action"] == "note-fallback"]
    assert len(notes) == 1, notes

    lines = device.status_lines()
    assert lines[2] == "Boot status: CONFIRMED (rolled back from 1.0.2)", lines
    assert lines[3].startswith("Rollback reason: Trial boot failed"), lines

    _resync_passes(device, 2)  # and no new attempt in them
    assert len(device.boots()) == 5, device.boots()
    records = device.audit_records()
    assert len(_versions_in(records, "stage", "1.0.2")) == 1, records
    assert len(_versions_in(records, "reboot", "1.0.2")) == 1, records
    assert device.cli("audit", "verify").returncode == 0


def _resync_passes(device: SimDevice, count: int) -> None:
    """Wait until the daemon has made ``count`` more passes (the resync, 1 s here)."""
    passes = device.audit_head().get("repeats", 0)
    device.wait_for(lambda: device.audit_head().get("repeats", 0) - passes >= count, 60,
                    f"{count} resync passes")
