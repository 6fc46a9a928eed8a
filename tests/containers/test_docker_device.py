"""A ``runtime: docker`` device on a real engine, driven by spec edits through ``kruxos daemon``.

One dockerd and one registry for the module (``tests/container_rig.py``); real
images built with ``docker import`` and pushed; a real signed channel served over
HTTP on 127.0.0.1. Each test is its own device: its own data dir, container name,
named volume and health port, so the tests share the engine and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from reconciler.config import load_device
from reconciler.containers import ContainerRuntime, own_container_ids
from reconciler.observed import ChannelView
from reconciler.release.channel import add_release, init_channel, sign_channel
from reconciler.release.keys import generate_keypair
from tests.cli_contract import check
from tests.container_rig import (
    ENGINE,
    ENGINE_TOOLS,
    Engine,
    audit_records,
    engine_env,
    free_port,
    last_outcome,
)
from tests.httpserver import ChannelServer
from tests.waiting import wait_for

pytestmark = pytest.mark.needs_tool(*ENGINE_TOOLS[ENGINE])

KRUXOS = [sys.executable, "-m", "reconciler.cli.main"]
SECRET = "vault-passphrase-of-the-test-51c2e9"
VERSIONS = {"1.0.0": True, "1.0.1": True, "1.0.2": False, "1.1.0": True}


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, str]:
    """Each version's ``REPOSITORY@sha256:...`` in the registry (1.0.2 never answers ready;
    1.0.3's entry point does not exist, so it cannot start)."""
    repo = f"{engine.registry}/kruxos"
    built = {v: engine.build(repo, v, healthy) for v, healthy in VERSIONS.items()}
    built["1.0.3"] = engine.build(repo, "1.0.3", entry="/missing")
    return built


class DockerDevice:
    """One device: its config layers, secrets, spec, signed channel and daemon process."""

    def __init__(self, root: Path, engine: Engine, images: dict[str, str], name: str) -> None:
        self.root, self.engine, self.images, self.name = root, engine, images, name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        generate_keypair(root / "keys", "release")
        (root / "root.img").write_bytes(b"\0" * 4096)
        self.channel = root / "channel"
        init_channel(self.channel, "stable")
        self.server = ChannelServer(self.channel)
        secrets = root / "container.env"
        secrets.write_text(f"KRUXOS_VAULT_PASSPHRASE={SECRET}\n")
        secrets.chmod(0o600)
        self._yaml(root / "device.yaml", {"trustedKeys": ["keys/release.pub"],
                                          "dataDir": "data", "overlay": "layer.yaml",
                                          "spec": "spec.yaml", "resync": "1m"})
        self._yaml(root / "layer.yaml", {"runtime": "docker", "container": {
            "engine": engine.url, "name": name, "repository": f"{engine.registry}/kruxos",
            "volumes": {f"{name}-data": "/data/kruxos"}, "network": "host",
            "environment": {"KRUXOS_PORT": str(self.port)}, "secretsFile": "container.env",
            "capabilities": {"add": ["ALL"], "drop": ["SYS_RESOURCE"]}, "stopTimeout": 5}})

    @staticmethod
    def _yaml(path: Path, doc: Any) -> None:
        with path.open("w") as out:
            YAML(typ="safe").dump(doc, out)

    def publish(self, *versions: str, images: dict[str, str] | None = None) -> None:
        for version in versions:
            add_release(self.channel, self.root / "root.img", version, [f"{version}"],
                        container_image=(images or self.images)[version])
        sign_channel(self.channel, [self.root / "keys" / "release.key"])

    def spec(self, version: str, timeout: str = "20s", automatic: bool = True,
             closed: bool = False) -> None:
        """The spec; ``closed``: a maintenance window that is not open now (12 h away)."""
        rollout = {}
        if closed:
            start = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
            rollout = {"windows": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                    "start": start, "duration": "5m"}]}
        self._yaml(self.root / "spec.yaml", {
            "apiVersion": "kruxos.io/v1", "kind": "UpdatePolicy", "metadata": {"name": "t"},
            "spec": {"version": version, "channel": {"url": self.server.url + "/"},
                     "health": {"url": f"http://127.0.0.1:{self.port}/health/ready",
                                "interval": "1s", "timeout": timeout},
                     "rollback": {"automatic": automatic}, "rollout": rollout}})

    def start(self, **env: str) -> None:
        with (self.root / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen([*KRUXOS, "--config", str(self.root / "device.yaml"),
                                          "daemon"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**engine_env(), **env},
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``kruxos ARGS`` on this device, held to the command's contract (exit codes, JSON)."""
        result = subprocess.run([*KRUXOS, "--config", str(self.root / "device.yaml"), *args],
                                capture_output=True, text=True, timeout=90, env=engine_env())
        check(list(args), result)
        return result

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.root / "data")

    def outcome(self, action: str, after: int = 0) -> dict[str, Any] | None:
        return last_outcome(self.records(), action, after)

    def wait_outcome(self, action: str, after: int = 0, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: self.outcome(action, after), timeout, f"a {action} outcome",
                        context=self.tail,
                        abort=lambda: None if self.proc is None or self.proc.poll() is None
                        else f"the daemon exited {self.proc.returncode}: {self.tail()}")

    def last_seq(self) -> int:
        records = self.records()
        return int(records[-1]["seq"]) if records else 0

    def tail(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def container(self, name: str | None = None) -> Any:
        return self.engine.client.containers.get(name or self.name)

    def volume_file(self, name: str) -> str:
        """A file of the named volume, read through the engine's own mount point."""
        volume = self.engine.client.volumes.get(f"{self.name}-data")
        return (Path(volume.attrs["Mountpoint"]) / name).read_text()

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "data" / "state.json").read_text()))

    def close(self) -> None:
        self.stop()
        self.server.stop()
        for container in self.engine.client.containers.list(all=True):
            if container.name.startswith(self.name):
                container.remove(force=True)


