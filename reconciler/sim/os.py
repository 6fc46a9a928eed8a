"""The simulated OS: what runs after the simulated device boots a slot.

Run as ``python -m reconciler.sim.os --slot-file PATH --port N`` (or, on the
QEMU device whose slot is mounted as ``/``, ``--release-file
/etc/kruxos/release``). Like a real
KruxOS it knows nothing but the image it booted: its version and how it behaves
come only from the ``etc/kruxos/release`` file of the filesystem image at the
start of the slot (``VERSION``, ``BEHAVIOUR`` and the optional tuning fields
below; :mod:`reconciler.sim.image`), so the reconciler is tested against what
it actually wrote, never against a side channel. The slot's identity record
(at its end) is the reconciler's business, not the OS's: it is never read here.

Behaviours (``BEHAVIOUR=`` in the release file):

- ``healthy``        ready once started (also the default, and the fallback
                     for an unknown name, with a warning)
- ``gateway-fails``  never ready: ``gateway: failed to start``
- ``fails-later``    ready, then ``scheduler: crashed`` after ``FAILS_AFTER_SECONDS``

Tuning fields: ``STARTUP_SECONDS`` (0.5; services answer ``starting`` with a
503 meanwhile), ``FAILS_AFTER_SECONDS`` (4, counted from boot) and
``FAILING_SERVICES`` (``name:what,name:what``).

Endpoints: ``GET /health/ready`` and ``GET /version``. An empty slot does not
boot: the process exits non-zero, as a real machine would not start.

Service overlays (``--services-root``, the service store's directory of the
booted root image): each service with a ``current`` artifact there runs as its
own process (:mod:`reconciler.sim.service`), whose behaviour comes from the
artifact's bytes, and its entry in the health JSON's ``services`` map comes
from that process (a service whose artifact declares ``DATA_DIR`` gets its
directory under ``--service-data-root``); ``POST /services/NAME/restart`` (what the device's restart
command asks) restarts just that process, from the artifact ``current`` names
then, or gives the service back to the image when there is no overlay any more.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.durable import atomic_write_json
from reconciler.sim.image import RELEASE_FILE, MountError, SimRoot, read_root

__all__ = ["OsProfile", "BootRefused", "load_profile", "health_at", "serve", "main",
           "SimOsProcess", "launch", "load_release_file"]

log = logging.getLogger("reconciler.sim.os")

BASE_SERVICES = ("gateway", "scheduler")
_DEFAULT_FAILING = {"gateway-fails": "gateway:failed to start", "fails-later": "scheduler:crashed"}


class BootRefused(Exception):
    """The slot cannot be booted (no image, or a release field that makes no sense)."""


@dataclass(frozen=True)
class OsProfile:
    """Everything the booted image tells the OS about itself."""

    version: str
    behaviour: str = "healthy"
    slot_file: str = ""
    startup_seconds: float = 0.5
    fails_after_seconds: float = 4.0
    failing_services: dict[str, str] = field(default_factory=dict)


def _never_fails(profile: OsProfile, elapsed: float) -> dict[str, str]:
    return {}


def _always_fails(profile: OsProfile, elapsed: float) -> dict[str, str]:
    return dict(profile.failing_services)


def _fails_later(profile: OsProfile, elapsed: float) -> dict[str, str]:
    return dict(profile.failing_services) if elapsed >= profile.fails_after_seconds else {}


BEHAVIOURS: dict[str, Callable[[OsProfile, float], dict[str, str]]] = {
    "healthy": _never_fails,
    "gateway-fails": _always_fails,
    "fails-later": _fails_later,
}


def load_profile(slot_file: Path) -> OsProfile:
    """Read the profile from the slot's image; :class:`BootRefused` if it cannot boot."""
    try:
        release = read_root(slot_file).release()
    except MountError as exc:
        raise BootRefused(f"slot {slot_file} holds no image that boots: {exc}") from exc
    except OSError as exc:
        raise BootRefused(f"slot {slot_file} cannot be read ({exc.strerror})") from exc
    return _profile(release, str(slot_file))


def load_release_file(path: Path) -> OsProfile:
    """The profile of a booted root's own release file (``/etc/kruxos/release``).

    The QEMU device (``deploy/image/``) mounts its slot as ``/``: there the OS
    reads the file, not a slot file. Same ``KEY=value`` format, same checks.
    """
    try:
        release = SimRoot({RELEASE_FILE: path.read_bytes()}).release()
    except MountError as exc:
        raise BootRefused(f"{path}: {exc}") from exc
    except OSError as exc:
        raise BootRefused(f"cannot read the release file {path} ({exc.strerror})") from exc
    return _profile(release, "")


