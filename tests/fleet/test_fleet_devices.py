"""Simulated devices take turns through a real FleetLock server on a real etcd.

Two devices (``kruxos sim run``: the real daemon, a simulated bootloader and
reboots) in group ``canary`` of a server with one slot both want 1.0.1. One takes
the slot and reboots into its trial; the other waits, saying why, and takes the slot
only once the first confirmed and gave it back. A watcher polls the server the whole
time: never two holders. At the end no slot is held and every lock call is in each
device's audit trail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from reconciler.sim.run import HALTED_AT_FAILPOINT
from tests.device import SimDevice
from tests.etcd_rig import Cluster, Server, start_server

pytestmark = [pytest.mark.slow, pytest.mark.needs_tool("etcd")]


def _join_fleet(device: SimDevice, server: Server) -> None:
    layer = device.dir / "data" / "device.yaml"
    layer.write_text(layer.read_text() + "fleetLock: {group: canary}\n")
    text = device.spec.read_text().replace("  version: 1.0.0", "  version: 1.0.1")
    device.edit_spec(text=text + f"  rollout:\n    fleetLock:\n      url: {server.url}/\n")


def test_two_devices_take_turns_through_one_reboot_slot(
        etcd: Cluster, servers: list[Server], tmp_path: Path,
        make_device: Callable[..., SimDevice]) -> None:
    config = tmp_path / "fleetlock.yaml"
    config.write_text("slots: 1\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    server = servers[0]
    devices = [make_device("dev-a"), make_device("dev-b")]
    for device in devices:
        _join_fleet(device, server)

    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            groups = httpx.get(f"{server.url}/v1/status", timeout=5, trust_env=False).json()
            for group in groups.get("groups", []):
                if group.get("group") == "canary":
                    most[0] = max(most[0], len(group.get("holders", [])))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for device in devices:
            device.start()
        for device in devices:
            device.wait_status("1.0.1", "CONFIRMED", timeout=120)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert most[0] == 1, f"at most one holder at a time, and one there was: {most[0]}"

    refused = [r for d in devices for r in d.audit_records()
               if r["kind"] == "outcome" and r["action"] == "take-reboot-slot"
               and r["details"].get("code") == "unavailable"]
    assert refused, "one device was refused the slot the other held, and asked again"
    assert "409 failed_lock" in refused[0]["outcome"], refused[0]
    for device in devices:
        assert not [line for line in device.status_lines() if line.startswith("Reboot slot")]
        actions = [(r["kind"], r["action"]) for r in device.audit_records()]
        assert ("outcome", "take-reboot-slot") in actions, actions
        assert ("outcome", "release-reboot-slot") in actions, actions
        assert device.state()["fleet_lock"]["held"] is False
    status = httpx.get(f"{server.url}/v1/status", timeout=5, trust_env=False).json()
    held = [g for g in status.get("groups", []) if g.get("holders")]
    assert held == [], status


def test_a_power_cut_right_after_the_slot_was_taken_leaves_no_slot_held(
        etcd: Cluster, servers: list[Server], tmp_path: Path,
        make_device: Callable[..., SimDevice]) -> None:
    servers.append(start_server(tmp_path, etcd.urls, slots=1))
    server = servers[0]
    device = make_device("dev-cut")
    _join_fleet(device, server)
    device.env["KRUXOS_FAILPOINTS"] = "fleet.taken=kill"
    device.start()
    proc = device.proc
    assert proc is not None
    code = device.wait_for(lambda: proc.poll() is not None and [proc.returncode], 90,
                           "the daemon to be killed right after it took the slot")
    assert code == [HALTED_AT_FAILPOINT], code
    device.proc = None
    del device.env["KRUXOS_FAILPOINTS"]
    assert device.state()["fleet_lock"]["held"] is True  # taken, the reboot never came

    device.start()  # power on: another boot; the slot goes back, is taken again, used
    device.wait_status("1.0.1", "CONFIRMED", timeout=120)
    actions = [r["action"] for r in device.decisions()]
    assert actions.count("take-reboot-slot") >= 2 and "release-reboot-slot" in actions, actions
    status = httpx.get(f"{server.url}/v1/status", timeout=5, trust_env=False).json()
    assert [g for g in status.get("groups", []) if g.get("holders")] == [], status
    assert device.state()["fleet_lock"]["held"] is False
