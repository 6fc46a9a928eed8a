"""``kruxos fleetlock serve`` against a real etcd on loopback, over real HTTP.

Every server is a real process (``tests/etcd_rig.py``); the tests speak Zincati's
FleetLock protocol to it and read the semaphores straight from etcd.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.fleet.store import PREFIX, Etcd
from tests.etcd_rig import Cluster, Server, start_cluster, start_server
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.needs_tool("etcd")]

PROTOCOL = {"fleet-lock-protocol": "true"}
ADMIN_TOKEN = "admin-" + "a1b2c3d4e5f6a7b8c9d0"
CLIENT_TOKEN = "client-" + "0f1e2d3c4b5a69788796"


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    """Three members, for the fault tests (a test may kill some)."""
    cluster = start_cluster(tmp_path / "cluster", members=3)
    try:
        yield cluster
    finally:
        cluster.stop()


def call(server: Server, endpoint: str, device: str, group: str, *,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{endpoint}", timeout=30, trust_env=False,
                      headers=PROTOCOL if headers is None else headers,
                      json={"client_params": {"id": device, "group": group}})


def holders(etcd: Cluster, group: str) -> dict[str, Any]:
    stored = Etcd(etcd.alive_urls()).get(PREFIX + group).value
    assert stored is not None, f"no key for group {group}"
    found: dict[str, Any] = stored["holders"]
    return found


def stored(etcd: Cluster, group: str) -> dict[str, Any]:
    value = Etcd(etcd.alive_urls()).get(PREFIX + group).value
    assert value is not None
    return value


def write_config(path: Path, text: str) -> None:
    """Replace the file at once (a new inode), as an editor or a config manager does."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def refusal(answer: httpx.Response, status: int, kind: str) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"kind", "value"} and body["kind"] == kind, body
    value: str = body["value"]
    assert isinstance(value, str) and value
    return value


def test_the_protocol_answers_as_zincati_expects(etcd: Cluster, servers: list[Server],
                                                 tmp_path: Path) -> None:
    servers.append(start_server(tmp_path, etcd.urls, slots=1))
    server = servers[0]
    ok = call(server, "pre-reboot", "dev-a", "proto")
    assert ok.status_code == 200, ok.text
    assert holders(etcd, "proto").keys() == {"dev-a"}
    assert call(server, "pre-reboot", "dev-a", "proto").status_code == 200  # recursive
    assert "all 1 slots" in refusal(call(server, "pre-reboot", "dev-b", "proto"), 409,
                                    "failed_lock")
    assert call(server, "steady-state", "dev-b", "proto").status_code == 200  # not held: fine
    assert holders(etcd, "proto").keys() == {"dev-a"}
    assert call(server, "steady-state", "dev-a", "proto").status_code == 200
    assert call(server, "steady-state", "dev-a", "proto").status_code == 200  # idempotent
    assert holders(etcd, "proto") == {}
    assert call(server, "pre-reboot", "dev-b", "proto").status_code == 200

    # The header is required, and must say true.
    refusal(call(server, "pre-reboot", "dev-c", "proto", headers={}), 400,
            "missing_protocol_header")
    refusal(call(server, "steady-state", "dev-c", "proto",
                 headers={"fleet-lock-protocol": "false"}), 400, "missing_protocol_header")
    # Groups outside ^[a-zA-Z0-9.-]+$ are refused, and no key is made for them.
    for bad in ("with space", "", "under_score", "slash/x", "ünï", "trailing\n"):
        refusal(call(server, "pre-reboot", "dev-c", bad), 400, "invalid_group")
    assert Etcd(etcd.urls).get(PREFIX + "under_score").value is None
    # Bodies that are not the protocol's.
    post = f"{server.url}/v1/pre-reboot"
    refusal(httpx.post(post, headers=PROTOCOL, content=b"{not json", trust_env=False), 400,
            "bad_request")
    refusal(httpx.post(post, headers=PROTOCOL, json=["a"], trust_env=False), 400, "bad_request")
    refusal(httpx.post(post, headers=PROTOCOL, json={"id": "x"}, trust_env=False), 400,
            "bad_request")
    refusal(httpx.post(post, headers=PROTOCOL, json={"client_params": {"group": "proto"}},
                       trust_env=False), 400, "bad_request")
    refusal(httpx.post(post, headers=PROTOCOL, json={"client_params": {"id": 7,
                                                                       "group": "proto"}},
                       trust_env=False), 400, "bad_request")
    # An oversize body is refused without being read.
    huge = {"client_params": {"id": "x" * 20_000, "group": "proto"}}
    refusal(httpx.post(post, headers=PROTOCOL, json=huge, trust_env=False), 413,
            "body_too_large")
    refusal(httpx.post(f"{server.url}/v1/elsewhere", headers=PROTOCOL, json={},
                       trust_env=False), 404, "not_found")
    # After all that the server still serves, and the semaphore is as it was.
    assert holders(etcd, "proto").keys() == {"dev-b"}
    status = httpx.get(f"{server.url}/v1/status", trust_env=False).json()
    group = next(g for g in status["groups"] if g["group"] == "proto")
    assert group["slots"] == 1 and [h["id"] for h in group["holders"]] == ["dev-b"]
    assert group["holders"][0]["age"] >= 0
    assert "dev-b holds a slot" in server.output()


