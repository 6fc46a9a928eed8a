"""A real container engine and a real registry for the tests, started and stopped by them.

The engine is ``dockerd``, or Podman's Docker-compatible API (``podman system
service``) when ``KRUXOS_CONTAINER_ENGINE=podman`` (``make container-test-podman``);
the tests talk to either through the same ``docker`` SDK code. ``dockerd`` runs
with its own data root, exec root and socket under the test's directory, on the
host network and without touching it (no bridge, no iptables, no forwarding).
Podman runs as root with every config file of its own under the same directory
(``CONTAINERS_CONF``, ``CONTAINERS_REGISTRIES_CONF``, ``CONTAINERS_STORAGE_CONF``,
``--root``/``--runroot``/``--tmpdir``), nothing under /etc written (its blob-info
cache alone goes to /var/lib/containers/cache): runc (Debian's crun refuses this
machine's hybrid cgroup layout), cgroupfs, the host's network namespace for every
container (no bridge, no firewall rules), ulimits the sandbox allows (Podman's
default 1048576 for ``nofile`` and ``nproc`` exceeds its hard limits), events to a
file, its locks and temporary files under the directory. The registry (Debian
``docker-registry``) listens on 127.0.0.1 only; Podman is told it is plain HTTP
(``insecure = true``), dockerd trusts 127.0.0.0/8 by itself. After the engine
stops, what it left mounted under the directory is unmounted. Images are built
here: an import (through the engine's API) of a busybox-static root filesystem
with a tiny entry script that serves ``/health/ready`` (busybox ``httpd``, a static
file: present → 200, absent → 404), notes each start in the named volume, and
handles SIGTERM (so a graceful stop is quick).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
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
#: The manifest formats a registry may hold an image's manifest in (either engine's push).
MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json"))
#: Podman asks runc for RLIMIT_NOFILE and RLIMIT_NPROC of 1048576 unless told otherwise;
#: raising a hard limit needs CAP_SYS_RESOURCE, which a sandbox's bounding set may lack
#: (``error setting rlimit type 6: operation not permitted``). So the rig names both:
#: ``nofile`` as this process has it, ``nproc`` below the 32768 Podman's own ``conmon`` gets
#: here (measured: 30000 starts, 40000 fails), plenty for a busybox ``httpd``.
PODMAN_NPROC = 4096
#: The engine the tests run on: ``docker`` (dockerd) unless ``KRUXOS_CONTAINER_ENGINE`` says
#: ``podman``.
ENGINE = os.environ.get("KRUXOS_CONTAINER_ENGINE", "docker")
#: The system tools each engine's tests run (all in ``tests/tools.list``).
ENGINE_TOOLS = {
    "docker": ("dockerd", "docker-registry", "/bin/busybox"),
    "podman": ("podman", "conmon", "runc", "docker-registry", "/bin/busybox"),
}


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
    """An engine (dockerd or Podman's API service) and a registry of our own; ``client``
    talks to the engine."""

    root: Path
    socket: Path
    registry: str
    client: docker.DockerClient
    daemon: subprocess.Popen[bytes]
    registry_proc: subprocess.Popen[bytes]
    kind: str = "docker"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def build(self, repository: str, version: str, healthy: bool = True,
              entry: str = "/entry.sh") -> str:
        """Import a version's image, push it under its tag and remove it from the engine (a
        device must pull it from the registry); its ``REPOSITORY@sha256:...``.

        The import is tagged again by the image's id: Podman's compatible API ignores an
        import's ``tag`` (it tags ``latest``)."""
        data = rootfs(version, healthy)
        answer = self.client.api.import_image_from_data(
            data, repository=repository, tag=version,
            changes=[f'CMD ["{entry}"]', "ENV KRUXOS_PORT=7800"])
        image_id = json.loads(answer.splitlines()[-1])["status"]
        self.client.images.get(image_id).tag(repository, version)
        ref = self.push(repository, version)
        self.client.images.remove(image_id, force=True)
        return ref

    def push(self, repository: str, tag: str) -> str:
        """Push ``repository:tag``; its ``REPOSITORY@sha256:...`` as the registry holds it.

        The digest is the registry's, not the engine's: Podman pushes a manifest of its
        own making, so the local image's RepoDigests name a digest the registry lacks."""
        for line in self.client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push {repository}:{tag}: {line['error']}")
        host, _, name = repository.partition("/")
        answer = httpx.head(f"http://{host}/v2/{name}/manifests/{tag}", timeout=10,
                            trust_env=False, headers={"Accept": MANIFEST_TYPES})
        answer.raise_for_status()
        return f"{repository}@{answer.headers['Docker-Content-Digest']}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        for proc in (self.registry_proc, self.daemon):
            terminate(proc)
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


