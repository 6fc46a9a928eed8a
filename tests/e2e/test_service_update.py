"""A service update end to end on the simulated device: no reboot, one service restarted.

Each test boots a device with ``kruxos sim run``, moves it to 1.0.1 by a slot
update, publishes a service-only release (``kruxos sim publish DIR VERSION
--service gateway``: 1.0.1's root image, a new gateway artifact) and edits the
spec to it. The simulated OS runs the gateway from its artifact as a process of
its own (``GET /services`` lists the pids), so the test sees the one service
restart, the OS and the boot count untouched, and the health answer's
``services`` map decide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from reconciler.sim.device import OS_PORT
from reconciler.sim.run import ports
from tests.device import SimDevice


def _on_101(device: SimDevice) -> None:
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED", timeout=90)
    device.wait_for(lambda: device.decisions("nothing") and "runs 1.0.1" in
                    device.decisions("nothing")[-1]["reason"], 60, "1.0.1 settled")


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
    _on_101(device)
    boots, os_pid = len(device.boots()), _os(device, "/services")["os_pid"]
    assert _os(device, "/services")["pids"] == {}  # the image's own gateway runs

    published = device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway")
    assert "service update, no reboot" in published.stdout
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
    assert "Services: 1.0.2 (service update on 1.0.1, no reboot)" in status, status
    assert device.status_json()["service_release"] == "1.0.2"
    assert device.cli("audit", "verify").returncode == 0


def test_a_broken_service_release_is_restored_without_a_reboot_and_blocked(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device()
    _on_101(device)
    boots = len(device.boots())
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--service", "gateway",
               "--behaviour", "gateway-fails")
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
    assert "Version: 1.0.1" in status and "1.0.2 was rolled back" in status, status
    assert device.cli("audit", "verify").returncode == 0
