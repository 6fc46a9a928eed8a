"""Several writers at once: two applies, a cancel of an armed trial, a command during a restart.

One writer at a time is the rule (the data-dir lock, ``reconciler/store.py``):
a command hands its request to the running daemon, or takes the lock and
reconciles itself when none runs. These tests make writers meet, as two people
at one device, or a script and a person, or a person and a restarting daemon
do. Nothing may corrupt the state file or the trail, and each refusal must say
who holds the device.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.inbox import daemon_pid
from reconciler.sim.device import CHANNEL_PORT
from tests.device import KRUXOS, REPO, data_dir_lock_held
from tests.httpserver import ChannelServer

from .conftest import (
    SimDevice,
    decisions_with_outcomes,
    events,
    run_cli,
    start_cli,
    steady_for,
    wait_staging_started,
)

STAGED_TAIL = ["Update staged. The new version will activate on reboot.",
               "1.0.1 will activate on the next reboot."]


def _at_once(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at the same moment and collect them all."""
    procs = [subprocess.Popen([*KRUXOS, *args], cwd=REPO, env=env, text=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for args in commands]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess([*KRUXOS, *args], proc.returncode, out, err))
    return results


def _sound(device: SimDevice) -> None:
    """The trail verifies, the state file parses, the inbox is empty."""
    verify = device.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify
    assert device.status_json()["requests"] == []


def _lock_held_as(data_dir: Path, holder: str) -> contextlib.AbstractContextManager[None]:
    """Hold the device's data-dir lock here, named as ``holder`` names itself."""
    return data_dir_lock_held(data_dir, f"{holder} (pid {os.getpid()})\n")


def test_two_applies_at_once_stage_once_and_both_report_it(device: SimDevice) -> None:
    device.start()
    device.wait_for(lambda: daemon_pid(device.dir / "data"), 60, "the daemon to hold the lock")
    first, second = _at_once(device.env, ["update", "apply", "--no-reboot"],
                             ["update", "apply", "--no-reboot"])
    for result in (first, second):
        assert result.returncode == 0, result
        assert result.stdout.splitlines()[-2:] == STAGED_TAIL, result
    stages = decisions_with_outcomes(device, "stage")
    assert len(stages) == 1, stages  # the second pin asked for what was already there
    outcome = stages[0][1]
    assert outcome is not None and outcome["outcome"].startswith("ok"), stages
    assert len(events(device, "pin")) == 2
    doc = device.status_json()
    assert doc["slots"]["B"]["version"] == "1.0.1" and doc["trial"] == "B", doc
    _sound(device)


