"""The device's reboot slot steps (:mod:`reconciler.fleet.device`) on a real server.

A simulated device's configuration (``kruxos sim init``), its real state file, the
real server replica on a real etcd: a slot taken is recorded for this boot; the
fence right before a reboot passes while the slot is the device's and fails, without
a reboot, once a person force-released it and another device took it; a slot given
back is recorded for this boot; a refusal is recorded with the server's words.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from reconciler.actions import ReleaseRebootSlot, TakeRebootSlot
from reconciler.config import load_device, rollout_id
from reconciler.errors import TemporaryError
from reconciler.fleet.client import FleetLockClient
from reconciler.fleet.device import FleetSlots, SlotLost
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore
from tests.device import SimDevice
from tests.etcd_rig import Cluster, Server, start_server

pytestmark = [pytest.mark.slow, pytest.mark.needs_tool("etcd")]

ADMIN = "admin-" + "9f8e7d6c5b4a39281706"


def _policy(url: str) -> UpdatePolicy:
    return UpdatePolicy.model_validate({
        "apiVersion": "kruxos.io/v1", "kind": "UpdatePolicy", "metadata": {"name": "t"},
        "spec": {"version": "1.0.1", "channel": {"url": "http://127.0.0.1:8080/"},
                 "rollout": {"fleetLock": {"url": url}}}})


def test_take_fence_and_give_back_as_the_state_file_records_them(
        etcd: Cluster, servers: list[Server], tmp_path: Path,
        make_device: Callable[..., SimDevice]) -> None:
    config = tmp_path / "fleetlock.yaml"
    config.write_text(f"slots: 1\nadminToken: {ADMIN}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    url = servers[0].url
    sim = make_device("dev-f")
    sim.edit_spec(text=sim.spec.read_text() + f"  rollout:\n    fleetLock:\n      url: {url}/\n")
    device = load_device(sim.config)
    store = StateStore(device.data_dir)
    slots = FleetSlots(device, store, lambda: datetime.now(UTC), lambda: "boot-1")
    policy = _policy(url + "/")

    assert "reboot slot taken (group default" in slots.take(
        TakeRebootSlot("default", "1.0.1", "r"), policy)
    record = store.section("fleet_lock")
    assert (record["held"], record["taken_boot"], record["version"]) == (True, "boot-1", "1.0.1")
    assert slots.fence("1.0.1", policy) == "still holds its reboot slot (group default)"

    # a person force-releases it and another device takes the only slot: no reboot
    me = rollout_id(device)
    forced = httpx.post(f"{url}/v1/force-release", json={"group": "default", "id": me},
                        headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
                        trust_env=False)
    assert forced.status_code == 200, forced.text
    assert FleetLockClient(url, "other-device", "default").pre_reboot().ok
    with pytest.raises(SlotLost, match="was lost .*409 failed_lock.*not rebooting"):
        slots.fence("1.0.1", policy)
    record = store.section("fleet_lock")
    assert record["held"] is False and "failed_lock" in record["answer"]
    with pytest.raises(TemporaryError, match="no reboot slot"):
        slots.take(TakeRebootSlot("default", "1.0.1", "r"), policy)

    assert FleetLockClient(url, "other-device", "default").steady_state().ok
    slots.take(TakeRebootSlot("default", "1.0.1", "r"), policy)
    # after the reboot (another boot id) the slot goes back, even with no spec at all
    after = FleetSlots(device, store, lambda: datetime.now(UTC), lambda: "boot-2")
    assert after.release(ReleaseRebootSlot("default", "r"), None) == \
        "reboot slot given back (group default)"
    record = store.section("fleet_lock")
    assert (record["held"], record["released_boot"]) == (False, "boot-2")
    assert httpx.get(f"{url}/v1/status", timeout=10, trust_env=False).json()["groups"][0][
        "holders"] == []
