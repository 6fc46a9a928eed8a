"""``kruxos sim run DIR``: boot the simulated device and keep it running.

Each boot follows a real device's order: the bootloader logic of the shipped
``grub.cfg`` picks a slot (counting a trial try down first), the kernel command
line names it, the booted slot's image is "mounted" (its ``etc/kruxos/`` copied
to ``DIR/run/root/etc/kruxos/``, replaced at every boot), then the simulated OS
(which learns what it is only from the slot's bytes) and ``kruxos daemon``
start as child processes. A reboot really
ends both and boots again. A slot whose image hangs at boot starts neither;
the watchdog resets the device after a few seconds, and that reset counts a
try, as on a board with a hardware watchdog.

The device's channel is served over loopback HTTP. Ports are picked free at
run time and published in ``run/ports.json``: the device's own
``127.0.0.1:7800`` and ``127.0.0.1:8080`` map onto them, so devices run side
by side. Every response is logged in ``run/served.jsonl`` (path, first byte,
bytes sent), so a test can count what a resumed download fetched again.

A crash test arms failpoints (``KRUXOS_FAILPOINTS``, see
:mod:`reconciler.failpoints`) in the environment of ``sim run``, which hands
it to the daemons it starts. When a daemon dies by SIGKILL while they are
armed, a failpoint fired: instead of restarting the daemon the supervisor
halts the device (the simulated OS stops, ``sim run`` exits with status
:data:`HALTED_AT_FAILPOINT`). The files are then exactly as the crash left
them, for the test to check, and the next ``sim run`` (started without the
variable) is the device powering on again: a point fires once per crash.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

from reconciler.config import load_device
from reconciler.durable import atomic_write, atomic_write_json
from reconciler.errors import ConfigError
from reconciler.release.identity import read_identity
from reconciler.sim.bootloader import emulator_for
from reconciler.sim.channel import channel_server
from reconciler.sim.device import CHANNEL_PORT, OS_PORT
from reconciler.sim.image import MountError, mount
from reconciler.sim.os import DIE_WITH_PARENT, BootRefused, SimOsProcess, launch

#: The failpoints of the daemons this supervisor starts (``reconciler.failpoints.ENV``).
FAILPOINTS = "KRUXOS_FAILPOINTS"
#: The exit status of ``sim run`` after its daemon was killed at an armed failpoint.
HALTED_AT_FAILPOINT = 3


def say(message: str) -> None:
    """The device's console."""
    print(f"[sim] {message}", flush=True)


