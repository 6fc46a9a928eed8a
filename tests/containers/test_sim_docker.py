"""``kruxos sim init DIR --runtime docker`` tried as ``docs/containers.md`` tells a person to.

A real dockerd and registry (``tests/container_rig.py``), the person's own image
(imported locally, as ``YOUR-IMAGE``), and nothing else: every command is one
``sim init`` printed, run by ``bash`` as printed (``docker tag``/``push``, ``kruxos
release add`` with no root image, ``release sign``, ``python3 -m http.server``,
``kruxos daemon``, ``kruxos update status``). Then the channel is tampered with
after signing (refused, the container kept), and the registry serves other
content under a signed digest (refused at the pull, never run).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import cli_contract
from tests.container_rig import (
    Engine,
    audit_records,
    engine_env,
    free_port,
    last_outcome,
    rootfs,
    terminate,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.needs_tool("dockerd", "docker-registry", "/bin/busybox", "docker",
                                    "python3")

#: The person's own image, as the printed commands call it.
YOURS = "YOUR-IMAGE"


@dataclass
class Person:
    """One person at one shell: ``kruxos`` and ``docker`` on PATH, the engine as theirs."""

    home: Path
    engine: Engine
    env: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        shim = self.home / "bin"
        shim.mkdir(parents=True)
        (shim / "kruxos").write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m reconciler.cli.main \"$@\"\n")
        (shim / "kruxos").chmod(0o755)
        repo = str(Path(__file__).resolve().parents[2])
        self.env = {**engine_env(), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
                    "DOCKER_HOST": self.engine.url, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [repo,
                                                                os.environ.get("PYTHONPATH")]))}
        self.env.pop("KRUXOS_CONFIG", None)

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run one printed command as a shell runs it; ``export`` sets the variable."""
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            self.env[name] = value
            return subprocess.CompletedProcess(command, 0, "", "")
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              env=self.env, cwd=self.home, timeout=120)
        if command.startswith("kruxos "):
            cli_contract.check(shlex.split(command)[1:], done)  # exit status, --json schema
        return done

    def must(self, command: str) -> str:
        done = self.run(command)
        assert done.returncode == 0, f"$ {command}\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, command: str, log: str) -> subprocess.Popen[bytes]:
        """A command the person leaves running in another terminal."""
        with (self.home / log).open("ab") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=self.home, start_new_session=True)
        self.background.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.background:
            terminate(proc)


@dataclass
class Steps:
    """What ``sim init`` printed: its commands, by the step they belong to."""

    printed: str
    commands: dict[int, list[str]]

    @classmethod
    def parse(cls, printed: str) -> Steps:
        commands: dict[int, list[str]] = {0: []}
        step = 0
        for line in printed.splitlines():
            head = line.split(".", 1)[0]
            if head.isdigit():
                step = int(head)
                commands[step] = []
            elif line.startswith("  $ "):
                commands[step].append(line.removeprefix("  $ "))
        return cls(printed, commands)

    def one(self, step: int, starts: str) -> str:
        found = [c for c in self.commands[step] if c.startswith(starts)]
        assert len(found) == 1, (step, starts, self.printed)
        return found[0]


@pytest.fixture
def person(engine: Engine, tmp_path: Path) -> Iterator[Person]:
    person = Person(tmp_path / "home", engine)
    try:
        yield person
    finally:
        person.stop()
        for container in engine.client.containers.list(all=True):
            if container.name.startswith("kruxos"):
                container.remove(force=True)
        for volume in engine.client.volumes.list():
            if volume.name == "kruxos-data":
                volume.remove(force=True)


class Device:
    """What the person made: read back for the assertions (never to drive it)."""

    def __init__(self, root: Path, engine: Engine, port: int) -> None:
        self.root, self.engine, self.port = root, engine, port

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.root / "data")

    def outcome(self, action: str, after: int = 0) -> dict[str, Any] | None:
        return last_outcome(self.records(), action, after)

    def last_seq(self) -> int:
        records = self.records()
        return int(records[-1]["seq"]) if records else 0

    def log(self) -> str:
        path = self.root.parent / "daemon.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def wait_outcome(self, action: str, after: int = 0, timeout: float = 90) -> dict[str, Any]:
        return wait_for(lambda: self.outcome(action, after), timeout, f"a {action} outcome",
                        context=self.log)

    def runs(self) -> str | None:
        """The version the container ``kruxos`` runs (its image's ``/version``), if running."""
        try:
            container = self.engine.client.containers.get("kruxos")
        except Exception:  # noqa: BLE001 - not there (yet) is an answer
            return None
        if container.status != "running":
            return None
        return str(container.exec_run(["cat", "/version"]).output.decode().strip())

    def health(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=5,
                         trust_env=False).status_code

    def secret(self) -> str:
        line = (self.root / "container.env").read_text().strip()
        return line.partition("=")[2]

    def written(self) -> str:
        """Everything the device wrote: its data dir and the daemon's log."""
        texts = [self.log()]
        texts += [p.read_text(errors="replace") for p in (self.root / "data").rglob("*")
                  if p.is_file()]
        return "\n".join(texts)