def test_a_command_while_another_holds_the_device_is_refused_naming_it(
        device_dir: Path) -> None:
    channel = ChannelServer(device_dir / "channel")
    try:
        (device_dir / "run" / "ports.json").write_text(
            json.dumps({CHANNEL_PORT: channel.url.removeprefix("http://")}))
        env = dict(os.environ, KRUXOS_CONFIG=str(device_dir / "device.yaml"))
        data = device_dir / "data"
        with _lock_held_as(data, "kruxos update"):
            refused = subprocess.run([*KRUXOS, "update", "apply", "--no-reboot"], cwd=REPO,
                                     env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, refused
        assert refused.stderr.strip() == (
            f"error: {data} is locked by kruxos update (pid {os.getpid()}): another command "
            "is changing this device; run this one again when it has finished"), refused
        assert refused.stdout == "" and not list((data / "inbox").glob("*.json"))

        # Two at once, no daemon: one stages; the other either finds it done or is refused.
        results = _at_once(env, ["update", "apply", "--no-reboot"],
                           ["update", "apply", "--no-reboot"])
        done = [r for r in results if r.returncode == 0]
        assert done and all(r.stdout.splitlines()[-2:] == STAGED_TAIL for r in done), results
        # Reconciling in its own process, a command draws its screen from the trail: no
        # daemon log lines among its bars.
        assert not [r for r in done if "kruxos daemon:" in r.stdout + r.stderr], results
        for r in results:
            assert r.returncode == 0 or re.fullmatch(
                r"error: .* is locked by kruxos update \(pid \d+\): another command is "
                r"changing this device; run this one again when it has finished\n",
                r.stderr), r
        status = json.loads(subprocess.run(
            [*KRUXOS, "update", "status", "--json"], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=60, check=True).stdout)
        assert status["slots"]["B"]["version"] == "1.0.1" and status["trial"] == "B", status
        verify = subprocess.run([*KRUXOS, "audit", "verify"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify
        assert len([r for r in channel.requests() if r["path"].endswith(".img")]) == 1
    finally:
        channel.stop()


def test_a_restarting_daemon_waits_for_the_command_that_holds_the_device(
        device: SimDevice) -> None:
    device.start()
    data = device.dir / "data"
    pid = device.wait_for(lambda: daemon_pid(data), 60, "the daemon to hold the lock")
    with _kill_then_hold(device, pid):
        device.wait_for(lambda: "waiting for kruxos update" in
                        (device.dir / "run" / "daemon.log").read_text(), 60,
                        "the restarted daemon to wait for the command's lock")
        assert daemon_pid(data) is None
    device.wait_for(lambda: daemon_pid(data), 30, "the daemon to take the lock once free")
    console = device.console_text()
    assert len(re.findall(r"kruxos daemon exited", console)) == 1, console  # the kill only
    result = run_cli(device, "update", "apply", "--no-reboot")
    assert result.returncode == 0 and result.stdout.splitlines()[-2:] == STAGED_TAIL, result
    _sound(device)


@contextmanager
def _kill_then_hold(device: SimDevice, pid: int) -> Iterator[None]:
    """Kill the daemon and hold the lock as a command would before it is restarted."""
    data = device.dir / "data"
    os.kill(pid, signal.SIGKILL)
    device.wait_for(lambda: daemon_pid(data) is None, 30, "the killed daemon to free the lock")
    with _lock_held_as(data, "kruxos update"):
        yield


def test_cancel_of_an_armed_trial_disarms_it_and_the_next_boot_keeps_the_running_version(
        device: SimDevice) -> None:
    device.start()
    result = run_cli(device, "update", "apply", "--no-reboot")
    assert result.returncode == 0, result
    assert device.status_json()["trial"] == "B"

    cancel = run_cli(device, "update", "cancel")
    assert cancel.returncode == 0, cancel
    doc = device.status_json()
    assert doc["trial"] is None and doc["boot"]["default"] == "A", doc
    assert doc["slots"]["B"]["mark"] != "good" and doc["override"]["version"] == "1.0.0", doc

    assert device.proc is not None
    os.kill(device.proc.pid, signal.SIGUSR1)  # a reboot from outside (a person, a power key)
    device.wait_for(lambda: len(device.boots()) == 2, 60, "the second boot")
    device.wait_status("1.0.0", "CONFIRMED")
    assert device.boots()[-1].split("bootloader chose slot ")[1].startswith("A"), device.boots()
    steady_for(device, 3, lambda: len(device.boots()) == 2)
    _sound(device)


def test_a_cancel_while_apply_waits_for_its_staging_ends_the_apply_saying_so(
        device: SimDevice) -> None:
    # 24 MB at 2 MB/s: the cancel lands while the staging runs, with seconds to spare.
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--size-mb", "24")
    device.start("--channel-rate", "2000")
    # With no daemon yet the apply would hold the device itself, and refuse the cancel.
    device.wait_for(lambda: daemon_pid(device.dir / "data"), 60, "the daemon to hold the lock")
    apply = start_cli(device, "update", "apply", "1.0.2", "--yes")
    try:
        wait_staging_started(device, "1.0.2", blocks=2)
        cancel = run_cli(device, "update", "cancel")
        assert cancel.returncode == 0, cancel
        out, err = apply.communicate(timeout=60)
    finally:
        apply.kill()
        apply.communicate()
    assert apply.returncode == 1, (out, err)
    seq = events(device, "cancel")[0]["seq"]
    assert err.startswith(f"error: 1.0.2 was not staged: a later request at the device took "
                          f"over (#{seq} cancel: staging cancelled"), err
    doc = device.status_json()
    assert doc["override"]["version"] == "1.0.0" and doc["staging"] is None, doc
    steady_for(device, 3, lambda: len(device.boots()) == 1)
    assert device.status_json()["booted"] == "A"
    _sound(device)


def test_apply_and_cancel_at_once_end_in_a_state_the_order_of_the_requests_explains(
        device: SimDevice) -> None:
    device.start()
    device.wait_for(lambda: daemon_pid(device.dir / "data"), 60, "the daemon to hold the lock")
    apply, cancel = _at_once(device.env, ["update", "apply", "--yes"], ["update", "cancel"])
    taken = [r["action"] for r in device.audit_file_records()
             if r["kind"] == "decision" and r["action"] in ("pin", "cancel")]
    if cancel.returncode == 1:  # looked before the pin was taken: nothing to cancel then
        assert cancel.stderr.startswith("error: nothing to cancel: "), cancel
        assert taken == ["pin"], taken
    else:
        assert cancel.returncode == 0 and sorted(taken) == ["cancel", "pin"], (cancel, taken)
    if taken[-1] == "pin":  # nothing to cancel yet; then the apply runs its course
        assert apply.returncode == 0, apply
        device.wait_status("1.0.1", "CONFIRMED", 90)
    else:  # the cancel came after the pin: the apply says so and nothing is staged
        assert apply.returncode == 1 and "a later request at the device took over" in \
            apply.stderr, apply
    device.wait_for(lambda: device.status_json()["next"]["action"] == "nothing", 90,
                    "the device to settle")
    boots = len(device.boots())
    steady_for(device, 3, lambda: len(device.boots()) == boots)
    doc = device.status_json()
    assert doc["slots"][doc["booted"]]["mark"] == "good" and doc["trial"] is None, doc
    _sound(device)