@pytest.fixture
def make(engine: Engine, images: dict[str, str],
         tmp_path: Path) -> Iterator[Any]:
    made: list[DockerDevice] = []

    def build(name: str) -> DockerDevice:
        made.append(DockerDevice(tmp_path / name, engine, images, name))
        (tmp_path / name).mkdir(exist_ok=True)
        return made[-1]

    yield build
    for device in made:
        device.close()


def _installed(device: DockerDevice, version: str = "1.0.0") -> int:
    """The daemon installs ``version`` on a device with no container yet; the last seq."""
    device.spec(version)
    device.start()
    confirmed = device.wait_outcome("confirm-container")
    assert confirmed["details"]["code"] == "ok", confirmed
    return device.last_seq()


def _runs(device: DockerDevice, version: str) -> bool:
    container = device.container()
    image = device.engine.client.images.get(container.attrs["Image"])
    return container.status == "running" and device.images[version] in \
        image.attrs["RepoDigests"]


def _health(device: DockerDevice) -> int:
    return httpx.get(f"http://127.0.0.1:{device.port}/health/ready", timeout=5,
                     trust_env=False).status_code


def _everything_written(device: DockerDevice, *outputs: str) -> str:
    texts = [device.tail(), *outputs]
    texts += [p.read_text(errors="replace") for p in (device.root / "data").rglob("*")
              if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", "")]
    return "\n".join(texts)


def test_an_update_is_confirmed_and_the_named_volume_keeps_its_data_across_recreations(
        make: Any) -> None:
    device = make("kx-update")
    device.publish("1.0.0", "1.0.1", "1.1.0")
    seq = _installed(device)
    assert _runs(device, "1.0.0") and _health(device) == 200
    first_image = device.container().attrs["Image"]
    # run inside the product's container, kruxos would know it and not replace itself
    inside = device.container().exec_run(["cat", "/proc/self/mountinfo"])
    assert inside.exit_code == 0, inside
    assert own_container_ids(inside.output.decode()) == {device.container().id}
    assert own_container_ids() == set()  # this test runs on the host
    seen = own_container_ids(inside.output.decode())
    with pytest.MonkeyPatch.context() as patch:  # as if this process ran in that container
        patch.setattr("reconciler.containers.own_container_ids", lambda: seen)
        view = ContainerRuntime(load_device(device.root / "device.yaml")).view(
            ChannelView(), {})
    assert view.engine_error is not None and view.engine_error.startswith(
        f"kruxos runs inside the container it would replace ({device.name}, "), view

    device.spec("1.0.1")
    device.wait_outcome("confirm-container", seq)
    assert _runs(device, "1.0.1") and _health(device) == 200
    names = {c.name for c in device.engine.client.containers.list(all=True)}
    assert f"{device.name}-previous" not in names  # the old container removed at the confirm
    device.engine.client.images.get(first_image)  # its image kept until the next confirm
    status = device.cli("update", "status")
    assert f"Container: {device.name} runs 1.0.1" in status.stdout, status.stdout
    assert "Runtime: docker" in status.stdout, status.stdout

    seq = device.last_seq()
    device.spec("1.1.0")
    device.wait_outcome("confirm-container", seq)
    assert _runs(device, "1.1.0")
    with pytest.raises(Exception, match="No such image"):
        device.engine.client.images.get(first_image)  # dropped at the confirm after next
    starts = device.volume_file("starts.log").split("\n")
    assert starts[:3] == ["1.0.0 started", "1.0.1 started", "1.1.0 started"], starts
    actions = [r["action"] for r in device.records() if r["kind"] == "decision"]
    for step in ("pull-image", "swap-container", "probe-container", "confirm-container"):
        assert step in actions, actions
    # the secret reached the container, and nothing the device wrote or printed holds it
    assert device.volume_file("vault.sha256").strip() == \
        hashlib.sha256(SECRET.encode()).hexdigest()
    inspect = device.cli("update", "status", "--json")
    assert SECRET not in _everything_written(device, status.stdout, status.stderr,
                                             inspect.stdout, inspect.stderr)
    assert device.cli("audit", "verify").returncode == 0


def test_a_broken_release_is_rolled_back_to_the_old_container_and_blocked(make: Any) -> None:
    device = make("kx-broken")
    device.publish("1.0.0", "1.0.2")
    seq = _installed(device)
    old = device.container().id
    device.spec("1.0.2", timeout="3s")
    rolled = device.wait_outcome("rollback-container", seq)
    assert rolled["details"]["code"] == "ok", rolled
    decision = next(r for r in device.records() if r["seq"] == rolled["decision"])
    assert "Health check timeout" in decision["reason"], decision
    assert _runs(device, "1.0.0") and device.container().id == old  # the same container
    assert _health(device) == 200
    names = {c.name for c in device.engine.client.containers.list(all=True)}
    assert names & {device.name, f"{device.name}-previous"} == {device.name}, names
    blocked = wait_for(lambda: [r for r in device.records() if r["action"] == "blocked"
                                and "1.0.2 was rolled back" in r["reason"]], 30, "blocked")
    assert blocked and device.state()["failed"]["version"] == "1.0.2"
    assert "container_update" not in device.state()
    assert "1.0.2 started" in device.volume_file("starts.log")  # it did run, and was judged


def test_a_failed_start_leaves_no_stray_container_and_the_old_one_runs_again(
        make: Any) -> None:
    device = make("kx-nostart")
    device.publish("1.0.0", "1.0.3")
    seq = _installed(device)
    device.spec("1.0.3")
    rolled = device.wait_outcome("rollback-container", seq)
    decision = next(r for r in device.records() if r["seq"] == rolled["decision"])
    assert "the new container did not start" in decision["reason"], decision
    swap = device.outcome("swap-container", seq)
    assert swap is not None and swap["details"]["code"] == "refused", swap
    pause = datetime.fromisoformat(rolled["time"]) - datetime.fromisoformat(swap["time"])
    assert pause < timedelta(seconds=10), pause  # rolled back at once, not after a retry
    assert _runs(device, "1.0.0")
    mine = [c for c in device.engine.client.containers.list(all=True)
            if c.name.startswith(device.name)]
    assert [(c.name, c.status) for c in mine] == [(device.name, "running")], mine


def test_a_moved_tag_changes_nothing_and_an_unsigned_digest_is_never_run(
        make: Any, engine: Engine) -> None:
    device = make("kx-tag")
    device.publish("1.0.0", "1.0.1")
    seq = _installed(device)
    repo = f"{engine.registry}/kruxos"
    evil = engine.build(repo, "evil")
    engine.client.images.pull(evil).tag(repo, "1.0.1")  # the tag moves to an unsigned image
    engine.push(repo, "1.0.1")
    engine.client.images.remove(evil, force=True)
    device.spec("1.0.1")
    device.wait_outcome("confirm-container", seq)
    assert _runs(device, "1.0.1")
    image = engine.client.images.get(device.container().attrs["Image"])
    assert evil not in image.attrs["RepoDigests"]

    # a release signed with a digest the registry does not hold is never swapped in
    seq = device.last_seq()
    device.publish("1.1.0", images={"1.1.0": f"{repo}@sha256:{'0' * 64}"})
    device.spec("1.1.0")
    pulled = device.wait_outcome("pull-image", seq)
    assert pulled["details"]["code"] == "unavailable", pulled
    assert _runs(device, "1.0.1")
    assert not [r for r in device.records() if r["seq"] > seq
                and r["action"] == "swap-container"]


def test_a_kill_mid_swap_is_finished_by_the_next_daemon(make: Any) -> None:
    device = make("kx-kill")
    device.publish("1.0.0", "1.0.1")
    seq = _installed(device)
    device.stop()
    device.spec("1.0.1")
    device.start(KRUXOS_FAILPOINTS="container.renamed=kill")
    proc = device.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, 60, "the daemon to be killed mid-swap",
             context=device.tail)
    assert proc.returncode == -signal.SIGKILL
    assert device.state()["container_update"]["step"] == "swapping"
    names = {c.name for c in device.engine.client.containers.list(all=True)}
    assert f"{device.name}-previous" in names and device.name not in names, names
    device.start()
    device.wait_outcome("confirm-container", seq)
    assert _runs(device, "1.0.1")
    assert device.volume_file("starts.log").split("\n")[:2] == ["1.0.0 started",
                                                                 "1.0.1 started"]
    assert os.path.exists(device.root / "data" / "state.json")


