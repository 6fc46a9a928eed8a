"""A real etcd (Debian's ``etcd-server``, 3.4) on loopback, for the fleet's tests.

``start_cluster(root, members)`` starts one or more members, each with its own data
directory under ``root`` and its own free client and peer ports on 127.0.0.1, and
returns once every member says it is healthy (``GET /health``) and the cluster
has a leader. ``Cluster.kill(i)`` ends one member for the fault tests;
``Cluster.stop()`` ends them all. The server under test is started the same way:
``start_server`` runs ``kruxos fleetlock serve`` as its own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"etcd member {self.name} exited: "
                               f"{self.log.read_text()[-2000:]}")
        try:
            answer = httpx.get(f"{self.client_url}/health", timeout=2, trust_env=False)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json().get("health") == "true"


@dataclass
class Cluster:
    members: list[Member]
    killed: list[int] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def alive_urls(self) -> list[str]:
        return [m.client_url for i, m in enumerate(self.members) if i not in self.killed]

    def kill(self, index: int) -> None:
        """End one member at once (SIGKILL: no goodbye to its peers)."""
        proc = self.members[index].proc
        assert proc is not None
        _stop(proc, signal.SIGKILL)
        self.killed.append(index)

    def stop(self) -> None:
        for member in self.members:
            if member.proc is not None:
                _stop(member.proc)


def start_cluster(root: Path, members: int = 1, timeout: float = 60) -> Cluster:
    """Start ``members`` etcd members on loopback; all healthy before this returns."""
    root.mkdir(parents=True, exist_ok=True)
    made = [Member(f"m{i}", f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}",
                   root / f"m{i}.data", root / f"m{i}.log") for i in range(members)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in made)
    cluster = Cluster(made)
    try:
        for member in made:
            with open(member.log, "wb") as log:  # the process keeps its own copy
                member.proc = subprocess.Popen(
                    ["etcd", "--name", member.name, "--data-dir", str(member.data),
                     "--listen-client-urls", member.client_url,
                     "--advertise-client-urls", member.client_url,
                     "--listen-peer-urls", member.peer_url,
                     "--initial-advertise-peer-urls", member.peer_url,
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"kruxos-test-{os.getpid()}-{root.name}",
                     "--heartbeat-interval", "100", "--election-timeout", "1000",
                     "--log-level", "warn", "--logger", "zap"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        for member in made:
            wait_for(member.healthy, timeout, f"etcd member {member.name} to be healthy",
                     every=0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class Server:
    """One ``kruxos fleetlock serve`` replica, a real process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.proc)


def start_server(root: Path, etcd: list[str], *, slots: int = 1, config: Path | None = None,
                 name: str = "server", timeout: float = 30) -> Server:
    """Start a replica of the server on a free loopback port; it answers before this returns."""
    port = free_port()
    log_path = root / f"{name}.log"
    argv = [sys.executable, "-m", "reconciler.cli.main", "fleetlock", "serve",
            "--etcd", ",".join(etcd), "--listen", f"127.0.0.1:{port}", "--slots", str(slots)]
    if config is not None:
        argv += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                cwd=REPO)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {server.output()[-2000:]}")
        try:
            answer = httpx.get(f"{server.url}/v1/status", timeout=2, trust_env=False)
        except httpx.HTTPError:
            return False
        return answer.status_code in (200, 401)

    try:
        wait_for(up, timeout, f"the server {name} to answer", every=0.05)
    except BaseException:
        server.stop()
        raise
    return server


def stop_all(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.stop()
