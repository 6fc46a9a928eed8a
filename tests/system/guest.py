"""The whole device under QEMU: boot the disk ``make image`` built, and talk to it.

A :class:`Guest` boots ``build/image/disk.img`` (through a copy-on-write
overlay, so the built disk stays as built) with the settings measured in
``../shared/notes/fullsystem-rig.md``: TCG (KVM does not work on these
machines), one vCPU, the disk on virtio-scsi (slots ``sda2``/``sda3``), no NIC,
``-no-reboot`` (a reset ends QEMU; :meth:`Guest.restart_after_reset` powers it
on again on the same overlay, as the device's own reboot). The channel disk
``make image`` builds beside it (``channel.img``) is a second, read-only disk
(virtio-blk, ``vda``, mounted at ``/channel`` in the guest). The first serial
port is the console: GRUB, the initrd, then a root shell that the image's
``serial-getty@ttyS0`` autologin drop-in opens.

The console is read by a thread into one growing transcript (also written to
``console.log`` in the work dir). A test waits for what it needs in it with a
deadline (:meth:`Guest.expect`), and runs commands in the guest with
:meth:`Guest.run`, which returns their output and exit status: the home for
any check of the real system (systemd, journald, the watchdog).

QEMU is killed when the ``with`` block ends, however it ends.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
#: What ``make image`` builds; ``KRUXOS_IMAGE`` points a run at another disk.
IMAGE = Path(os.environ.get("KRUXOS_IMAGE", REPO / "build" / "image" / "disk.img"))
#: The read-only channel disk built beside it (``/channel`` in the guest).
CHANNEL = IMAGE.with_name("channel.img")
TOOLS = ("qemu-system-x86_64", "qemu-img")

#: Deadlines (limits, not expectations): an idle boot to the shell takes ~20-30 s
#: under TCG; a loaded machine (the other engineer's tests on both cores) is slower.
BOOT_TIMEOUT = 240.0
COMMAND_TIMEOUT = 60.0

#: The autologin shell's prompt: ``root@kruxos-qemu:~#``.
PROMPT = re.compile(rb"root@[\w-]+:[^\r\n]*# ")


class GuestError(AssertionError):
    """The guest did not do what a test waited for; the message has the console's tail."""


@dataclass(frozen=True)
class Result:
    """A command run in the guest: its output (stdout and stderr, ``\\n`` line ends)."""

    command: str
    output: str
    status: int

    def check(self) -> Result:
        """This result, or an error naming the command, its status and its output."""
        if self.status != 0:
            raise GuestError(f"in the guest, {self.command!r} exited {self.status}:\n"
                             f"{self.output}")
        return self