def test_a_person_confirms_a_trial_and_rolls_back_on_trial_and_after_a_confirm(
        make: Any, engine: Engine) -> None:
    device = make("kx-hand")
    device.publish("1.0.0", "1.0.1", "1.1.0")
    _installed(device)
    nothing = device.cli("update", "confirm")
    assert nothing.returncode == 1, nothing
    assert "nothing to confirm: container kx-hand runs 1.0.0" in nothing.stderr, nothing

    # on trial with automatic rollback off: a person confirms it
    seq = device.last_seq()
    device.spec("1.0.1", automatic=False)
    device.wait_outcome("swap-container", seq)
    wait_for(lambda: [r for r in device.records() if r["seq"] > seq
                      and "a person decides" in r.get("reason", "")], 30, "the trial to wait")
    confirmed = device.cli("update", "confirm", "--json")
    assert confirmed.returncode == 0, confirmed
    assert json.loads(confirmed.stdout) == {"ok": True, "confirmed": "1.0.1",
                                            "container": "kx-hand"}
    assert "container_update" not in device.state() and _runs(device, "1.0.1")
    names = {c.name for c in engine.client.containers.list(all=True)}
    assert f"{device.name}-previous" not in names, names
    status = device.cli("update", "status")
    assert "Kept for rollback: the image of 1.0.0 (sha256:" in status.stdout, status.stdout
    shown = json.loads(device.cli("update", "status", "--json").stdout)["container"]
    assert shown["kept_version"] == "1.0.0" and shown["kept_image"].startswith("sha256:")

    # the confirmed update undone: 1.0.0 again from the image kept since the confirm
    undo = device.cli("update", "rollback", "--json")
    assert undo.returncode == 0, undo
    assert json.loads(undo.stdout) == {"ok": True, "container_rollback": True,
                                       "rolled_back": "1.0.1",
                                       "runs": "1.0.0", "container": "kx-hand",
                                       "reboot": False, "blocked": "1.0.1"}
    assert _runs(device, "1.0.0") and _health(device) == 200
    assert device.state()["failed"]["version"] == "1.0.1"
    with pytest.raises(Exception, match="No such image"):
        engine.client.images.get(device.images["1.0.1"])  # the blocked release's digest
    again = device.cli("update", "rollback")
    assert again.returncode == 1 and "keeps no image it ran before" in again.stderr, again

    # a rollback by hand while the next release is on trial: the kept container comes back
    seq = device.last_seq()
    device.spec("1.1.0", automatic=False)
    device.wait_outcome("swap-container", seq)
    assert _runs(device, "1.1.0")
    kept = device.container(f"{device.name}-previous").id
    back = device.cli("update", "rollback")
    assert back.returncode == 0, back
    assert back.stdout.splitlines() == [
        "Rolling back container kx-hand: 1.1.0 → 1.0.0. No reboot.",
        "KruxOS 1.0.0 runs again in container kx-hand, no reboot; 1.1.0 is blocked until "
        "the desired version changes."], back.stdout
    assert _runs(device, "1.0.0") and device.container().id == kept
    assert device.state()["failed"]["version"] == "1.1.0"
    assert device.volume_file("starts.log").split("\n")[:5] == [
        "1.0.0 started", "1.0.1 started", "1.0.0 started", "1.1.0 started", "1.0.0 started"]
    assert device.cli("audit", "verify").returncode == 0