def _own_image(engine: Engine, version: str, tag: str) -> None:
    """The person's own image of ``version`` in their engine: answers ``/health/ready``."""
    repository, _, label = tag.partition(":")
    engine.client.api.import_image_from_data(
        rootfs(version), repository=repository, tag=label,
        changes=['CMD ["/entry.sh"]', "ENV KRUXOS_PORT=7800"])


def _publish(person: Person, steps: Steps, version: str) -> None:
    """Steps 1 and 2 as printed, for ``version`` (the second release: 1.0.1 for 1.0.0)."""
    _own_image(person.engine, version, f"try/kruxos:{version}")
    for step in (1, 2):
        for command in steps.commands[step]:
            person.must(command.replace(YOURS, f"try/kruxos:{version}")
                        .replace("1.0.0", version))


def _init(person: Person) -> tuple[Steps, Device]:
    port, channel_port = free_port(), free_port()
    engine = person.engine
    made = person.run(f"kruxos sim init dev --runtime docker --engine {engine.url} "
                      f"--registry {engine.registry} --channel 127.0.0.1:{channel_port} "
                      f"--port {port}")
    assert made.returncode == 0, made.stderr
    steps = Steps.parse(made.stdout)
    return steps, Device(person.home / "dev", engine, port)


def _running(person: Person) -> tuple[Steps, Device, int]:
    """A device made and started as printed, running 1.0.0 (confirmed); the last seq."""
    steps, device = _init(person)
    for command in steps.commands[0]:
        person.must(command)
    _publish(person, steps, "1.0.0")
    _start(person, steps)
    device.wait_outcome("confirm-container")
    return steps, device, device.last_seq()


def _start(person: Person, steps: Steps) -> None:
    """Steps 3 and 4: the channel served in one terminal, the daemon in another."""
    person.start(steps.one(3, "python3 -m http.server"), "channel.log")
    port = steps.one(3, "python3").split()[-1]

    def served() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metadata.json", timeout=5,
                             trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(served, 30, "the channel served", every=0.1)
    person.start(steps.one(4, "kruxos daemon"), "daemon.log")


def test_a_person_tries_a_container_device_as_the_docs_say_and_a_second_release_swaps_in(
        person: Person) -> None:
    steps, device = _init(person)
    assert not (device.root / "root.img").exists()  # a container-only release needs none
    for command in steps.commands[0]:  # export KRUXOS_CONFIG=...
        person.must(command)
    _publish(person, steps, "1.0.0")
    _start(person, steps)
    assert device.wait_outcome("confirm-container")["details"]["code"] == "ok"
    assert device.runs() == "1.0.0" and device.health() == 200
    status = person.must(steps.one(5, "kruxos update status"))
    assert "Runtime: docker\nContainer: kruxos runs 1.0.0 (running)\n" in status, status

    seq = device.last_seq()
    _publish(person, steps, "1.0.1")  # the daemon follows latest: no spec edit
    confirmed = device.wait_outcome("confirm-container", seq)
    assert confirmed["details"]["code"] == "ok", confirmed
    assert device.runs() == "1.0.1" and device.health() == 200
    volume = person.engine.client.volumes.get("kruxos-data")  # read through its mount point
    assert (Path(volume.attrs["Mountpoint"]) / "starts.log").read_text().splitlines() == [
        "1.0.0 started", "1.0.1 started"]

    shown = {args: person.must(f"kruxos {args}") for args in (
        "update status", "update status --json", "spec plan --json", "audit list")}
    plan = person.run("kruxos spec plan")
    check = person.run("kruxos update check")
    assert plan.returncode == 0 and check.returncode == 0, (plan, check)
    status = shown["update status"]
    assert status.splitlines()[:2] == ["Runtime: docker", "Container: kruxos runs 1.0.1 "
                                                          "(running)"], status
    assert status.splitlines()[-1] == ("Next: container kruxos runs 1.0.1, the latest "
                                       "release on the channel"), status
    doc = json.loads(shown["update status --json"])
    assert doc["runtime"] == "docker" and doc["container"]["version"] == "1.0.1"
    assert doc["container"]["current"]["status"] == "running"
    for slot_word in ("slots", "booted", "boot", "trial", "staging"):
        assert slot_word not in doc, slot_word
    assert json.loads(shown["spec plan --json"])["observed"] == {
        "runtime": "docker", "container": "kruxos", "version": "1.0.1", "status": "running"}
    for text in (status, plan.stdout, check.stdout):
        assert "slot" not in text.lower() and "reboot" not in text.lower(), text
    assert "observed: container kruxos runs 1.0.1 (running)" in plan.stdout, plan.stdout
    secret = device.secret()
    assert len(secret) >= 24
    outputs = [*shown.values(), plan.stdout, plan.stderr, check.stdout, check.stderr]
    assert secret not in "\n".join([*outputs, device.written()])
    assert person.run("kruxos audit verify").returncode == 0