class Supervisor:
    """Boots the simulated device, restarts it on reboot, stops on SIGTERM."""

    def __init__(self, directory: Path, watchdog: float = 3.0, channel_rate: int = 0,
                 channel_auth: str | None = None) -> None:
        self.dir = directory.resolve()
        self.channel_auth = channel_auth
        self.device = load_device(self.dir / "device.yaml")
        self.run_dir = self.dir / "run"
        self.watchdog = watchdog
        self.channel_rate = channel_rate
        self.reboot_requested = threading.Event()
        self.stopping = threading.Event()
        self.os_proc: SimOsProcess | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_started = 0.0
        self.daemon_log_start = 0
        self.quick_exits = 0
        self.boots = 0
        self.halted = False

    def run(self) -> int:
        """Serve the channel and boot until SIGTERM."""
        self.run_dir.mkdir(exist_ok=True)
        self._hold_the_device()
        atomic_write(self.run_dir / "sim.pid", f"{os.getpid()}\n".encode())
        signal.signal(signal.SIGUSR1, lambda *_: self.reboot_requested.set())
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop())
        signal.signal(signal.SIGINT, lambda *_: self._request_stop())
        server = self._serve_channel()
        say(f"channel served at http://127.0.0.1:{server.server_address[1]}/ "
            f"(the device sees http://{CHANNEL_PORT}/)")
        try:
            while not self.stopping.is_set():
                self._boot(server.server_address[1])
                self._wait_for_reboot()
                self._shutdown_children()
        finally:
            self._shutdown_children()
            server.shutdown()
            (self.run_dir / "sim.pid").unlink(missing_ok=True)
        say("device stopped")
        return HALTED_AT_FAILPOINT if self.halted else 0

    def _hold_the_device(self) -> None:
        """One ``sim run`` per device: an ``flock`` on ``run/sim.lock`` for this process's life.

        A second one would boot the same slots beside the first, and its stop
        would delete the first one's port map."""
        fd = os.open(self.run_dir / "sim.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 40, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.dir} is already running (kruxos sim run, pid {holder}); "
                              "stop that one first (Ctrl-C, or kill -TERM it)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd  # held until the process ends

    def _request_stop(self) -> None:
        self.stopping.set()
        self.reboot_requested.set()

    def _serve_channel(self) -> ThreadingHTTPServer:
        server = channel_server(self.dir / "channel", "127.0.0.1", 0, rate=self.channel_rate,
                                authorization=self.channel_auth,
                                served_log=self.run_dir / "served.jsonl")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _boot(self, channel_port: int) -> None:
        """One boot: bootloader, kernel command line, then the OS and the daemon."""
        self.boots += 1
        self.reboot_requested.clear()
        choice = emulator_for(self.device.bootloader)(self.device.boot_env)
        slot = choice.slot
        path = self.device.slot_paths[slot]
        say(f"boot #{self.boots}: bootloader chose slot {slot} ({path.name}): {choice.trace}")
        atomic_write(self.device.cmdline, f"root=/dev/{path.name} kruxos.slot={slot}\n".encode())
        atomic_write(self.device.boot_id, f"{uuid.uuid4()}\n".encode())
        try:
            release = mount(path, self.run_dir / "root").release()
        except (MountError, OSError) as exc:
            say(f"slot {slot} does not mount: {exc}")
            return self._hang(slot)
        if release.get("BEHAVIOUR") == "hangs":
            return self._hang(slot)
        try:
            self.os_proc = launch(path, self.run_dir / "os.ready",
                                  services_root=self._services_root(path),
                                  data_root=self.device.service_data_dir)
        except BootRefused as exc:
            say(f"slot {slot} did not boot: {exc}")
            return self._hang(slot)
        atomic_write_json(self.run_dir / "ports.json", {
            OS_PORT: f"127.0.0.1:{self.os_proc.port}",
            CHANNEL_PORT: f"127.0.0.1:{channel_port}"})
        say(f"KruxOS {release['VERSION']} up (health on 127.0.0.1:{self.os_proc.port}); "
            "starting kruxos daemon")
        self._start_daemon()

    def _services_root(self, slot_path: Path) -> Path | None:
        """The service store's directory of the root image the slot holds (its identity's
        SHA-256): the overlays that apply on this boot (none for another root's)."""
        try:
            identity, _ = read_identity(slot_path)
        except OSError:
            return None
        if identity is None or not identity.sha256:
            return None
        return self.device.services_dir / "roots" / identity.sha256

    def _hang(self, slot: str) -> None:
        """A boot that never reaches user space: only the watchdog gets us out."""
        say(f"slot {slot} hangs at boot; the watchdog resets the device in {self.watchdog:g}s")
        if not self.stopping.wait(self.watchdog):
            self.reboot_requested.set()

    def _start_daemon(self) -> None:
        log = open(self.run_dir / "daemon.log", "ab")
        self.daemon_log_start = log.seek(0, os.SEEK_END)
        env = dict(os.environ, KRUXOS_CONFIG=str(self.device.source), PYTHONUNBUFFERED="1")
        # Its own session keeps a Ctrl-C at the console from reaching it (the
        # supervisor stops it in order); the parent-death signal ends it with
        # the supervisor, as a power cut ends every process of a device.
        self.daemon = subprocess.Popen(
            [*DIE_WITH_PARENT, sys.executable, "-m", "reconciler.cli.main", "daemon"],
            stdout=log, stderr=log, env=env, start_new_session=True)
        self.daemon_started = time.monotonic()
        log.close()

    def _wait_for_reboot(self) -> None:
        """Wait for a reboot request; restart a daemon that died (as systemd would).

        A daemon that exits soon after it started is restarted after a delay
        that doubles each time in a row (1 s up to 30 s), so one that cannot
        start (a lock held, a broken config) does not spin; the console says
        why, from the daemon's last line."""
        while not self.reboot_requested.wait(0.2):
            if self.daemon is None or self.daemon.poll() is None:
                continue
            if self._killed_at_failpoint(self.daemon.returncode):
                break
            lived = time.monotonic() - self.daemon_started
            self.quick_exits = self.quick_exits + 1 if lived < STEADY_AFTER else 1
            delay = restart_delay(self.quick_exits)
            say(f"kruxos daemon exited ({self.daemon.returncode}) after {lived:.1f}s"
                f"{self._daemon_last_words()}; restarting it in {delay:g}s")
            self.daemon = None
            if not self.reboot_requested.wait(delay):
                self._start_daemon()
        if not self.stopping.is_set():
            say("reboot")

    def _daemon_last_words(self) -> str:
        """``: <last line>`` the exited daemon wrote to its log, if any."""
        try:
            with open(self.run_dir / "daemon.log", "rb") as log:
                log.seek(max(self.daemon_log_start, log.seek(0, os.SEEK_END) - 4096))
                lines = log.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1][:200]}" if lines else ""

    def _killed_at_failpoint(self, returncode: int) -> bool:
        """A daemon killed while failpoints are armed died at one: the device halts."""
        if returncode != -signal.SIGKILL or not os.environ.get(FAILPOINTS):
            return False
        say(f"kruxos daemon killed at a failpoint ({os.environ[FAILPOINTS]}); the device "
            "halts as the crash left it")
        self.halted = True
        self._request_stop()
        return True

    def _shutdown_children(self) -> None:
        """What a reboot does to user space: SIGTERM, then SIGKILL after a grace period."""
        if self.daemon is not None:
            _terminate(self.daemon)
            self.daemon = None
        if self.os_proc is not None:
            self.os_proc.stop()
            self.os_proc = None
        (self.run_dir / "ports.json").unlink(missing_ok=True)


#: A daemon that ran this long before it exited restarts after the first delay again.
STEADY_AFTER = 10.0
RESTART_CAP = 30.0


def restart_delay(quick_exits: int) -> float:
    """Seconds before restarting a daemon that exited ``quick_exits`` times in a row quickly."""
    return min(RESTART_CAP, 2.0 ** max(0, quick_exits - 1))


def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ports(directory: Path) -> dict[str, str]:
    """The port map of a running simulated device (empty when it is not running)."""
    try:
        value = json.loads((directory / "run" / "ports.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def basic_authorization(path: Path) -> str:
    """The ``Authorization: Basic`` value for the ``user:password`` held in ``path``."""
    pair = path.read_text().strip().encode()
    return "Basic " + base64.b64encode(pair).decode()


def run_device(directory: Path, watchdog: float = 3.0, channel_rate: int = 0,
               channel_auth: str | None = None) -> int:
    """Entry point of ``kruxos sim run``."""
    return Supervisor(directory, watchdog, channel_rate, channel_auth).run()

