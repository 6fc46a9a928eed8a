"""The daemon as a process: reaction time, bad specs, the one-writer lock, SIGTERM, plan.

Each test boots a simulated device with ``kruxos sim run`` and talks to it only
through files an operator would touch and the ``kruxos`` CLI.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.device import KRUXOS, REPO, SimDevice

pytestmark = pytest.mark.slow


def _idle(device: SimDevice) -> list[dict]:
    """Wait until the daemon has recorded its first decision (nothing to do)."""
    return device.wait_for(lambda: [r for r in device.audit_file_records()
                                    if r["kind"] == "decision"], 15, "the first decision")


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _snapshot(device: SimDevice) -> dict[str, bytes]:
    data = device.dir / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*"))
            if p.is_file() and p.name != "lock"}


def test_spec_edit_is_acted_on_within_one_second(make_device) -> None:
    device = make_device(resync="5m")
    device.start()
    _idle(device)
    time.sleep(0.5)  # the watcher is up and the daemon sleeps on its triggers
    seen = len(device.audit_file_records())

    started = time.monotonic()
    device.edit_spec(version="1.0.1")
    while True:
        new = [r for r in device.audit_file_records()[seen:] if r["kind"] == "decision"
               and r["actor"] == "spec"]
        elapsed = time.monotonic() - started
        if new or elapsed > 5:
            break
        time.sleep(0.005)
    assert new, f"no decision by the spec within 5 s{device.diagnostics()}"
    assert elapsed < 1.0, f"first spec decision after {elapsed:.3f}s: {new[0]}"
    assert new[0]["action"] == "stage", new[0]


def test_idle_daemon_sleeps_until_a_trigger(make_device) -> None:
    device = make_device(resync="5m")
    device.start()
    _idle(device)
    time.sleep(0.5)
    before = device.state()["audit"].get("repeats", 0)
    time.sleep(2)
    after = device.state()["audit"].get("repeats", 0)
    assert after - before <= 1, f"{after - before} passes in 2 s with nothing to do"
    records = device.audit_file_records()
    assert [r["actor"] for r in records if r["kind"] == "decision"] == ["daemon"], records


BAD_SPECS = {
    "a duration in words": (
        lambda t: t.replace("interval: 1s", "interval: 5 seconds"),
        "interval: 5 seconds", "spec.health.interval", "is not a duration"),
    "an unknown field": (
        lambda t: t.rstrip("\n") + "\n  colour: blue\n",
        "colour: blue", "spec.colour", "unknown field"),
    "an unknown time zone": (
        lambda t: t.rstrip("\n") + ("\n  rollout:\n    windows:\n      - days: [tue]\n"
                                    "        start: \"02:00\"\n        duration: 1h\n"
                                    "        timezone: Mars/Olympus_Mons\n"),
        "timezone: Mars", "spec.rollout.windows[0].timezone", "Mars/Olympus_Mons"),
}


def test_bad_spec_is_rejected_and_the_last_good_one_kept_across_a_restart(
        make_device) -> None:
    device = make_device(resync="1s")
    device.start()
    _idle(device)
    daemon = device.daemon_pid()
    good = device.spec.read_text()
    wanted = good.replace("version: 1.0.0", "version: 1.0.1")

    bad_text = ""
    for name, (mangle, needle, field, words) in BAD_SPECS.items():
        bad_text = mangle(wanted)
        device.edit_spec(text=bad_text)
        line = _line_of(bad_text, needle)
        message = f"{device.spec}:{line}: {field}: "

        def rejected(message: str = message) -> list[dict]:
            return [r for r in device.audit_file_records() if r["action"] == "spec-rejected"
                    and message in r["reason"]]
        event = device.wait_for(rejected, 5, f"spec-rejected for {name}")[0]
        assert words in event["reason"], event
        assert event["spec_file"] == str(device.spec), event

        check = device.cli("spec", "validate", str(device.spec), check=False)
        assert check.returncode != 0, name
        assert message in check.stderr and words in check.stderr, check.stderr

    passes = device.state()["audit"].get("repeats", 0)
    time.sleep(1.5)  # a resync passes: still nothing staged, same daemon
    assert device.state()["audit"].get("repeats", 0) > passes, "no pass ran"
    assert device.daemon_pid() == daemon
    assert not device.decisions("stage"), device.audit_records()
    assert device.status_json()["slots"]["A"]["version"] == "1.0.0"

    # A restart with the bad file still in place keeps following the last good spec.
    assert device.stop() == 0
    device.start()
    device.wait_for(lambda: (device.dir / "run" / "daemon.log").read_text()
                    .count("started on") == 2, 10, "the daemon after the restart")
    passes = device.state()["audit"].get("repeats", 0)
    time.sleep(1.5)
    assert device.state()["audit"].get("repeats", 0) > passes, "no pass ran"
    assert not device.decisions("stage"), device.audit_records()
    plan = device.cli("spec", "plan", check=False)
    assert "planning with the last good spec" in plan.stdout, plan.stdout
    assert plan.returncode == 0, plan.stdout

    device.edit_spec(text=wanted)
    device.wait_status("1.0.1", "CONFIRMED")
    assert device.cli("audit", "verify").returncode == 0


def test_second_daemon_on_the_same_device_is_refused(device: SimDevice) -> None:
    device.start()
    _idle(device)
    started = time.monotonic()
    second = subprocess.run([*KRUXOS, "daemon"], cwd=REPO, env=device.env,
                            capture_output=True, text=True, timeout=20)
    elapsed = time.monotonic() - started
    assert second.returncode != 0
    assert elapsed < 5, elapsed
    assert "locked" in second.stderr and str(device.dir / "data") in second.stderr, \
        second.stderr
    assert f"pid {device.daemon_pid()}" in second.stderr, second.stderr
    assert device.cli("audit", "verify").returncode == 0


def test_sigterm_stops_the_device_and_every_child_cleanly(device: SimDevice) -> None:
    device.start()
    _idle(device)
    assert len(device.processes()) >= 3  # sim run, simulated OS, daemon

    assert device.stop() == 0
    assert device.wait_for(lambda: not device.processes(), 5, "every child to exit")
    log = (device.dir / "run" / "daemon.log").read_text()
    assert "kruxos daemon: stopped" in log, log
    assert not (device.dir / "run" / "sim.pid").exists()
    verify = device.cli("audit", "verify")
    assert verify.stdout.startswith("audit trail OK"), verify.stdout


def test_spec_plan_tells_what_would_happen_and_changes_nothing(
        make_device, tmp_path: Path) -> None:
    device = make_device(resync="5m")
    device.start()
    _idle(device)
    time.sleep(0.5)
    before = _snapshot(device)

    nothing = device.cli("spec", "plan", check=False)
    assert nothing.returncode == 0, nothing.stdout + nothing.stderr
    assert "plan: nothing:" in nothing.stdout

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(device.spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    act = device.cli("spec", "plan", str(candidate), check=False)
    assert act.returncode == 1, act.stdout + act.stderr
    assert "plan: stage: " in act.stdout and "1.0.1" in act.stdout, act.stdout

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(candidate.read_text().replace("interval: 1s", "interval: 5 seconds"))
    bad = device.cli("spec", "plan", str(invalid), check=False)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert f"{invalid}:{_line_of(invalid.read_text(), 'interval')}: spec.health.interval" \
        in bad.stderr, bad.stderr

    assert _snapshot(device) == before
    assert device.status_json()["slots"]["B"]["mark"] == "empty"
