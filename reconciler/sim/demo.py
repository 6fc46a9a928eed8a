"""``make demo``: the main job on the simulated device, through the real processes.

1. create a fresh simulated device (A holds 1.0.0, confirmed; B is empty);
2. boot it (``kruxos sim run``: bootloader logic, simulated OS, ``kruxos daemon``);
3. edit the spec to 1.0.1: the daemon stages it into B, reboots into a trial,
   the health check passes, B is confirmed;
4. publish a broken 1.0.2 (its gateway never starts) and edit the spec to it:
   staged into A, trial boot, the health check times out, automatic rollback;
5. publish 1.0.3, a service-only release on 1.0.1's root image (a new gateway
   that keeps its data in ``service-data/gateway``), and edit the spec to it:
   the gateway alone is switched, restarted and confirmed, no reboot;
6. ``kruxos update rollback``: the service update is what changed last, so it is
   undone without a reboot (the gateway's data put back, 1.0.3 blocked);
7. after each step print ``kruxos update status`` (and, for the slot updates,
   ``kruxos audit list``); at the end the switch and the rollback of the service
   update from the audit trail, and ``kruxos audit verify``.

Every command shown is run for real, as a user would type it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.durable import atomic_write

DEVICE_DIR = Path("demo-device")
STEP_TIMEOUT = 40.0


def kruxos(*args: str, show: bool = True, check: bool = True) -> str:
    """Run the real CLI and echo it like a terminal session."""
    if show:
        print(f"\n$ kruxos {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "reconciler.cli.main", *args],
                          capture_output=True, text=True)
    out = done.stdout + done.stderr
    if show:
        print(out.rstrip(), flush=True)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"kruxos {' '.join(args)} failed ({done.returncode}):\n{out}")
    return done.stdout


def status() -> dict[str, Any]:
    """``kruxos update status --json``, parsed."""
    value: dict[str, Any] = json.loads(kruxos("update", "status", "--json", show=False))
    return value


def wait_for(what: str, done: Callable[[dict[str, Any]], bool], device: subprocess.Popen[Any]
             ) -> None:
    """Poll the device's status until ``done`` holds (or give up loudly)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if device.poll() is not None:
            raise SystemExit(f"the simulated device stopped while waiting for: {what}")
        try:
            if done(status()):
                return
        except (ValueError, SystemExit):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {STEP_TIMEOUT:g}s waiting for: {what} "
                     f"(see {DEVICE_DIR / 'run' / 'daemon.log'})")


def set_version(version: str) -> None:
    """Edit the desired state as a Git checkout would: a new file replaces the old."""
    spec = DEVICE_DIR / "spec.yaml"
    lines = [f"  version: {version}" if line.startswith("  version:") else line
             for line in spec.read_text().splitlines()]
    print(f"\n# edit {spec}: spec.version = {version}", flush=True)
    atomic_write(spec, ("\n".join(lines) + "\n").encode())


def show_state() -> None:
    kruxos("update", "status")
    kruxos("audit", "list")


def banner(text: str) -> None:
    print(f"\n{'=' * 78}\n== {text}\n{'=' * 78}", flush=True)


def main() -> int:
    started = time.monotonic()
    if DEVICE_DIR.exists():
        subprocess.run(["rm", "-rf", str(DEVICE_DIR)], check=True)
    banner("A fresh simulated device: slot A holds 1.0.0, slot B is empty")
    kruxos("sim", "init", str(DEVICE_DIR))
    os.environ["KRUXOS_CONFIG"] = str((DEVICE_DIR / "device.yaml").resolve())
    log = open(DEVICE_DIR / "sim.log", "w")
    device = subprocess.Popen([sys.executable, "-m", "reconciler.cli.main", "sim", "run",
                               str(DEVICE_DIR)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("the daemon's first pass", lambda s: s["next"] is not None and
                 (DEVICE_DIR / "data" / "audit").exists(), device)
        wait_for("the first audit record", lambda s: bool(kruxos("audit", "list", show=False)),
                 device)
        show_state()
        _good_update(device)
        _broken_update(device)
        _service_update(device)
        _service_rollback(device)
        banner("The audit trail is hash-chained; verify it")
        kruxos("audit", "verify")
    finally:
        device.send_signal(signal.SIGTERM)
        device.wait(20)
        log.close()
    print(f"\n--- device console ({DEVICE_DIR / 'sim.log'}) ---")
    print((DEVICE_DIR / "sim.log").read_text().rstrip())
    print(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    return 0


def _good_update(device: subprocess.Popen[Any]) -> None:
    banner("GitOps: the spec now wants 1.0.1 -> stage, trial reboot, health check, confirm")
    set_version("1.0.1")
    wait_for("1.0.1 confirmed in slot B", lambda s: s["booted"] == "B"
             and s["boot_status"] == "CONFIRMED" and s["slots"]["B"]["version"] == "1.0.1",
             device)
    show_state()


def _broken_update(device: subprocess.Popen[Any]) -> None:
    banner("A broken 1.0.2 is published (its gateway never starts); the spec wants it")
    kruxos("sim", "publish", str(DEVICE_DIR), "1.0.2", "--behaviour", "gateway-fails",
           "--changes", "New gateway (broken build)")
    set_version("1.0.2")
    wait_for("1.0.2 on trial", lambda s: s["booted"] == "A" and s["boot_status"] == "PENDING",
             device)
    kruxos("update", "status")
    wait_for("automatic rollback from 1.0.2", lambda s: s["booted"] == "B"
             and s["boot_status"].startswith("CONFIRMED (rolled back"), device)
    show_state()



def _service_update(device: subprocess.Popen[Any]) -> None:
    banner("1.0.3 changes only the gateway (1.0.1's root image): a service update, no reboot")
    kruxos("sim", "publish", str(DEVICE_DIR), "1.0.3", "--service", "gateway", "--base",
           "1.0.1", "--data-dir", "gateway", "--changes", "Gateway 1.0.3 (new data schema)")
    kruxos("update", "check")
    set_version("1.0.3")
    wait_for("the gateway of 1.0.3 confirmed", lambda s: s.get("service_release") == "1.0.3",
             device)
    kruxos("update", "status")


def _service_rollback(device: subprocess.Popen[Any]) -> None:
    banner("A person rolls the last change back: the service update, without a reboot")
    kruxos("update", "rollback")  # it returns once the daemon recorded the rollback's outcome
    kruxos("update", "status")
    for action in ("switch-services", "rollback-services"):  # the data copy and its return
        kruxos("audit", "list", "--action", action)


if __name__ == "__main__":
    sys.exit(main())
