"""``kruxos update check|apply|rollback|confirm`` as a person at a simulated device uses them.

Real processes throughout: ``kruxos sim run`` boots the simulated bootloader, OS and
``kruxos daemon``; every command runs as its own subprocess and the tests read the
device back only through ``kruxos update status`` and the audit trail.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable

import pytest

from .conftest import (
    SEED_CHANGES,
    SimDevice,
    closed_window_text,
    decisions_with_outcomes,
    events,
    flip_byte,
    interrupt,
    interrupt_at_prompt,
    json_of,
    run_at_terminal,
    run_cli,
    set_spec_block,
    start_cli,
    steady_for,
    wait_staging_started,
)

MIB = 1 << 20

SEED_SUCCESS = [
    "Boot slot: B (sda3)",
    "Version: 1.0.1",
    "Boot status: CONFIRMED",
    "Previous: 1.0.0 (sda2, available for rollback)",
]
STAGED_LINES = [
    "Verifying signature... ✓ (Ed25519)",
    "Downloading kruxos-1.0.1.img... (3 MB)",
    "████████████████████ 100%",
    "Writing to inactive partition (sda3)...",
    "████████████████████ 100%",
    "Update staged. The new version will activate on reboot.",
]


def _tamper_changes(device: SimDevice) -> None:
    """Edit one byte of a release note inside the signed metadata (still valid JSON)."""
    path = device.dir / "channel" / "metadata.json"
    text = path.read_text()
    assert "Gmail" in text
    path.write_text(text.replace("Gmail", "Gmajl", 1))


# ---- check ---------------------------------------------------------------------------------

def test_check_prints_the_seed_lines_exit_1_then_up_to_date_exit_0(device: SimDevice) -> None:
    device.start()
    result = run_cli(device, "update", "check")
    assert result.returncode == 1, result
    assert result.stdout.splitlines() == [
        "Current version: 1.0.0", "Latest version: 1.0.1", "Changes in 1.0.1:",
        *SEED_CHANGES, "Run 'kruxos update apply' to install."]

    doc = run_cli(device, "update", "check", "--json")
    assert doc.returncode == 1
    assert json_of(doc) == {"ok": True, "current": "1.0.0", "latest": "1.0.1",
                            "update_available": True,
                            "changes": [c[2:] for c in SEED_CHANGES], "skipped": [], "held": [],
                            "channel": "stable", "serial": json_of(doc)["serial"],
                            "failed_here": None}

    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED")
    result = run_cli(device, "update", "check")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[:2] == ["Current version: 1.0.1", "Latest version: 1.0.1"]
    doc = run_cli(device, "update", "check", "--json")
    assert doc.returncode == 0 and json_of(doc)["update_available"] is False


def test_check_with_tampered_metadata_exits_2_and_shows_no_version(device: SimDevice) -> None:
    device.start()
    _tamper_changes(device)
    result = run_cli(device, "update", "check")
    assert result.returncode == 2, result
    assert "Latest version" not in result.stdout and "1.0.1" not in result.stdout, result
    assert "signature" in result.stderr.lower(), result.stderr
    doc = run_cli(device, "update", "check", "--json")
    assert doc.returncode == 2 and json_of(doc)["ok"] is False


# ---- apply ---------------------------------------------------------------------------------

def test_apply_answered_y_reboots_outside_a_window_and_confirms(device: SimDevice) -> None:
    device.edit_spec(text=closed_window_text(device))
    device.start()
    result = run_at_terminal(device, "update", "apply", typed="y\n")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [*STAGED_LINES, "Reboot now? [y/N]: y", "Rebooting..."]

    device.wait_status("1.0.1", "CONFIRMED")
    assert device.status_lines()[:4] == SEED_SUCCESS
    answers = events(device, "reboot-answer")
    assert len(answers) == 1 and "reboot now, even outside a maintenance window" in \
        answers[0]["reason"], answers
    assert len(device.boots()) == 2, device.boots()


def test_apply_yes_json_reboots_outside_a_window(device: SimDevice) -> None:
    device.edit_spec(text=closed_window_text(device))
    device.start()
    result = run_cli(device, "update", "apply", "--yes", "--json")
    assert result.returncode == 0, result
    assert json_of(result) == {"ok": True, "version": "1.0.1", "staged": True, "slot": "B (sda3)",
                               "rebooting": True}
    device.wait_status("1.0.1", "CONFIRMED")
    reboots = decisions_with_outcomes(device, "reboot")
    outcome = reboots[0][1] if len(reboots) == 1 else None
    assert outcome is not None and outcome["outcome"].startswith("ok"), reboots


@pytest.mark.parametrize("how", ["answer-N", "--no-reboot"])
def test_apply_without_reboot_stages_and_arms_but_does_not_reboot(device: SimDevice,
                                                                  how: str) -> None:
    device.start()
    if how == "answer-N":
        result = run_at_terminal(device, "update", "apply", typed="N\n")
        tail = ["Reboot now? [y/N]: N"]
    else:
        result = run_cli(device, "update", "apply", "--no-reboot")
        tail = []
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [*STAGED_LINES, *tail,
                                          "1.0.1 will activate on the next reboot."]
    doc = device.status_json()
    assert doc["slots"]["B"]["version"] == "1.0.1" and doc["trial"] == "B", doc
    assert doc["booted"] == "A" and doc["boot_status"] == "CONFIRMED"
    steady_for(device, 3, lambda: len(device.boots()) == 1)
    assert device.status_json()["booted"] == "A"


def test_apply_without_a_terminal_refuses_before_staging_naming_the_flags(
        device: SimDevice) -> None:
    device.start()
    result = run_cli(device, "update", "apply", stdin="y\n")  # a pipe: a script, cron, ssh
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr == ("error: no terminal to ask 'Reboot now?' on (stdin is not a "
                             "terminal): pass --yes to reboot once staged, or --no-reboot to "
                             "stage only\n"), result
    both = run_cli(device, "update", "apply", "--yes", "--no-reboot")
    assert both.returncode == 2 and "--yes (reboot once staged) and --no-reboot (stage only) " \
        "contradict each other" in both.stderr, both
    assert not events(device, "pin") and device.status_json()["slots"]["B"]["mark"] == "empty"


def _not_now(device: SimDevice, result: subprocess.CompletedProcess[str]) -> None:
    """What an interrupted prompt leaves: exit 130, the trial armed for the next boot, the
    answer recorded, no question left open, no reboot."""
    assert result.returncode == 130, result
    assert result.stdout.splitlines()[-2:] == [
        "Reboot now? [y/N]: ",
        "Not rebooting: 1.0.1 will activate on the next reboot ('kruxos update cancel' "
        "forgets it)."], result
    answers = events(device, "reboot-answer")
    assert len(answers) == 1 and "next" in answers[0]["reason"], answers
    doc = device.wait_for(lambda: (d := device.status_json())["trial"] == "B" and d, 30,
                          "the trial to be armed for the next boot")
    assert doc["request"] is None and doc["booted"] == "A", doc
    steady_for(device, 3, lambda: len(device.boots()) == 1)


def test_end_of_input_at_the_prompt_means_not_now_and_leaves_no_question_open(
        device: SimDevice) -> None:
    device.start()
    _not_now(device, run_at_terminal(device, "update", "apply", typed="\x04"))  # Ctrl-D


def test_ctrl_c_at_the_prompt_means_not_now_and_leaves_no_question_open(
        device: SimDevice) -> None:
    device.start()
    _not_now(device, interrupt_at_prompt(device, "update", "apply",
                                         prompt="Reboot now? [y/N]: "))


def test_apply_of_a_tampered_image_is_refused_and_never_staged(device: SimDevice) -> None:
    image = device.dir / "channel" / "kruxos-1.0.1.img"
    flip_byte(image, image.stat().st_size // 2)
    device.start()
    result = run_cli(device, "update", "apply", "--yes")
    assert result.returncode == 1, result
    assert "block" in result.stderr and "hash" in result.stderr, result.stderr
    assert "Update staged" not in result.stdout and "Rebooting" not in result.stdout
    assert "✓" not in result.stdout + result.stderr, result  # a refusal prints no check mark
    assert result.stdout.splitlines()[0] == "Verifying signature... ✗ refused", result.stdout
    doc = device.status_json()
    assert doc["slots"]["B"]["mark"] != "staged" and doc["booted"] == "A", doc
    stages = decisions_with_outcomes(device, "stage")
    assert stages and all(o and o["outcome"].startswith("failed") for _, o in stages), stages
    assert all(o and o["details"]["code"] == "refused" for _, o in stages), stages
    assert len(device.boots()) == 1


def test_apply_with_tampered_metadata_prints_no_check_mark(device: SimDevice) -> None:
    device.start()
    _tamper_changes(device)
    result = run_cli(device, "update", "apply", "--yes")
    assert result.returncode != 0, result
    assert "✓" not in result.stdout + result.stderr, result
    assert "signature" in result.stderr.lower()
    assert device.status_json()["slots"]["B"]["mark"] == "empty"
    assert not decisions_with_outcomes(device, "stage")


def test_ctrl_c_stops_the_download_and_a_second_apply_resumes_it(device: SimDevice) -> None:
    # 24 MB at 2 MB/s: the Ctrl-C lands after 2 blocks with ~10 s to spare on a busy machine.
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--size-mb", "24")
    device.start("--channel-rate", "2000")
    proc = start_cli(device, "update", "apply", "1.0.2", "--no-reboot")
    wait_staging_started(device, "1.0.2", blocks=2)
    code, out, err = interrupt(proc)
    assert code == 130, (out, err)
    assert "Stopped at" in out and "run 'kruxos update apply' again to resume" in out, out
    doc = device.status_json()
    assert doc["staging"] is not None and doc["staging"]["version"] == "1.0.2", doc
    assert doc["slots"]["B"]["mark"] == "bad", doc
    assert events(device, "stop")

    result = run_cli(device, "update", "apply", "1.0.2", "--no-reboot")
    assert result.returncode == 0, result
    stages = decisions_with_outcomes(device, "stage")
    last, outcome = stages[-1]
    assert last["reason"].startswith("Resume staging 1.0.2"), stages
    assert outcome is not None and outcome["outcome"].startswith("ok"), outcome
    resumed = re.search(r"resumed at block (\d+) of (\d+), byte (\d+); (\d+) bytes fetched",
                        outcome["outcome"])
    assert resumed is not None and 2 <= int(resumed.group(1)) < int(resumed.group(2)), outcome
    assert int(resumed.group(3)) == int(resumed.group(1)) * MIB, outcome
    assert int(resumed.group(4)) <= 24 * MIB - 2 * MIB, outcome  # kept blocks not fetched again
    doc = device.status_json()
    assert doc["slots"]["B"] == {"name": "B", "device": "sda3", "version": "1.0.2",
                                 "mark": "staged"} or doc["trial"] == "B", doc


# ---- rollback ------------------------------------------------------------------------------

def test_rollback_after_a_confirmed_update_is_not_undone_by_the_daemon(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED")

    result = run_cli(device, "update", "rollback")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        "Rolling back to 1.0.0 (sda2). This reboots into the previous partition.",
        "Rebooting..."]
    device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.1)")
    assert device.status_lines()[:4] == [
        "Boot slot: A (sda2)", "Version: 1.0.0", "Boot status: CONFIRMED (rolled back from 1.0.1)",
        "Rollback reason: manual (kruxos update rollback)"]

    boots, stages = len(device.boots()), len(decisions_with_outcomes(device, "stage"))
    seen = len(device.audit_file_records())
    passes = device.audit_head().get("repeats", 0)
    steady_for(device, 4, lambda: len(device.boots()) == boots
               and len(decisions_with_outcomes(device, "stage")) == stages
               and not [r for r in device.audit_file_records()[seen:]
                        if r["action"] in ("reboot", "stage")])
    assert device.audit_head().get("repeats", 0) - passes >= 2, "the resync did not run"
    assert device.status_json()["booted"] == "A"
    assert device.status_json()["next"]["action"] == "blocked"


def test_rollback_on_a_fresh_device_is_refused_and_changes_nothing(device: SimDevice) -> None:
    device.start()
    before = device.status_json()
    result = run_cli(device, "update", "rollback")
    assert result.returncode == 1, result
    assert result.stderr.strip() == "error: cannot roll back: the other slot B (sda3) is empty"
    assert result.stdout == ""
    doc = run_cli(device, "update", "rollback", "--json")
    assert doc.returncode == 1 and json_of(doc)["ok"] is False
    after = device.status_json()
    assert {k: after[k] for k in ("booted", "slots", "default", "trial")} == \
        {k: before[k] for k in ("booted", "slots", "default", "trial")}
    assert not events(device, "rollback-request") and len(device.boots()) == 1


# ---- confirm -------------------------------------------------------------------------------

def test_confirm_is_the_only_way_when_automatic_rollback_is_off(device: SimDevice) -> None:
    set_spec_block(device, "  rollback:\n    automatic: false")
    device.start()
    assert run_cli(device, "update", "apply", "--yes").returncode == 0
    device.wait_status("1.0.1", "PENDING")
    steady_for(device, 3, lambda: device.status_json()["boot_status"] == "PENDING")

    result = run_cli(device, "update", "confirm", "--json")
    assert result.returncode == 0, result
    assert json_of(result) == {"ok": True, "confirmed": "1.0.1", "slot": "B (sda3)"}
    device.wait_status("1.0.1", "CONFIRMED")
    assert device.status_lines()[:4] == SEED_SUCCESS
    again = run_cli(device, "update", "confirm")
    assert again.returncode == 1 and "nothing to confirm" in again.stderr, again


# ---- product bugs pinned down (expected to fail until fixed) -------------------------------

def _rolled_back_by_hand(device: SimDevice) -> None:
    device.start()
    assert run_cli(device, "update", "apply", "--yes").returncode == 0
    device.wait_status("1.0.1", "CONFIRMED")
    assert run_cli(device, "update", "rollback").returncode == 0
    device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.0.1)")


def test_status_does_not_offer_a_rollback_that_rollback_refuses(device: SimDevice) -> None:
    _rolled_back_by_hand(device)
    refused = run_cli(device, "update", "rollback")
    assert refused.returncode == 1 and "which failed" in refused.stderr, refused
    assert not [line for line in device.status_lines() if "available for rollback" in line], \
        device.status_lines()


def test_apply_of_a_version_rolled_back_by_hand_stages_it_or_refuses(device: SimDevice) -> None:
    _rolled_back_by_hand(device)
    result = run_cli(device, "update", "apply", "--json")
    if result.returncode != 0:  # a refusal is fine, if it says so
        assert "rolled back" in json_of(result)["error"]["message"], result
        return
    assert json_of(result)["staged"] is True
    device.wait_for(lambda: device.status_json()["trial"] == "B", 5,
                    "the staged 1.0.1 to be armed, as apply --json reported")



def test_apply_latest_and_a_second_apply_of_a_staged_version_draw_no_bars(
        device: SimDevice) -> None:
    device.start()
    first = run_cli(device, "update", "apply", "latest", "--no-reboot")
    assert first.returncode == 0 and first.stdout.splitlines() == [
        *STAGED_LINES, "1.0.1 will activate on the next reboot."], first
    again = run_cli(device, "update", "apply", "1.0.1", "--no-reboot")
    assert again.returncode == 0 and again.stdout.splitlines() == [
        "1.0.1 is already staged in slot B (sda3); nothing to download.",
        "Update staged. The new version will activate on reboot.",
        "1.0.1 will activate on the next reboot."], again
    assert len(decisions_with_outcomes(device, "stage")) == 1


def test_status_says_when_the_spec_is_invalid_and_when_no_daemon_runs(device: SimDevice) -> None:
    device.start()
    good = device.status_json()["spec"]
    assert good["error"] is None and good["revision"], good
    assert device.status_json()["daemon"]["running"] is True
    device.spec.write_text(device.spec.read_text() + "spec: [\n")
    lines = device.status_lines()
    spec_line = next(line for line in lines if line.startswith("Spec: "))
    assert spec_line.startswith(f"Spec: {device.spec} is invalid (") and spec_line.endswith(
        f"); the last good revision {good['revision']} is in force"), lines
    assert not [line for line in lines if line.startswith("Daemon: ")], lines
    assert lines[-1].startswith("Next: ")

    device.stop()
    lines = device.status_lines()
    daemon = next(line for line in lines if line.startswith("Daemon: "))
    assert re.fullmatch(r"Daemon: not running \(nothing follows the spec until `kruxos daemon` "
                        r"starts\); last pass \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+[smhd] ago\)",
                        daemon), daemon
    doc = device.status_json()["daemon"]
    assert doc["running"] is False and doc["pid"] is None and doc["last_pass"], doc


def test_check_says_when_the_latest_version_was_rolled_back_here(device: SimDevice) -> None:
    _rolled_back_by_hand(device)
    result = run_cli(device, "update", "check")
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    note = next((line for line in lines if line.startswith("Note: ")), None)
    assert note is not None and note.startswith(
        "Note: 1.0.1 failed on this device and was rolled back ("), lines
    # the desired version may be a pin, not the spec's: the note names neither
    assert note.endswith("; the device does not retry it until the desired version changes."), \
        note
    assert lines[-1] == "Run 'kruxos update apply 1.0.1' to try it again.", lines
    doc = json.loads(run_cli(device, "update", "check", "--json").stdout)
    assert doc["failed_here"]["version"] == "1.0.1" and doc["failed_here"]["reason"], doc


def test_a_version_rolled_back_by_hand_and_applied_again_stays_once_confirmed(
        device: SimDevice) -> None:
    _rolled_back_by_hand(device)
    device.wait_for(lambda: decisions_with_outcomes(device, "rollback")[-1][1], 30,
                    "the hand rollback's outcome")
    before = len(device.audit_file_records())
    result = run_cli(device, "update", "apply", "1.0.1", "--yes")
    assert result.returncode == 0, result
    device.wait_status("1.0.1", "CONFIRMED", 60)
    boots = len(device.boots())
    steady_for(device, 4, lambda: len(device.boots()) == boots
               and device.status_json()["booted"] == "B")
    later = device.audit_file_records()[before:]  # the hand rollback itself came before
    assert later and not [r for r in later if r["action"] == "rollback"], later
