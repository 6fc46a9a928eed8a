"""``kruxos daemon``: the asyncio loop that reconciles the device with its spec.

Level-triggered: every pass reads the spec and the device from disk, asks
``decide`` for one step, writes the decision to the audit trail (fsynced), runs
the step, then writes its outcome. Triggers only wake the loop, they carry no
state:

- a change of the spec file (watchfiles, debounced to 50 ms),
- a maintenance window opening (an apscheduler date trigger),
- the time a ``Wait`` asked for (the next health probe, a channel retry),
- a periodic resync (``resync`` in the device config),
- ``SIGHUP`` (a person or the CLI asking for a pass now).

``SIGTERM`` stops between steps (an ongoing download stops at a block
boundary and resumes on the next start). A second daemon on the same data dir
is refused: one writer at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from watchfiles import Change, awatch

from reconciler.config import Device
from reconciler.durable import sweep_temporaries
from reconciler.errors import AuditError, LockHeldError
from reconciler.inbox import INBOX
from reconciler.logline import log
from reconciler.reconcile import Reconciler
from reconciler.store import data_dir_lock
from reconciler.windows import next_open

#: How often a daemon waiting for a command's data-dir lock looks again (seconds).
LOCK_POLL = 0.1


class Daemon:
    """The long-running loop around :class:`Reconciler` and its triggers."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._reconciler: Reconciler | None = None
        self._wake = asyncio.Event()
        self._actor = "daemon"
        self._stop = asyncio.Event()

    def wake(self, actor: str) -> None:
        """Ask for a pass now; ``actor`` is recorded as what caused it."""
        self._actor = actor
        self._wake.set()

    @property
    def reconciler(self) -> Reconciler:
        """The reconciler, built only once the data-dir lock is held."""
        assert self._reconciler is not None, "the daemon is not running"
        return self._reconciler

    def stop(self) -> None:
        """Stop between steps (SIGTERM)."""
        if self._reconciler is not None:
            self._reconciler.stopping = True
        self._stop.set()
        self._wake.set()

    async def run(self) -> int:
        """Hold the data-dir lock and reconcile until stopped."""
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, lambda: self.wake("cli"))):
            loop.add_signal_handler(sig, handler)
        with contextlib.ExitStack() as held:
            if not await self._lock(held):
                log("stopped")
                return 0
            for name in sweep_temporaries(self.device.data_dir, keep_dirs=(INBOX,)):
                log(f"removed {name}, left by a write a crash cut off")
            # Only the lock holder may open the audit trail: opening repairs it.
            self._reconciler = await self._open()
            if self._reconciler is None:
                log("stopped")
                return 0
            scheduler = AsyncIOScheduler(timezone=UTC, event_loop=loop)
            scheduler.start()
            watcher = asyncio.create_task(self._watch_spec())
            await self._watching(watcher)
            try:
                await self._loop(scheduler)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                scheduler.shutdown(wait=False)
        log("stopped")
        return 0

    async def _lock(self, held: contextlib.ExitStack) -> bool:
        """Take the data-dir lock into ``held``; ``False`` if stopped before it was free.

        Another daemon holding it is refused at once (:class:`LockHeldError`):
        one writer. A command holding it (``kruxos update apply`` when it found
        no daemon, e.g. while this one was restarting) is waited for, as systemd
        would otherwise restart a refused daemon in a loop: the daemon says so
        once and starts when the command ends."""
        said = None
        while not self._stop.is_set():
            try:
                held.enter_context(data_dir_lock(self.device.data_dir, "kruxos daemon"))
                return True
            except LockHeldError as exc:
                if exc.by_daemon:
                    raise
                if said != exc.holder:
                    said = exc.holder
                    log(f"waiting for {exc.holder} to finish: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), LOCK_POLL)
        return False

    async def _open(self) -> Reconciler | None:
        """The reconciler; a trail it may not write is said once and tried again, no crash loop.

        A damaged audit trail (not one a re-anchor explains) means no action may
        run: the daemon stays up, says why, and looks again every resync period
        or when woken, instead of exiting and being restarted over and over.
        """
        said = None
        while not self._stop.is_set():
            try:
                return Reconciler(self.device)
            except AuditError as exc:
                if str(exc) != said:
                    said = str(exc)
                    log(f"no action can run: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.device.resync.total_seconds())
            self._wake.clear()
        return None

    async def _watching(self, watcher: asyncio.Task[None]) -> None:
        """Let the spec watcher register its watch before the first pass.

        A change made before the watch exists is seen by the first pass; one made
        after it wakes the loop: no edit can fall between the two. The watcher
        registers its inotify watch before its first suspension, so one turn of
        the loop is enough; the log line tells people and tests it is up.
        """
        await asyncio.sleep(0)
        if not watcher.done():
            log(f"watching {self.device.spec_path} for changes")

    async def _loop(self, scheduler: AsyncIOScheduler) -> None:
        log(f"started on {self.device.source} (spec {self.device.spec_path})")
        actor = "daemon"
        while not self._stop.is_set():
            result = await asyncio.to_thread(self.reconciler.run_pass, actor)
            if result.rebooting:
                log("waiting for the reboot")
                await self._stop.wait()
                return
            self._schedule_window(scheduler)
            actor = await self._sleep_until(result.wake_at, actor)

    async def _sleep_until(self, wake_at: datetime | None, actor: str) -> str:
        """Wait for a trigger, the wanted time, or the periodic resync; return the actor.

        A pass due at once continues the chain of the pass before it, so a stage
        started by a spec edit and the reboot that follows both name the spec.
        """
        now = self.reconciler.clock()
        if wake_at is not None and wake_at <= now and not self._wake.is_set():
            return actor
        resync = now + self.device.resync
        target = min(wake_at, resync) if wake_at else resync
        timeout = max(0.0, (target - now).total_seconds())
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        if self._wake.is_set():
            self._wake.clear()
            return self._actor
        if wake_at is not None and wake_at < resync:
            return "health" if self.reconciler.on_trial else actor
        return "resync"

    def _schedule_window(self, scheduler: AsyncIOScheduler) -> None:
        """An apscheduler job that wakes the loop when the next window opens."""
        spec = self.reconciler.spec
        windows = spec.policy.spec.rollout.window_values() if spec else ()
        opens = next_open(windows, self.reconciler.clock()) if windows else None
        if opens is None or opens <= self.reconciler.clock():
            with contextlib.suppress(Exception):
                scheduler.remove_job("window")
            return
        scheduler.add_job(self._window_opened, DateTrigger(run_date=opens), id="window",
                          replace_existing=True)

    async def _window_opened(self) -> None:
        self.wake("schedule")

    async def _watch_spec(self) -> None:
        """Wake the loop within the debounce of any change to the spec file."""
        path = self.device.spec_path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        async for changes in awatch(path.parent, debounce=50, step=20,
                                    stop_event=self._stop, recursive=False):
            if any(Path(p).resolve() == path and c != Change.deleted for c, p in changes):
                self.wake("spec")
                await asyncio.to_thread(self.reconciler.check_spec)





def run_daemon(device: Device) -> int:
    """Entry point of ``kruxos daemon``."""
    return asyncio.run(Daemon(device).run())