def test_update_apply_pulls_and_swaps_on_a_container_device_and_says_how_it_ended(
        make: Any) -> None:
    device = make("kx-apply")
    device.publish("1.0.0", "1.0.1", "1.0.2")
    _installed(device)
    device.spec("1.0.0", timeout="3s", closed=True)

    held = device.cli("update", "apply", "1.0.1", "--json")  # the window is closed: it waits
    assert held.returncode == 0, held
    assert json.loads(held.stdout) == {"ok": True, "version": "1.0.1", "container": "kx-apply",
                                       "confirmed": False}
    assert _runs(device, "1.0.0")
    held = device.cli("update", "cancel")  # the pulled release is not swapped in after all
    assert held.returncode == 0, held
    assert held.stdout.startswith("Update held: container kx-apply keeps what it runs; "
                                  "1.0.0 stays until the spec changes"), held.stdout
    again = device.cli("update", "cancel")
    assert again.returncode == 1 and "nothing to cancel: container kx-apply runs 1.0.0" in \
        again.stderr, again

    now = device.cli("update", "apply", "1.0.1", "--yes")  # a person says now
    assert now.returncode == 0, now
    assert now.stdout.splitlines()[-3:] == [
        "Swapping container kx-apply: 1.0.0 → 1.0.1... ✓", "Health check... ✓",
        "KruxOS 1.0.1 runs in container kx-apply, confirmed without a reboot."], now.stdout
    assert _runs(device, "1.0.1")

    broken = device.cli("update", "apply", "1.0.2", "--yes")
    assert broken.returncode == 1, broken
    assert broken.stdout.splitlines() == [
        "Pulling 1.0.2 by its signed digest... ✓",
        "Swapping container kx-apply: 1.0.1 → 1.0.2... ✓", "Health check... ✗"], broken.stdout
    assert "1.0.2 was rolled back: kx-apply runs 1.0.1 again" in broken.stderr, broken.stderr
    assert _runs(device, "1.0.1") and device.state()["failed"]["version"] == "1.0.2"


