"""What a script is told when a command cannot run: exit status 2 and, with --json, JSON.

For ``update check`` exit status 1 means "an update is available": a missing
config, an unreadable device or a bug must never exit 1 (docs/updating.md,
Exit codes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli_contract import check as contract_check
from tests.device import KRUXOS, REPO


def _run(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KRUXOS_CONFIG=str(config))
    result = subprocess.run([*KRUXOS, *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    contract_check(list(args), result)
    return result


COMMANDS = [("update", "check"), ("update", "status"), ("update", "apply", "--yes"),
            ("update", "cancel"), ("update", "rollback"), ("spec", "plan"), ("slot", "verify")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_config_exits_2_naming_it(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nope.yaml"
    result = _run(*command, config=missing)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr, result
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_with_json_the_error_is_one_json_document_with_a_code(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nope.yaml"
    result = _run(*command, "--json", config=missing)
    assert result.returncode == 2, result
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "config", doc
    assert str(missing) in doc["error"]["message"] and result.stderr == ""


def test_an_unreadable_device_exits_2_not_1(device_dir: Path) -> None:
    (device_dir / "run" / "cmdline").unlink()  # the running system says nothing of its slot
    result = _run("update", "check", config=device_dir / "device.yaml")
    assert result.returncode == 2, result
    as_json = _run("update", "check", "--json", config=device_dir / "device.yaml")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["ok"] is False, as_json


def test_a_usage_error_under_json_is_json_too(device_dir: Path) -> None:
    result = _run("update", "apply", "--yes", "--no-reboot", "--json",
                  config=device_dir / "device.yaml")
    assert result.returncode == 2, result
    doc = json.loads(result.stdout)
    assert doc["error"]["code"] == "usage" and "contradict" in doc["error"]["message"], doc


def test_version_and_config_after_the_command(device_dir: Path, tmp_path: Path) -> None:
    version = subprocess.run([*KRUXOS, "--version"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"kruxos \d+\.\d+\.\d+\n", version.stdout)
    for args in (["update", "status", "--config", str(device_dir / "device.yaml")],
                 ["update", "status", f"--config={device_dir / 'device.yaml'}"]):
        result = _run(*args, config=tmp_path / "nope.yaml")  # the option wins over the env
        assert result.returncode == 0 and result.stdout.startswith("Boot slot: A (sda2)"), result


def test_sim_init_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("a repository\n")
    result = subprocess.run([*KRUXOS, "sim", "init", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{tmp_path} is not empty" in result.stderr, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_a_simulated_device_that_is_not_running_says_how_to_start_it(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    subprocess.run([*KRUXOS, "sim", "init", str(directory)], cwd=REPO, check=True,
                   capture_output=True, timeout=60)
    hint = (f"hint: the simulated device {directory} is not running; start it with "
            f"`kruxos sim run {directory}`")
    for command in (("update", "status"), ("update", "check")):
        result = _run(*command, config=directory / "device.yaml")
        assert result.returncode == 2 and result.stderr.rstrip().endswith(hint), result


def test_audit_show_of_a_decision_carries_its_outcome(device_dir: Path) -> None:
    config = device_dir / "device.yaml"
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    assert _run("update", "cancel", config=config).returncode == 0  # passes run here
    records = [json.loads(line) for line in
               _run("audit", "list", "--json", config=config).stdout.splitlines()]
    decision = next(r for r in records if r["kind"] == "decision" and r["action"] == "cancel")
    shown = json.loads(_run("audit", "show", str(decision["seq"]), config=config).stdout)
    assert shown["seq"] == decision["seq"] and shown["outcome_record"]["decision"] == \
        decision["seq"] and shown["outcome_record"]["outcome"].startswith("ok"), shown
    outcome = json.loads(_run("audit", "show", str(decision["seq"] + 1), config=config).stdout)
    assert outcome["kind"] == "outcome" and "outcome_record" not in outcome
    assert outcome["details"]["code"] == "ok", outcome
    missing = _run("audit", "show", "9999", config=config)
    assert missing.returncode == 1 and missing.stdout == "", missing
    assert missing.stderr == "error: no audit record #9999\n", missing


def test_audit_list_since_takes_the_durations_specs_take(device_dir: Path) -> None:
    config = device_dir / "device.yaml"
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    assert _run("update", "cancel", config=config).returncode == 0  # passes run here
    everything = _run("audit", "list", "--json", config=config).stdout.splitlines()
    recent = _run("audit", "list", "--since", "1h30m", "--json", config=config)
    assert recent.returncode == 0 and recent.stdout.splitlines() == everything, recent
    assert everything
    wrong = _run("audit", "list", "--since", "1h30", config=config)
    assert wrong.returncode == 2 and "expected a time like" in wrong.stderr, wrong


def test_spec_validate_plan_and_slot_verify_speak_json(device_dir: Path) -> None:
    """Their --json follows specs/cli/ (checked by ``_run``), and says what the text says."""
    config = device_dir / "device.yaml"
    spec = device_dir / "spec.yaml"
    valid = _run("spec", "validate", str(spec), "--json", config=config)
    assert valid.returncode == 0 and valid.stderr == "", valid
    doc = json.loads(valid.stdout)
    assert (doc["file"], doc["version"]) == (str(spec), "1.0.0"), doc

    plan = _run("spec", "plan", "--json", config=config)
    doc = json.loads(plan.stdout)
    assert plan.returncode == (1 if doc["acts"] else 0), (plan, doc)
    assert doc["observed"]["slot"] == "A" and doc["observed"]["version"] == "1.0.0", doc
    text = _run("spec", "plan", config=config)
    assert f"plan: {doc['action']['kind']}: {doc['action']['reason']}" in text.stdout, text

    slots = _run("slot", "verify", "--json", config=config)
    doc = json.loads(slots.stdout)
    assert slots.returncode == 0 and doc["ok"] is True, slots
    assert doc["slots"]["A"]["identity"]["version"] == "1.0.0", doc
    assert doc["slots"]["B"]["state"] == "empty" and doc["slots"]["B"]["identity"] is None, doc


def test_an_invalid_spec_under_json_is_an_error_document_naming_the_line(
        device_dir: Path) -> None:
    bad = device_dir / "bad.yaml"
    bad.write_text((device_dir / "spec.yaml").read_text().replace("version: 1.0.0",
                                                                  "version: [1"))
    for command in (("spec", "validate", str(bad)), ("spec", "plan", str(bad))):
        result = _run(*command, "--json", config=device_dir / "device.yaml")
        doc = json.loads(result.stdout)
        assert result.returncode == 2 and doc["error"]["code"] == "spec", (command, result)
        assert str(bad) in doc["error"]["message"] and result.stderr == "", doc


def test_a_slot_that_contradicts_its_identity_is_ok_false_exit_1(device_dir: Path) -> None:
    slot = device_dir / "slots" / "sda2"
    with slot.open("r+b") as f:  # one byte of the image the identity names
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = _run("slot", "verify", "A", "--json", config=device_dir / "device.yaml")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["ok"] is False, result
    assert list(doc["slots"]) == ["A"] and doc["slots"]["A"]["state"] == "mismatch", doc