def test_two_replicas_never_grant_more_than_the_slots(etcd: Cluster, servers: list[Server],
                                                      tmp_path: Path) -> None:
    """Threads hammer pre-reboot on two replicas; etcd never holds more than N holders."""
    slots, devices = 3, 24
    config = tmp_path / "fleetlock.yaml"
    write_config(config, f"slots: {slots}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config, name="r1"))
    servers.append(start_server(tmp_path, etcd.urls, config=config, name="r2"))
    inside = 0
    most_inside = 0
    most_in_etcd = 0
    problems: list[str] = []
    lock = threading.Lock()
    rebooted: set[str] = set()

    def device(name: str) -> None:
        nonlocal inside, most_inside, most_in_etcd
        rng = random.Random(name)
        try:
            while True:
                answer = call(rng.choice(servers), "pre-reboot", name, "hammer")
                if answer.status_code == 200:
                    break
                if answer.json()["kind"] != "failed_lock":
                    problems.append(f"{name}: {answer.text}")
                    return
                time.sleep(rng.uniform(0.02, 0.08))  # the device's own retry interval
            with lock:
                inside += 1
                most_inside = max(most_inside, inside)
            time.sleep(rng.uniform(0.05, 0.15))  # the device's simulated reboot
            held = holders(etcd, "hammer")  # look at etcd while holding
            with lock:
                most_in_etcd = max(most_in_etcd, len(held))
                rebooted.add(name)
                inside -= 1
            if name not in held:
                problems.append(f"{name} was granted a slot etcd does not record")
            answer = call(rng.choice(servers), "steady-state", name, "hammer")
            if answer.status_code != 200:
                problems.append(f"{name} steady-state: {answer.text}")
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=device, args=(f"dev-{i:02d}",)) for i in range(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a device never got its slot"
    assert problems == []
    assert rebooted == {f"dev-{i:02d}" for i in range(devices)}
    assert most_in_etcd <= slots and most_inside <= slots, (most_in_etcd, most_inside)
    assert most_in_etcd >= 2, "the devices never overlapped: the test proved nothing"
    assert holders(etcd, "hammer") == {}
    assert stored(etcd, "hammer")["slots"] == slots
    for replica in servers:  # both replicas granted slots: the bound held between them
        assert "holds a slot" in replica.output(), replica.output()[-1000:]


def test_the_slot_count_of_the_config_applies_on_the_next_write(
        etcd: Cluster, servers: list[Server], tmp_path: Path) -> None:
    config = tmp_path / "fleetlock.yaml"
    write_config(config, "slots: 5\ngroups:\n  stuck: {slots: 1}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    server = servers[0]
    assert call(server, "pre-reboot", "a", "stuck").status_code == 200
    refusal(call(server, "pre-reboot", "b", "stuck"), 409, "failed_lock")
    assert stored(etcd, "stuck")["slots"] == 1

    # Raised: the key made with 1 slot takes the new count at the next write.
    write_config(config, "slots: 5\ngroups:\n  stuck: {slots: 2}\n")
    assert call(server, "pre-reboot", "b", "stuck").status_code == 200
    assert stored(etcd, "stuck")["slots"] == 2
    assert holders(etcd, "stuck").keys() == {"a", "b"}

    # Lowered below the holders: nobody new until enough of them left.
    write_config(config, "slots: 5\ngroups:\n  stuck: {slots: 1}\n")
    refusal(call(server, "pre-reboot", "c", "stuck"), 409, "failed_lock")
    assert stored(etcd, "stuck")["slots"] == 1  # the refusal wrote the new count
    assert call(server, "steady-state", "a", "stuck").status_code == 200
    refusal(call(server, "pre-reboot", "c", "stuck"), 409, "failed_lock")
    assert call(server, "steady-state", "b", "stuck").status_code == 200
    assert call(server, "pre-reboot", "c", "stuck").status_code == 200

    # A group the config does not name takes the default; a broken file keeps the last good.
    write_config(config, "slots: [\n")
    assert call(server, "pre-reboot", "x", "other").status_code == 200
    assert stored(etcd, "other")["slots"] == 5
    assert "keeping the last good one" in server.output()


def test_a_holder_past_its_ttl_is_released_and_recorded(
        etcd: Cluster, servers: list[Server], tmp_path: Path) -> None:
    config = tmp_path / "fleetlock.yaml"
    write_config(config, "slots: 1\ngroups:\n  ttl: {ttl: 1.5}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    server = servers[0]
    assert call(server, "pre-reboot", "dead", "ttl").status_code == 200
    refusal(call(server, "pre-reboot", "alive", "ttl"), 409, "failed_lock")
    wait_for(lambda: call(server, "pre-reboot", "alive", "ttl").status_code == 200, 30,
             "the dead holder's TTL to free its slot", every=0.2)
    assert holders(etcd, "ttl").keys() == {"alive"}
    released = stored(etcd, "ttl")["released"]
    assert [r["id"] for r in released] == ["dead"]
    assert "TTL" in released[0]["why"] and released[0]["at"] - released[0]["since"] > 1.5
    assert "dead released: held longer than the TTL" in server.output()
    # The device that lost its slot is refused like anyone else.
    refusal(call(server, "pre-reboot", "dead", "ttl"), 409, "failed_lock")


def test_force_release_and_client_auth_need_their_tokens(
        etcd: Cluster, servers: list[Server], tmp_path: Path) -> None:
    config = tmp_path / "fleetlock.yaml"
    write_config(config, f"slots: 1\nadminToken: {ADMIN_TOKEN}\nclientToken: {CLIENT_TOKEN}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    server = servers[0]
    client = {**PROTOCOL, "Authorization": f"Bearer {CLIENT_TOKEN}"}
    refusal(call(server, "pre-reboot", "a", "auth"), 401, "unauthorized")
    refusal(call(server, "pre-reboot", "a", "auth",
                 headers={**PROTOCOL, "Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert call(server, "pre-reboot", "a", "auth", headers=client).status_code == 200
    refusal(call(server, "pre-reboot", "b", "auth", headers=client), 409, "failed_lock")
    assert httpx.get(f"{server.url}/v1/status", trust_env=False).status_code == 401

    release = f"{server.url}/v1/force-release"
    body = {"group": "auth", "id": "a"}
    refusal(httpx.post(release, json=body, trust_env=False), 401, "unauthorized")
    refusal(httpx.post(release, json=body, trust_env=False, headers={
        "Authorization": f"Bearer {CLIENT_TOKEN}"}), 401, "unauthorized")
    assert holders(etcd, "auth").keys() == {"a"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answer = httpx.post(release, json=body, trust_env=False, headers=admin)
    assert answer.status_code == 200, answer.text
    refusal(httpx.post(release, json=body, trust_env=False, headers=admin), 404, "not_held")
    assert holders(etcd, "auth") == {}
    assert stored(etcd, "auth")["released"][-1]["why"] == "released by an operator"
    assert call(server, "pre-reboot", "b", "auth", headers=client).status_code == 200
    status = httpx.get(f"{server.url}/v1/status", trust_env=False, headers=admin).json()
    assert [h["id"] for h in next(g for g in status["groups"]
                                  if g["group"] == "auth")["holders"]] == ["b"]
    assert ADMIN_TOKEN not in server.output() and CLIENT_TOKEN not in server.output()

    # Without an adminToken in its config a server releases nothing by force.
    write_config(config, "slots: 1\n")
    refusal(httpx.post(release, json={"group": "auth", "id": "b"}, trust_env=False,
                       headers=admin), 403, "forbidden")
    assert holders(etcd, "auth").keys() == {"b"}


def test_a_killed_member_of_three_leaves_the_server_answering(
        cluster3: Cluster, servers: list[Server], tmp_path: Path) -> None:
    servers.append(start_server(tmp_path, cluster3.urls, slots=1))
    server = servers[0]
    assert call(server, "pre-reboot", "a", "quorum").status_code == 200
    cluster3.kill(0)  # the endpoint the server tried first
    refusal(call(server, "pre-reboot", "b", "quorum"), 409, "failed_lock")
    assert call(server, "steady-state", "a", "quorum").status_code == 200
    assert call(server, "pre-reboot", "b", "quorum").status_code == 200
    assert holders(cluster3, "quorum").keys() == {"b"}
    cluster3.kill(1)  # and once quorum is lost, the server says so instead of guessing
    refusal(call(server, "pre-reboot", "c", "quorum"), 503, "store_unavailable")
