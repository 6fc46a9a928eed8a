"""How a CLI command reaches the reconciler: through the daemon, or by itself.

One writer at a time. When a daemon holds the data-dir lock, the command drops
its request into the inbox and wakes the daemon (``SIGHUP``); everything the
command then shows — bars, outcomes — is read back from the state file and the
audit trail the daemon writes. When no daemon runs, the command takes the lock
itself and runs the same reconcile passes in a worker thread, so the output is
drawn from the same files either way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.actions import Blocked, Nothing, Wait
from reconciler.audit import AuditReader, AuditRecord
from reconciler.config import Device
from reconciler.errors import LockHeldError
from reconciler.inbox import daemon_pid, submit, wake_daemon
from reconciler.store import StateStore, data_dir_lock


@dataclass
class Link:
    """A connection to whoever reconciles this device."""

    device: Device
    pid: int | None
    _worker: threading.Thread | None = None
    _reconciler: Any = None

    @property
    def store(self) -> StateStore:
        return StateStore(self.device.data_dir)

    def audit(self) -> AuditReader:
        """The audit trail, read-only."""
        return AuditReader(self.store, self.device.audit_dir)

    def head(self) -> int:
        """The sequence number of the newest audit record."""
        return self.audit().head()[0]

    def send(self, kind: str, **fields: Any) -> Path:
        """Submit a request and make sure someone takes it now."""
        path = submit(self.device.data_dir, kind, **fields)
        if self.pid is None:
            self._run_passes()
            return path
        pid = daemon_pid(self.device.data_dir) or self.pid
        try:
            wake_daemon(pid)
        except ProcessLookupError:
            pass  # the daemon is restarting (a reboot); it takes the inbox at its first pass
        return path

    def wait_taken(self, path: Path, timeout: float = 30.0) -> None:
        """Block until the request left the inbox (the reconciler recorded it)."""
        deadline = time.monotonic() + timeout
        while path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the reconciler did not take the request within "
                                   f"{timeout:g}s (is `kruxos daemon` stuck? see its log)")
            time.sleep(0.05)

    def records_after(self, seq: int) -> Iterator[AuditRecord]:
        """Audit records newer than ``seq``."""
        return self.audit().records(after=seq)

    def busy(self) -> bool:
        """True while an in-process reconcile is still running."""
        return self._worker is not None and self._worker.is_alive()

    def stop_local(self) -> None:
        """Stop an in-process reconcile between steps (or at a block boundary)."""
        if self._reconciler is not None:
            self._reconciler.stopping = True
        if self._worker is not None:
            self._worker.join()

    def _run_passes(self) -> None:
        """Reconcile in this process until a pass has nothing more to do right now."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self._reconciler is None:
            from reconciler.logline import silence
            from reconciler.reconcile import Reconciler

            silence()  # the command's screen is drawn from the audit trail
            self._reconciler = Reconciler(self.device)
        self._reconciler.stopping = False
        self._worker = threading.Thread(target=self._passes, daemon=True)
        self._worker.start()

    def _passes(self) -> None:
        for _ in range(50):
            result = self._reconciler.run_pass("cli")
            if result.rebooting or result.outcome is None or not result.outcome.ok:
                return
            if isinstance(result.action, Wait | Nothing | Blocked) or self._reconciler.stopping:
                return


#: How long a command waits for a lock holder that has not named itself yet (a
#: daemon starting) before it gives up.
NAMELESS_HOLDER_WAIT = 5.0


@contextlib.contextmanager
def connect(device: Device) -> Iterator[Link]:
    """A link to the running daemon, or, when none runs, the data-dir lock held here.

    A daemon that takes the lock between the look for it and the lock (it was
    starting) is used as if it had been found; another command holding the
    lock is refused, naming it: one writer at a time."""
    with contextlib.ExitStack() as held:
        pid = _daemon_or_lock(device, held)
        if pid is not None:
            yield Link(device, pid)
            return
        link = Link(device, None)
        try:
            yield link
        finally:
            link.stop_local()


def _daemon_or_lock(device: Device, held: contextlib.ExitStack) -> int | None:
    """The running daemon's pid, or ``None`` with the data-dir lock entered into ``held``."""
    deadline = time.monotonic() + NAMELESS_HOLDER_WAIT
    while True:
        pid = daemon_pid(device.data_dir)
        if pid is not None:
            return pid
        try:
            held.enter_context(data_dir_lock(device.data_dir, "kruxos update"))
            return None
        except LockHeldError as exc:
            nameless = exc.holder == "another process"
            if not (exc.by_daemon or nameless) or time.monotonic() > deadline:
                raise LockHeldError(f"{exc}: another command is changing this device; "
                                    "run this one again when it has finished",
                                    exc.holder) from None
        time.sleep(0.05)