def test_a_channel_edited_after_signing_is_refused_and_the_container_kept(
        person: Person) -> None:
    steps, device, seq = _running(person)

    # 1.0.1 is published and signed in a copy of the channel, its signed digest edited to
    # another image's there, and only then the edited metadata served (never the good one)
    _own_image(person.engine, "6.6.6", "try/evil:6.6.6")
    person.must(f"docker tag try/evil:6.6.6 {person.engine.registry}/kruxos:6.6.6")
    person.must(f"docker push {person.engine.registry}/kruxos:6.6.6")
    evil = person.engine.client.images.get(f"{person.engine.registry}/kruxos:6.6.6")
    evil_ref = next(r for r in evil.attrs["RepoDigests"] if "/kruxos@" in r)
    served, copy = device.root / "channel", device.root / "channel-copy"
    person.must(f"cp -a {served} {copy}")
    _own_image(person.engine, "1.0.1", "try/kruxos:1.0.1")
    for command in [*steps.commands[1], *steps.commands[2]]:
        person.must(command.replace(YOURS, "try/kruxos:1.0.1").replace("1.0.0", "1.0.1")
                    .replace(str(served), str(copy)))
    doc = json.loads((copy / "metadata.json").read_text())
    release = next(r for r in doc["signed"]["releases"] if r["version"] == "1.0.1")
    assert release["container_image"] != evil_ref
    release["container_image"] = evil_ref
    (copy / "metadata.json").write_text(json.dumps(doc))
    os.replace(copy / "metadata.json", served / "metadata.json")
    refused = wait_for(lambda: [r for r in device.records() if r["seq"] > seq
                                and r["action"] == "channel-refused"], 60,
                       "the edited channel refused", context=device.log)
    assert "no valid signature from a trusted key: bad signature" in refused[0]["reason"]
    status = person.must("kruxos update status")
    assert "Container: kruxos runs 1.0.0 (running)" in status, status
    assert device.runs() == "1.0.0" and device.health() == 200
    assert not [r for r in device.records() if r["seq"] > seq
                and r["action"] in ("pull-image", "swap-container")]



def test_a_registry_serving_other_content_under_the_signed_digest_is_refused_at_the_pull(
        person: Person, engine: Engine) -> None:
    steps, device, seq = _running(person)

    # 1.0.2 is in the registry (not in the engine); then the registry's bytes under its
    # digest are swapped for another image's manifest, as a hostile mirror would serve them
    repo = f"{engine.registry}/kruxos"
    good, evil = engine.build(repo, "1.0.2"), engine.build(repo, "6.6.7")
    blobs = engine.root / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256"

    def blob(ref: str) -> Path:
        hexdigest = ref.rpartition(":")[2]
        return blobs / hexdigest[:2] / hexdigest / "data"

    blob(good).write_bytes(blob(evil).read_bytes())
    # the channel names the release under the publisher's repository, not the mirror's
    signed_ref = f"registry.example.com/altvale/kruxos@{good.rpartition('@')[2]}"
    person.must(f"kruxos release add {device.root / 'channel'} --version 1.0.2 --changes x "
                f"--container-image {signed_ref}")
    person.must(steps.one(2, "kruxos release sign"))
    pulled = device.wait_outcome("pull-image", seq)
    assert pulled["details"]["code"] == "refused", pulled
    assert "is not what the signed digest names; refused" in pulled["outcome"], pulled
    assert device.runs() == "1.0.0" and device.health() == 200
    assert not [r for r in device.records() if r["seq"] > seq
                and r["action"] == "swap-container"]
    held = [tag for image in engine.client.images.list() for tag in
            image.attrs.get("RepoDigests") or []]
    assert evil not in held and good not in held, held
    status = person.must("kruxos update status")
    assert "Container: kruxos runs 1.0.0 (running)" in status, status