def _spawn(argv: list[str], log: Any,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def start_engine(root: Path, kind: str = ENGINE) -> Engine:
    """Start the engine (``docker`` or ``podman``) and the registry under ``root``; both
    answer before this returns."""
    if kind not in ENGINE_TOOLS:
        raise ValueError(f"KRUXOS_CONTAINER_ENGINE={kind!r}: docker or podman")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    sock = root / f"{kind}.sock"
    log_path = root / f"{kind}.log"
    with open(log_path, "wb") as log:  # the process keeps its own copy
        if kind == "podman":
            daemon = _spawn(
                ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                 "--tmpdir", str(root / "tmp"), "system", "service", "--time=0",
                 f"unix://{sock}"], log, _podman_env(root, f"127.0.0.1:{port}"))
        else:
            daemon = _spawn(
                ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                 "-H", f"unix://{sock}", "--pidfile", str(root / "dockerd.pid"),
                 "--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs",
                 "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"],
                log)
    (root / "registry").mkdir(exist_ok=True)
    (root / "registry.yml").write_text(
        "version: 0.1\nlog: {level: warn}\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'registry'}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    with open(root / "registry.log", "wb") as log:
        registry = _spawn(["docker-registry", "serve", str(root / "registry.yml")], log)

    def engine_up() -> bool:
        if daemon.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log_path.read_text()[-2000:]}")
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
        wait_for(engine_up, 60, f"{kind} to answer", every=0.1)
        client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=60)
        wait_for(registry_up, 30, "the registry to answer", every=0.1)
    except BaseException:
        for proc in (registry, daemon):
            proc.kill()
            proc.wait()
        _unmount_under(root)
        raise
    return Engine(root, sock, f"127.0.0.1:{port}", client, daemon, registry, kind)


def _podman_env(root: Path, registry: str) -> dict[str, str]:
    """Podman's three config files, all under ``root`` (written here), and the environment
    that points it at them; ``registry`` is trusted over plain HTTP."""
    soft, hard = (-1 if v == resource.RLIM_INFINITY else v
                  for v in resource.getrlimit(resource.RLIMIT_NOFILE))
    ulimits = [f"nofile={soft}:{hard}", f"nproc={PODMAN_NPROC}:{PODMAN_NPROC}"]
    (root / "tmp").mkdir(exist_ok=True)
    (root / "containers.conf").write_text(
        "[containers]\n"
        'netns = "host"\n'
        f"default_ulimits = {ulimits!r}\n".replace("'", '"') +
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'lock_type = "file"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root / "events.log"}"\n'
        f'tmp_dir = "{root / "tmp"}"\n'
        f'static_dir = "{root / "storage" / "libpod"}"\n'
        f'volume_path = "{root / "storage" / "volumes"}"\n'
        "[network]\n"
        f'network_config_dir = "{root / "networks"}"\n')
    (root / "registries.conf").write_text(
        "unqualified-search-registries = []\n"
        f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
    (root / "storage.conf").write_text(
        '[storage]\ndriver = "overlay"\n'
        f'graphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n')
    return {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"), "TMPDIR": str(root / "tmp")}


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 30 s: a process the tests started, stopped for good."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def audit_records(data_dir: Path) -> list[dict[str, Any]]:
    """Every record of a device's audit trail, oldest first (read as a person would)."""
    found: list[dict[str, Any]] = []
    for path in sorted((data_dir / "audit").glob("audit-*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines() if line]
    return found


def last_outcome(records: list[dict[str, Any]], action: str,
                 after: int = 0) -> dict[str, Any] | None:
    """The last outcome of ``action`` after record ``after``, or ``None``."""
    done = [r for r in records if r["kind"] == "outcome" and r["action"] == action
            and r["seq"] > after]
    return done[-1] if done else None


def engine_env() -> dict[str, str]:
    """The environment a daemon under test runs with (no proxies for loopback)."""
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(key, None)
    return env