def test_a_kill_in_a_hand_rollback_after_a_confirm_is_finished_by_the_next_daemon(
        make: Any, engine: Engine) -> None:
    device = make("kx-undo")
    device.publish("1.0.0", "1.0.1")
    seq = _installed(device)
    device.spec("1.0.1")
    device.wait_outcome("confirm-container", seq)
    device.stop()
    device.start(KRUXOS_FAILPOINTS="container.new-removed=kill")
    proc = device.proc
    assert proc is not None
    wait_for(lambda: device.tail().count("watching") >= 2, 30, "the daemon to hold the device",
             context=device.tail)  # else the command would do the rollback itself
    asked = subprocess.Popen([*KRUXOS, "--config", str(device.root / "device.yaml"), "update",
                              "rollback"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=engine_env())
    try:
        wait_for(lambda: proc.poll() is not None, 60, "the daemon killed mid-rollback",
                 context=device.tail)
    finally:
        asked.kill()
        asked.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = device.state()
    assert state["container_update"]["undo"] is True and state["failed"]["version"] == "1.0.1"
    names = {c.name for c in engine.client.containers.list(all=True)}
    assert device.name not in names, names  # the new one removed, the old not yet made again

    seq = device.last_seq()
    device.start()
    rolled = device.wait_outcome("rollback-container", seq)
    assert rolled["details"]["code"] == "ok", rolled
    assert _runs(device, "1.0.0") and _health(device) == 200
    assert "container_update" not in device.state()
    assert device.state()["container_release"]["version"] == "1.0.0"
    assert device.volume_file("starts.log").split("\n")[:3] == [
        "1.0.0 started", "1.0.1 started", "1.0.0 started"]