class Guest:
    """One boot of the device's disk (``with Guest(workdir) as guest:``)."""

    def __init__(self, workdir: Path, image: Path = IMAGE, memory_mib: int = 1024,
                 channel: Path | None = CHANNEL) -> None:
        self.workdir = workdir
        self.image = image
        self.channel = channel if channel is not None and channel.exists() else None
        self.memory_mib = memory_mib
        self.overlay = workdir / "disk.qcow2"
        self.console_log = workdir / "console.log"
        self._console = bytearray()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._shell = False
        #: How many times QEMU was started on this overlay (a reset ends QEMU).
        self.boots = 0

    # -- the machine ------------------------------------------------------------------

    def start(self) -> None:
        """Boot the disk (a fresh overlay on the first start; kept across restarts)."""
        if not self.image.exists():
            raise GuestError(f"no disk image at {self.image}: build it with `make image` "
                             "(make system-test does)")
        if not self.overlay.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(self.image), str(self.overlay)], check=True, timeout=60)
        self._console.clear()
        self._shell = False
        self.boots += 1
        self._proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35",
             "-smp", "1", "-m", str(self.memory_mib), "-display", "none", "-monitor", "none",
             "-no-reboot", "-nic", "none",
             # The machine's watchdog: PID 1 arms it (RuntimeWatchdogSec=); a
             # hung guest is reset, which -no-reboot turns into QEMU exiting.
             "-device", "i6300esb", "-action", "watchdog=reset",
             "-device", "virtio-scsi-pci,id=scsi0",
             "-drive", f"file={self.overlay},format=qcow2,if=none,id=disk0,cache=writeback",
             "-device", "scsi-hd,drive=disk0,bus=scsi0.0,scsi-id=0",
             *self._channel_disk(),
             "-serial", "stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()

    def _channel_disk(self) -> list[str]:
        """The channel disk, read-only, on virtio-blk (``vda``), when there is one.

        Not a second SCSI disk: the kernel names SCSI disks in the order their
        probes finish, and with two of them the device's disk came up as
        ``sdb`` on one boot in four, so ``/dev/sda2`` named no slot.
        """
        if self.channel is None:
            return []
        return ["-drive", f"file={self.channel},format=raw,if=none,id=disk1,readonly=on",
                "-device", "virtio-blk-pci,drive=disk1"]

    def restart_after_reset(self, timeout: float) -> None:
        """Wait for the guest's reset to end QEMU (``-no-reboot``), then boot it again.

        The same overlay stays attached, so this is the device's own reboot:
        the disk keeps everything the guest wrote before the reset.
        """
        try:
            wait_for(self.exited, timeout, "the guest to reset (QEMU to exit)", every=0.2,
                     context=self.tail)
        except AssertionError as exc:
            raise GuestError(str(exc)) from None
        self.kill()
        self.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with open(self.console_log, "ab") as log:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self._console.extend(chunk)
                log.write(chunk)
                log.flush()

    def kill(self) -> None:
        """End QEMU at once (SIGKILL: a power cut, as far as the disk is concerned)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def exited(self) -> str | None:
        """Why waiting is pointless: QEMU ended (the guest reset or powered off)."""
        if self._proc is None:
            return "QEMU is not running"
        code = self._proc.poll()
        return None if code is None else f"QEMU exited with status {code}"

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.kill()

    # -- the console --------------------------------------------------------------------

    def console(self) -> str:
        """Everything the serial port printed since the last start (``\\r\\n`` -> ``\\n``)."""
        with self._lock:
            raw = bytes(self._console)
        return raw.replace(b"\r\n", b"\n").decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        return "\n--- console (last lines) ---\n" + "\n".join(
            self.console().splitlines()[-lines:])

    def mark(self) -> int:
        """The transcript's length now: :meth:`expect` after it sees only what follows."""
        with self._lock:
            return len(self._console)

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float, what: str,
               since: int = 0) -> re.Match[bytes]:
        """The first match of ``pattern`` in the console after offset ``since``."""
        regex = re.compile(pattern) if isinstance(pattern, bytes) else pattern

        def found() -> re.Match[bytes] | None:
            with self._lock:
                return regex.search(self._console, since)

        try:
            return wait_for(found, timeout, what, every=0.1, context=self.tail,
                            abort=lambda: None if found() else self.exited())
        except AssertionError as exc:
            raise GuestError(str(exc)) from None

    def send(self, text: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise GuestError("QEMU is not running")
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    # -- the shell ----------------------------------------------------------------------

    def wait_for_shell(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait for the autologin shell, then make it quiet: no echo, no prompt."""
        self.expect(PROMPT, timeout, "the root shell on the serial console")
        token = secrets.token_hex(4)
        since = self.mark()
        # The marker is printed joined, but typed split: its echo cannot match.
        self.send("stty -echo; PS1=; PS2=; export PS1 PS2; "
                  "bind 'set enable-bracketed-paste off' 2>/dev/null; "
                  f"echo KX''READY{token}\n")
        self.expect(f"KXREADY{token}\n".encode().replace(b"\n", b"\r?\n"), COMMAND_TIMEOUT,
                    "the shell to take its settings", since)
        self._shell = True

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run ``command`` (sh syntax) in the guest: its output and exit status.

        The command travels base64-encoded, so no quoting can break it; stdin is
        ``/dev/null``, stderr joins stdout.
        """
        if not self._shell:
            self.wait_for_shell()
        token = secrets.token_hex(4)
        payload = base64.b64encode(command.encode()).decode()
        since = self.mark()
        self.send(f"echo KX''BEGIN{token}; sh -c \"$(echo {payload} | base64 -d)\" "
                  f"</dev/null 2>&1; echo KX''END{token} $?\n")
        end = self.expect(re.compile(rb"KXEND" + token.encode() + rb" (\d+)\r?\n"), timeout,
                          f"the end of {command!r} in the guest", since)
        begin = self.expect(re.compile(rb"KXBEGIN" + token.encode() + rb"\r?\n"), 1.0,
                            f"the start of {command!r}'s output", since)
        with self._lock:
            raw = bytes(self._console[begin.end():end.start()])
        output = raw.replace(b"\r\n", b"\n").decode("utf-8", "replace")
        return Result(command, output, int(end.group(1)))


def wait_for_daemon(guest: Guest, timeout: float) -> dict[str, object]:
    """Wait until ``kruxos daemon`` holds its data dir; its ``update status --json``.

    systemd calls the unit ``active`` once the process is started
    (``Type=exec``), which under TCG is many seconds before the daemon has
    imported, made its data dir and taken its lock: a check of what the
    daemon does must wait for this, not for the unit.
    """
    def running() -> dict[str, object] | None:
        answer = guest.run("kruxos update status --json")
        try:
            doc = json.loads(answer.output)
        except ValueError:
            return None
        daemon = doc.get("daemon") if isinstance(doc, dict) else None
        return doc if isinstance(daemon, dict) and daemon.get("running") else None

    try:
        return wait_for(running, timeout, "kruxos daemon to hold its data dir", every=2.0,
                        context=guest.tail)
    except AssertionError as exc:
        raise GuestError(str(exc)) from None
