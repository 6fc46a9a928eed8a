"""A service update end to end on the simulated device: no reboot, one service restarted.

Each test boots a device with ``kruxos sim run`` on 1.0.0, publishes a service-only
release (``kruxos sim publish DIR VERSION --service gateway --base 1.0.0``: 1.0.0's
root image, a new gateway artifact) and edits the
spec to it. The simulated OS runs the gateway from its artifact as a process of
its own (``GET /services`` lists the pids), so the test sees the one service
restart, the OS and the boot count untouched, and the health answer's
``services`` map decide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from reconciler.sim.device import OS_PORT
from reconciler.sim.run import HALTED_AT_FAILPOINT, ports
from tests.device import SimDevice


def _on_100(device: SimDevice) -> None:
    device.start()
    device.wait_for(lambda: device.decisions("nothing") and "runs 1.0.0" in
                    device.decisions("nothing")[-1]["reason"], 60, "1.0.0 settled")


def _os(device: SimDevice, path: str) -> Any:
    port = device.wait_for(lambda: ports(device.dir).get(OS_PORT), 30, "the OS port")
    return httpx.get(f"http://{port}{path}", timeout=10, trust_env=False).json()


def _outcome(device: SimDevice, action: str) -> dict[str, Any] | None:
    done = [r for r in device.audit_records() if r["kind"] == "outcome"
            and r["action"] == action]
    return done[-1] if done else None


def test_a_service_only_release_restarts_the_gateway_without_a_reboot(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    _on_100(device)
    boots, os_pid = len(device.boots()), _os(device, "/services")["os_pid"]
    assert _os(device, "/services")["pids"] == {}  # the image's own gateway runs

    published = device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway",
               "--base", "1.0.0")
    assert "service update, no reboot" in published.stdout
    check = device.cli("update", "check", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Latest version: 1.0.2 (service update, no reboot)" in check.stdout, check.stdout
    device.edit_spec(version="1.0.2")
    confirmed = device.wait_for(lambda: _outcome(device, "confirm-services"), 60,
                                "the service update to be confirmed")
    assert confirmed["details"]["code"] == "ok", confirmed

    assert len(device.boots()) == boots  # no reboot
    services = _os(device, "/services")
    assert services["os_pid"] == os_pid and set(services["pids"]) == {"gateway"}
    health = _os(device, "/health/ready")
    assert health["status"] == "ok" and health["services"]["gateway"] == "ok", health
    actions = [r["action"] for r in device.decisions()]
    for step in ("stage-services", "switch-services", "restart-services", "probe-services",
                 "confirm-services"):
        assert step in actions, actions
    assert "reboot" not in actions[actions.index("stage-services"):], actions
    status = device.cli("update", "status").stdout
    assert "Services: 1.0.2 (service update on 1.0.0, no reboot)" in status, status
    assert "  gateway 1.0.2 (service update, previous: the image's own)" in status, status
    assert device.status_json()["service_release"] == "1.0.2"
    check = device.cli("update", "check", check=False)
    assert check.returncode == 0 and "Current version: 1.0.2" in check.stdout, check.stdout
    assert device.cli("audit", "verify").returncode == 0

    # The service update is what changed last: a person's rollback undoes it, no reboot.
    rolled = device.cli("update", "rollback", "--json", check=False)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert json.loads(rolled.stdout) == {"ok": True, "service_rollback": True,
                                         "rolled_back": "1.0.2", "runs": "1.0.0",
                                         "services": ["gateway"], "reboot": False,
                                         "blocked": "1.0.2"}
    assert len(device.boots()) == boots and _os(device, "/services")["os_pid"] == os_pid
    assert _os(device, "/services")["pids"] == {}  # the image's own gateway again
    undone = _outcome(device, "rollback-services")
    assert undone is not None and undone["details"]["code"] == "ok", undone
    decision = [r for r in device.decisions("rollback-services")
                if r["seq"] == undone["decision"]]
    assert "the last change was the service update 1.0.0 → 1.0.2" in decision[0]["reason"]
    device.wait_for(lambda: [r for r in device.decisions("blocked")
                             if "1.0.2 was rolled back" in r["reason"]], 30, "1.0.2 blocked")
    status = device.cli("update", "status").stdout
    assert "Version: 1.0.0" in status and "Services: 1.0.2" not in status, status
    assert device.cli("audit", "verify").returncode == 0


def test_a_broken_service_release_is_restored_without_a_reboot_and_blocked(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    _on_100(device)
    boots = len(device.boots())
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway",
               "--base", "1.0.0", "--behaviour", "gateway-fails")
    device.edit_spec(version="1.0.2")
    restored = device.wait_for(lambda: _outcome(device, "restore-services"), 60,
                               "the service update to be restored")
    assert restored["details"]["code"] == "ok", restored
    assert "no reboot" in restored["outcome"], restored
    decision = [r for r in device.decisions("restore-services")
                if r["seq"] == restored["decision"]]
    assert "gateway failed to start" in decision[0]["reason"], decision

    assert len(device.boots()) == boots  # restored without a reboot
    assert _os(device, "/services")["pids"] == {}  # the image's own gateway again
    health = _os(device, "/health/ready")
    assert health["status"] == "ok", health
    blocked = device.wait_for(lambda: [r for r in device.decisions("blocked")
                                       if "1.0.2 was rolled back" in r["reason"]], 30,
                              "1.0.2 blocked with its reason")
    assert "gateway failed to start" in blocked[-1]["reason"], blocked
    state = device.state()
    assert state["failed"]["version"] == "1.0.2" and "service_update" not in state, state
    assert not [r for r in device.decisions() if r["action"] == "confirm-services"]
    status = device.cli("update", "status").stdout
    assert "Version: 1.0.0" in status and "1.0.2 was rolled back" in status, status
    assert device.cli("audit", "verify").returncode == 0


def _killed_at(device: SimDevice, point: str, behaviour: str) -> None:
    """Boot the device on 1.0.0 with ``point`` armed, then edit the spec to a service-only
    1.0.2 and wait for the daemon to die there (the device halts as the crash left it)."""
    device.env["KRUXOS_FAILPOINTS"] = f"{point}=kill"
    _on_100(device)
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway",
               "--base", "1.0.0", "--behaviour", behaviour)
    device.edit_spec(version="1.0.2")
    proc = device.proc
    assert proc is not None
    code = device.wait_for(lambda: proc.poll() is not None and [proc.returncode], 90,
                           f"the daemon to be killed at {point}")
    assert code == [HALTED_AT_FAILPOINT], code
    device.proc = None
    del device.env["KRUXOS_FAILPOINTS"]


def test_a_kill_right_after_the_store_switched_is_resolved_by_the_next_pass(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    _killed_at(device, "services.switched", "healthy")
    record = json.loads(next((device.dir / "services" / "roots").glob("*/gateway/record.json"))
                        .read_text())
    assert record["uncommitted"] and record["current"]["version"] == "1.0.2", record
    assert device.state()["service_update"]["step"] == "staged"  # the state file lags

    device.start()  # power on: the store says switched, so the update goes on from there
    confirmed = device.wait_for(lambda: _outcome(device, "confirm-services"), 60,
                                "the service update to be confirmed after the crash")
    assert confirmed["details"]["code"] == "ok", confirmed
    after = [r["action"] for r in device.decisions()]
    resumed = after[len(after) - after[::-1].index("restart-services") - 1:]
    assert "stage-services" not in resumed and "switch-services" not in resumed, after
    record = json.loads(next((device.dir / "services" / "roots").glob("*/gateway/record.json"))
                        .read_text())
    assert not record["uncommitted"] and record["current"]["version"] == "1.0.2", record
    assert device.cli("audit", "verify").returncode == 0


def test_a_kill_as_a_restore_begins_is_finished_by_the_next_pass_never_confirmed(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    _killed_at(device, "services.restoring", "gateway-fails")
    assert device.state()["failed"]["version"] == "1.0.2"
    assert device.state()["service_update"]["restoring"], device.state()

    device.start()  # the broken gateway runs again at power-on: the restore must finish
    restored = device.wait_for(lambda: [r for r in device.audit_records()
                                        if r["kind"] == "outcome"
                                        and r["action"] == "restore-services"
                                        and r["details"].get("code") == "ok"], 60,
                               "the restore to be finished after the crash")
    assert "no reboot" in restored[-1]["outcome"], restored
    assert not [r for r in device.decisions() if r["action"] == "confirm-services"]
    record = json.loads(next((device.dir / "services" / "roots").glob("*/gateway/record.json"))
                        .read_text())
    assert record["current"] is None and not record["uncommitted"], record
    assert "service_update" not in device.state()
    health = _os(device, "/health/ready")
    assert health["services"]["gateway"] == "ok", health  # the image's own gateway
    assert device.cli("audit", "verify").returncode == 0


def test_update_apply_restarts_the_gateway_instead_of_asking_to_reboot(
        make_device: Callable[..., SimDevice]) -> None:
    """Also the data copy: both versions declare the gateway's data dir; 1.0.3 migrates it on
    start and fails, and the restore puts 1.0.2's data back byte for byte before 1.0.2's
    gateway starts again (which would otherwise find 1.0.3's schema and migrate it)."""
    device = make_device()
    _on_100(device)
    boots = len(device.boots())
    data = device.dir / "service-data" / "gateway"
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway",
               "--base", "1.0.0", "--data-dir", "gateway")
    device.cli("sim", "publish", str(device.dir), "1.0.3", "--service", "gateway",
               "--behaviour", "gateway-fails", "--data-dir", "gateway")

    applied = device.cli("update", "apply", "1.0.2", "--yes", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = applied.stdout.splitlines()
    assert lines[0] == "1.0.2 is a service update: no reboot.", lines
    assert "Downloading and verifying gateway... ✓ (Ed25519, block by block)" in lines, lines
    assert "Restarting gateway... ✓" in lines and "Reboot now" not in applied.stdout, lines
    assert "Services: 1.0.2" in device.cli("update", "status").stdout
    assert (data / "schema").read_bytes() == b"1.0.2\n"  # 1.0.2 migrated it on start
    (data / "rows.bin").write_bytes(os.urandom(50_000))  # what the gateway keeps
    before = _tree(data)

    broken = device.cli("update", "apply", "1.0.3", "--yes", check=False)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "Restarting gateway... ✗" in broken.stdout, broken.stdout
    assert "1.0.3 was restored without a reboot" in broken.stderr, broken.stderr
    assert "gateway failed to start" in broken.stderr, broken.stderr
    assert len(device.boots()) == boots
    status = device.cli("update", "status").stdout
    assert "Services: 1.0.2" in status, status  # 1.0.2 runs again, its gateway restored
    assert "  gateway 1.0.2 (service update, previous: the image's own)" in status, status
    log = (device.dir / "run" / "services" / "gateway.log").read_text()
    assert "migrated gateway to 1.0.3" in log, log  # 1.0.3 did change the data
    assert _tree(data) == before  # byte for byte, and 1.0.2 found its own schema
    restored = _outcome(device, "restore-services")
    assert restored is not None, device.audit_records()[-5:]
    assert "gateway's data (gateway) put back as it was under 1.0.2" in restored["outcome"]
    copies = device.dir / "services" / "copies" / "gateway"
    assert sorted(p.name for p in copies.iterdir()) == ["1.0.0"]  # 1.0.2's was put back
    assert not (device.dir / "data" / "gateway").exists()  # never inside the data dir
    assert device.cli("audit", "verify").returncode == 0


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}