def _profile(release: dict[str, str], slot_file: str) -> OsProfile:
    behaviour = release.get("BEHAVIOUR", "healthy") or "healthy"
    if behaviour not in BEHAVIOURS:
        log.warning("unknown BEHAVIOUR %r, running healthy", behaviour)
    return OsProfile(
        version=release["VERSION"],
        behaviour=behaviour,
        slot_file=slot_file,
        startup_seconds=_seconds(release, "STARTUP_SECONDS", 0.5),
        fails_after_seconds=_seconds(release, "FAILS_AFTER_SECONDS", 4.0),
        failing_services=_services(release, _DEFAULT_FAILING.get(behaviour, "")),
    )


def _seconds(release: dict[str, str], key: str, default: float) -> float:
    raw = release.get(key, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError as exc:
        raise BootRefused(f"{RELEASE_FILE}: {key}={raw!r} is not a number of seconds") from exc
    if value < 0:
        raise BootRefused(f"{RELEASE_FILE}: {key}={raw!r} is negative")
    return value


def _services(release: dict[str, str], default: str) -> dict[str, str]:
    """``gateway:failed to start,scheduler:crashed`` as an ordered mapping."""
    raw = release.get("FAILING_SERVICES", "") or default
    failing = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, what = item.partition(":")
        if not sep or not name.strip() or not what.strip():
            raise BootRefused(f"{RELEASE_FILE}: FAILING_SERVICES item {item!r} is not name:what")
        failing[name.strip()] = what.strip()
    return failing


def health_at(profile: OsProfile, elapsed: float) -> tuple[int, dict[str, Any]]:
    """The readiness answer ``elapsed`` seconds after boot: HTTP status and JSON body."""
    failing = BEHAVIOURS.get(profile.behaviour, _never_fails)(profile, elapsed)
    names = list(BASE_SERVICES) + [name for name in failing if name not in BASE_SERVICES]
    if elapsed < profile.startup_seconds:
        services = {name: "starting" for name in names}
        return 503, {"status": "starting", "version": profile.version, "services": services}
    services = {name: failing.get(name, "ok") for name in names}
    status = "unhealthy" if failing else "ok"
    return (503 if failing else 200), {"status": status, "version": profile.version,
                                       "services": services}


class ServiceSet:
    """The services that run from overlays, each its own process (module docstring)."""

    def __init__(self, root: Path | None, status_dir: Path,
                 data_root: Path | None = None) -> None:
        self.root = root
        self.status_dir = status_dir
        self.data_root = data_root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start_all(self) -> None:
        """Start every service that has an overlay on this root image."""
        if self.root is None or not self.root.is_dir():
            return
        for service_dir in sorted(self.root.iterdir()):
            if (service_dir / "current").exists():
                self.restart(service_dir.name)

    def restart(self, name: str) -> int | None:
        """Stop the service's process, start it again from ``current``; its new pid
        (``None``: no overlay, the image's own service answers for it)."""
        with self._lock:
            old = self.procs.pop(name, None)
            if old is not None:
                _stop(old)
            status = self.status_dir / f"{name}.json"
            status.unlink(missing_ok=True)
            link = None if self.root is None else self.root / name / "current"
            if link is None or not link.exists():
                log.info("service %s: no overlay, the image's own runs", name)
                return None
            self.status_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "reconciler.sim.service",
                       "--artifact", str(link.resolve()), "--status-file", str(status)]
            if self.data_root is not None:
                command += ["--data-root", str(self.data_root)]
            with open(self.status_dir / f"{name}.log", "ab") as out:
                proc = subprocess.Popen(  # it watches its parent (reconciler.sim.service)
                    command, stdout=out, stderr=subprocess.STDOUT)
            self.procs[name] = proc
            log.info("service %s started from %s (pid %d)", name, link.resolve().name[:12],
                     proc.pid)
            return proc.pid

    def states(self) -> dict[str, str]:
        """Each overlay service's health entry: ``ok``, ``starting`` or what it said."""
        out = {}
        for name, proc in list(self.procs.items()):
            try:
                said = json.loads((self.status_dir / f"{name}.json").read_text())["state"]
            except (OSError, ValueError, KeyError, TypeError):
                said = None
            if proc.poll() is not None:
                out[name] = said if said and said != "ok" else "failed to start"
            else:
                out[name] = said or "starting"
        return out

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def stop_all(self) -> None:
        with self._lock:
            for proc in self.procs.values():
                _stop(proc)
            self.procs.clear()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def with_services(answer: tuple[int, dict[str, Any]],
                  states: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The image's answer with the overlay services' own entries in its ``services`` map."""
    status, body = answer
    if not states:
        return status, body
    services = {**body["services"], **states}
    if all(v == "ok" for v in services.values()):
        return 200, {**body, "status": "ok", "services": services}
    word = "starting" if all(v in ("ok", "starting") for v in services.values()) \
        else "unhealthy"
    return 503, {**body, "status": word, "services": services}


def _handler_for(profile: OsProfile, booted_at: float,
                 services: ServiceSet | None = None) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to this boot's profile and start time."""
    overlays = services or ServiceSet(None, Path("."))

    class Handler(BaseHTTPRequestHandler):
        server_version = "KruxOS-sim"

        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) == 3 and parts[0] == "services" and parts[2] == "restart" \
                    and parts[1].replace("-", "").isalnum():
                pid = overlays.restart(parts[1])
                self._send(200, {"service": parts[1], "pid": pid,
                                 "from": "overlay" if pid else "image"})
            else:
                self._send(404, {"error": "no such endpoint"})

        def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
            path = self.path.split("?", 1)[0]
            if path == "/health/ready":
                self._send(*with_services(health_at(profile, time.monotonic() - booted_at),
                                          overlays.states()))
            elif path == "/services":
                self._send(200, {"pids": overlays.pids(), "os_pid": os.getpid()})
            elif path == "/version":
                self._send(200, {"version": profile.version, "behaviour": profile.behaviour,
                                 "slot_file": profile.slot_file})
            else:
                self._send(404, {"error": f"no such endpoint: {path}"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def serve(profile: OsProfile, host: str, port: int, ready_file: Path | None,
          booted_at: float, services: ServiceSet | None = None) -> None:
    """Serve until SIGTERM or SIGINT; write ``ready_file`` once listening."""
    server = ThreadingHTTPServer((host, port), _handler_for(profile, booted_at, services))
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    actual_port = server.server_address[1]
    if ready_file is not None:
        atomic_write_json(ready_file, {"host": host, "port": actual_port, "pid": os.getpid(),
                                       "version": profile.version})
    log.info("KruxOS %s (%s) up on %s:%d", profile.version, profile.behaviour, host, actual_port)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        if services is not None:
            services.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    """Boot the slot file and serve; 0 after SIGTERM, 1 when the slot does not boot."""
    booted_at = time.monotonic()
    parser = argparse.ArgumentParser(prog="python -m reconciler.sim.os", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--slot-file", type=Path, help="boot this slot file's image")
    source.add_argument("--release-file", type=Path,
                        help="a booted root's own etc/kruxos/release (a real device's OS)")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ready-file", type=Path, help="written as JSON {port, pid} once up")
    parser.add_argument("--services-root", type=Path,
                        help="the service store's directory of the booted root image")
    parser.add_argument("--service-data-root", type=Path,
                        help="where services keep their data (each in its DATA_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sim os: %(levelname)s %(message)s")
    try:
        profile = (load_release_file(args.release_file) if args.release_file is not None
                   else load_profile(args.slot_file))
    except BootRefused as exc:
        print(f"sim os: cannot boot: {exc}", file=sys.stderr)
        return 1
    status_dir = (args.ready_file or Path("os.ready")).with_name("services")
    services = ServiceSet(args.services_root, status_dir, args.service_data_root)
    services.start_all()
    serve(profile, args.host, args.port, args.ready_file, booted_at, services)
    return 0


@dataclass
class SimOsProcess:
    """A running simulated OS process, as started by :func:`launch`."""

    process: subprocess.Popen[bytes]
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """The readiness URL the health probe should ask."""
        return f"http://{self.host}:{self.port}/health/ready"

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait, and the exit status (killed if it does not stop in ``timeout``)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


#: What a device's process runs under so that it dies with the process that
#: started it (``prctl(PR_SET_PDEATHSIG)``, set by util-linux's ``setpriv``): killing
#: ``kruxos sim run`` is the simulated device's power cut, and no process outlives it.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


def launch(slot_file: Path, ready_file: Path, port: int = 0, host: str = "127.0.0.1",
           wait: float = 10.0, services_root: Path | None = None,
           data_root: Path | None = None) -> SimOsProcess:
    """Boot ``slot_file`` in a new process and return once it listens.

    The OS's own log goes to ``READY_FILE.log``. Raises :class:`BootRefused`
    with the OS's message when the process exits first (e.g. an empty slot).
    """
    ready_file.unlink(missing_ok=True)
    log_file = ready_file.with_name(ready_file.name + ".log")
    command = [*DIE_WITH_PARENT, sys.executable, "-m", "reconciler.sim.os",
               "--slot-file", str(slot_file), "--port", str(port), "--host", host,
               "--ready-file", str(ready_file)]
    if services_root is not None:
        command += ["--services-root", str(services_root)]
    if data_root is not None:
        command += ["--service-data-root", str(data_root)]
    with open(log_file, "wb") as log_out:
        process = subprocess.Popen(command, stdout=log_out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait
    while not ready_file.exists():
        if process.poll() is not None:
            message = log_file.read_text("utf-8", "replace").strip()
            raise BootRefused(message or f"sim os exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise BootRefused(f"sim os did not come up within {wait}s")
        time.sleep(0.02)
    info = json.loads(ready_file.read_text("utf-8"))
    return SimOsProcess(process=process, port=int(info["port"]), host=host)


if __name__ == "__main__":
    sys.exit(main())
