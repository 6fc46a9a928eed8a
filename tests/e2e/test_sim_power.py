"""The simulated device: killing ``sim run`` is a power cut; a failing daemon backs off.

A power cut ends every process of a device at once. ``kruxos sim run`` stands
for the device, so a SIGKILL of that one process must end the simulated OS and
the daemon too (the daemon runs in a session of its own, so a kill of the
process group would miss it): otherwise the daemon keeps the data-dir lock and
the next boot's daemon is refused. And a daemon that keeps exiting at start is
restarted with a growing delay, saying why, instead of spinning.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable

from tests.device import KRUXOS, REPO, SimDevice, data_dir_lock_held


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_killing_sim_run_alone_ends_every_process_of_the_device(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    device.start()
    daemon = device.daemon_pid()
    assert daemon is not None
    others = [pid for pid in device.processes() if device.proc and pid != device.proc.pid]
    assert daemon in others and len(others) >= 2, others  # the daemon and the simulated OS

    assert device.proc is not None
    os.kill(device.proc.pid, signal.SIGKILL)  # the one process, not its group
    device.proc.wait()
    device.proc = None
    device.wait_for(lambda: not any(_alive(pid) for pid in others), 20,
                    f"every process of the device ({others}) to end with sim run")

    # The next boot's daemon gets the lock at once and converges as usual.
    device.start()
    device.wait_status("1.0.0", "CONFIRMED", 60)
    assert "locked by" not in (device.dir / "run" / "daemon.log").read_text()


def test_a_daemon_that_cannot_start_is_restarted_with_a_growing_delay_saying_why(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    data = device.dir / "data"
    # Another daemon holds it: refused, not waited for.
    with data_dir_lock_held(data, "kruxos daemon (pid 1)\n"):
        device.start_without_waiting()
        pattern = re.compile(r"kruxos daemon exited \((\d+)\) after [\d.]+s: (.*); "
                             r"restarting it in (\d+)s")
        def restarts() -> list[tuple[str, str, str]] | None:
            found: list[tuple[str, str, str]] = pattern.findall(device.console_text())
            return found if len(found) >= 3 else None
        exits = device.wait_for(restarts, 60, "three restarts of a refused daemon")
    delays = [int(delay) for _, _, delay in exits[:3]]
    assert delays == [1, 2, 4], exits
    assert all("locked by kruxos daemon (pid 1)" in why for _, why, _ in exits), exits
    # Once the lock is free, the next restart holds it and the device is idle again.
    device.wait_status("1.0.0", "CONFIRMED", 60)


def test_a_second_sim_run_of_the_same_device_is_refused_and_leaves_the_first_alone(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    device.start()
    ports = (device.dir / "run" / "ports.json").read_bytes()
    assert device.proc is not None
    second = subprocess.run([*KRUXOS, "sim", "run", str(device.dir)], cwd=REPO, env=device.env,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second
    assert second.stderr.strip() == (f"error: {device.dir} is already running (kruxos sim run, "
                                     f"pid {device.proc.pid}); stop that one first (Ctrl-C, or "
                                     "kill -TERM it)"), second
    assert (device.dir / "run" / "ports.json").read_bytes() == ports
    device.wait_status("1.0.0", "CONFIRMED", 30)
