"""The daemon as a process: reaction to edits, bad specs, the one-writer lock, SIGTERM, plan.

Each test boots a simulated device with ``kruxos sim run`` and talks to it only
through files an operator would touch and the ``kruxos`` CLI. How fast the
daemon reacts is measured by ``bench/spec_reaction.py``, not asserted here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.device import KRUXOS, REPO, SimDevice
from tests.waiting import holds_for


def _idle(device: SimDevice) -> list[dict[str, Any]]:
    """Wait until the daemon watches the spec and has recorded its first decision."""
    device.wait_for(lambda: "watching" in (device.dir / "run" / "daemon.log").read_text(),
                    60, "the daemon to watch the spec")
    decisions = device.wait_for(lambda: [r for r in device.audit_file_records()
                                         if r["kind"] == "decision"], 60, "the first decision")
    device.wait_for(lambda: device.audit_head().get("seq"), 60,
                    "the audit head after the first decision")
    return decisions


def _passes(device: SimDevice) -> int:
    """How many passes the daemon has made that repeated its last decision."""
    return int(device.audit_head().get("repeats", 0))


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _snapshot(device: SimDevice) -> dict[str, bytes]:
    data = device.dir / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*"))
            if p.is_file() and p.name != "lock"}


def test_spec_edit_wakes_the_daemon_without_waiting_for_the_resync(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="5m")  # a pass can only come from the spec watcher
    device.start()
    _idle(device)
    seen = len(device.audit_file_records())

    device.edit_spec(version="1.0.1")
    new = device.wait_for(lambda: [r for r in device.audit_file_records()[seen:]
                                   if r["kind"] == "decision" and r["actor"] == "spec"],
                          60, "a decision caused by the spec edit")
    assert new[0]["action"] == "stage", new[0]


def test_idle_daemon_sleeps_until_a_trigger(make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="5m")
    device.start()
    _idle(device)
    before = _passes(device)
    holds_for(lambda: _passes(device) - before <= 1, 2, "at most one pass with nothing to do",
              context=device.diagnostics)
    records = device.audit_file_records()
    assert [r["actor"] for r in records if r["kind"] == "decision"] == ["daemon"], records


BAD_SPECS: dict[str, tuple[Callable[[str], str], str, str, str]] = {
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
        make_device: Callable[..., SimDevice]) -> None:
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

        def rejected(message: str = message) -> list[dict[str, Any]]:
            return [r for r in device.audit_file_records() if r["action"] == "spec-rejected"
                    and message in r["reason"]]
        event = device.wait_for(rejected, 30, f"spec-rejected for {name}")[0]
        assert words in event["reason"], event
        assert event["spec_file"] == str(device.spec), event

        check = device.cli("spec", "validate", str(device.spec), check=False)
        assert check.returncode != 0, name
        assert message in check.stderr and words in check.stderr, check.stderr

    passes = _passes(device)
    device.wait_for(lambda: _passes(device) > passes, 30, "a resync pass")
    assert device.daemon_pid() == daemon  # still nothing staged, same daemon
    assert not device.decisions("stage"), device.audit_records()
    assert device.status_json()["slots"]["A"]["version"] == "1.0.0"

    # A restart with the bad file still in place keeps following the last good spec.
    assert device.stop() == 0
    device.start()
    device.wait_for(lambda: (device.dir / "run" / "daemon.log").read_text()
                    .count("started on") == 2, 60, "the daemon after the restart")
    passes = _passes(device)
    device.wait_for(lambda: _passes(device) > passes, 30, "a resync pass")
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
    second = subprocess.run([*KRUXOS, "daemon"], cwd=REPO, env=device.env,
                            capture_output=True, text=True, timeout=60)  # refused, not queued
    assert second.returncode != 0
    assert "locked" in second.stderr and str(device.dir / "data") in second.stderr, \
        second.stderr
    assert f"pid {device.daemon_pid()}" in second.stderr, second.stderr
    assert device.cli("audit", "verify").returncode == 0


def test_sigterm_stops_the_device_and_every_child_cleanly(device: SimDevice) -> None:
    device.start()
    _idle(device)
    assert len(device.processes()) >= 3  # sim run, simulated OS, daemon

    assert device.stop() == 0
    assert device.wait_for(lambda: not device.processes(), 30, "every child to exit")
    log = (device.dir / "run" / "daemon.log").read_text()
    assert "kruxos daemon: stopped" in log, log
    assert not (device.dir / "run" / "sim.pid").exists()
    verify = device.cli("audit", "verify")
    assert verify.stdout.startswith("audit trail OK"), verify.stdout


def _settled(device: SimDevice) -> Callable[[], dict[str, bytes] | None]:
    """A look at the data dir that is the same as the look before (no write in between)."""
    last: list[dict[str, bytes]] = []

    def look() -> dict[str, bytes] | None:
        now = _snapshot(device)
        same = bool(last) and last[-1] == now
        last.append(now)
        return now if same else None
    return look


def test_spec_plan_tells_what_would_happen_and_changes_nothing(
        make_device: Callable[..., SimDevice], tmp_path: Path) -> None:
    device = make_device(resync="5m")
    device.start()
    _idle(device)
    device.wait_for(lambda: [r for r in device.audit_file_records() if r["kind"] == "outcome"],
                    60, "the outcome of the first pass")
    before = device.wait_for(_settled(device), 30, "the data dir to settle after the first pass",
                             every=0.5)

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
