"""A real container engine and a real registry for the tests, started and stopped by them.

``dockerd`` runs with its own data root, exec root and socket under the test's
directory, on the host network and without touching it (no bridge, no iptables,
no forwarding); the registry (Debian ``docker-registry``) listens on 127.0.0.1
only. After the engine stops, what it left mounted under its exec root is
unmounted. Images are built here: ``docker import`` of a busybox-static root
filesystem with a tiny entry script that serves ``/health/ready`` (busybox
``httpd``, a static file: present → 200, absent → 404), notes each start in the
named volume, and handles SIGTERM (so a graceful stop is quick).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx

from tests.waiting import wait_for

ENTRY = """#!/bin/sh
mkdir -p /data/kruxos
echo "$(cat /version) started" >> /data/kruxos/starts.log
if [ -n "$KRUXOS_VAULT_PASSPHRASE" ]; then
  printf %s "$KRUXOS_VAULT_PASSPHRASE" | sha256sum | cut -c1-64 > /data/kruxos/vault.sha256
fi
trap 'kill $pid; exit 0' TERM INT
httpd -f -p "127.0.0.1:$KRUXOS_PORT" -h /www &
pid=$!
wait $pid
"""
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "httpd", "mkdir", "cat", "echo", "printf", "sha256sum", "cut", "kill", "sleep")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rootfs(version: str, healthy: bool = True, entry: str = "/entry.sh") -> bytes:
    """A busybox-static root filesystem as a tarball: the product's stand-in."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        def folder(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        for name in ("bin", "www", "www/health", "data", "tmp"):
            folder(name)
        add("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        add("entry.sh", ENTRY.encode(), 0o755)
        add("version", f"{version}\n".encode())
        if healthy:
            add("www/health/ready", b"ok\n")
    return out.getvalue()


@dataclass
class Engine:
    """A dockerd and a registry of our own; ``client`` talks to the engine."""

    root: Path
    socket: Path
    registry: str
    client: docker.DockerClient
    dockerd: subprocess.Popen[bytes]
    registry_proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def build(self, repository: str, version: str, healthy: bool = True,
              entry: str = "/entry.sh") -> str:
        """Import a version's image, push it under its tag and remove it from the engine (a
        device must pull it from the registry); its ``REPOSITORY@sha256:...``."""
        data = rootfs(version, healthy)
        self.client.api.import_image_from_data(
            data, repository=repository, tag=version,
            changes=[f'CMD ["{entry}"]', "ENV KRUXOS_PORT=7800"])
        ref = self.push(repository, version)
        self.client.images.remove(self.client.images.get(ref).id, force=True)
        return ref

    def push(self, repository: str, tag: str) -> str:
        for line in self.client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push {repository}:{tag}: {line['error']}")
        image = self.client.images.get(f"{repository}:{tag}")
        refs = [r for r in image.attrs["RepoDigests"] if r.startswith(repository + "@")]
        return str(refs[0])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        for proc in (self.registry_proc, self.dockerd):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        _unmount_under(self.root)


def _unmount_under(root: Path) -> None:
    """Unmount whatever the engine left mounted under ``root`` (deepest first)."""
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == str(root) or point.startswith(f"{root}/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _spawn(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def start_engine(root: Path) -> Engine:
    """Start dockerd and the registry under ``root``; both answer before this returns."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    with open(root / "dockerd.log", "wb") as log:  # the process keeps its own copy
        dockerd = _spawn(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "-H", f"unix://{sock}", "--pidfile", str(root / "dockerd.pid"),
         "--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs",
         "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"], log)
    port = free_port()
    (root / "registry").mkdir(exist_ok=True)
    (root / "registry.yml").write_text(
        "version: 0.1\nlog: {level: warn}\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'registry'}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    with open(root / "registry.log", "wb") as log:
        registry = _spawn(["docker-registry", "serve", str(root / "registry.yml")], log)

    def engine_up() -> bool:
        if dockerd.poll() is not None:
            raise RuntimeError(f"dockerd exited: {(root / 'dockerd.log').read_text()[-2000:]}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
            except OSError:
                return False
            probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return probe.recv(64).startswith(b"HTTP/1.0 200")

    def registry_up() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2,
                         trust_env=False).status_code == 200

    try:
        wait_for(engine_up, 60, "dockerd to answer", every=0.1)
        client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=60)
        wait_for(registry_up, 30, "the registry to answer", every=0.1)
    except BaseException:
        for proc in (registry, dockerd):
            proc.kill()
            proc.wait()
        _unmount_under(root)
        raise
    return Engine(root, sock, f"127.0.0.1:{port}", client, dockerd, registry)


def engine_env() -> dict[str, str]:
    """The environment a daemon under test runs with (no proxies for loopback)."""
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return env
