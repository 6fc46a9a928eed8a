"""One reconcile pass: observe -> decide -> audit (fsynced) -> execute -> outcome.

:class:`Reconciler` runs one pass at a time over the device's state and never
raises out of a pass: an exception is recorded once and the next pass follows
after a backoff. Its collaborators come in as :class:`Parts` (in-memory fakes
in tests and in the model checker). The loop that calls it, with its triggers,
is :mod:`reconciler.daemon`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler import failpoints
from reconciler.actions import (
    Action,
    Blocked,
    Nothing,
    Outcome,
    ProbeContainer,
    ProbeHealth,
    RestoreState,
    Rollback,
    RollbackContainer,
    SwapContainer,
    TakeRequest,
    Wait,
    reboots,
)
from reconciler.audit import AuditTrail, Retention, UnopenedTrail, open_trail
from reconciler.boot import Backend
from reconciler.channelwatch import ChannelWatch, Refusal, RefusalSink
from reconciler.config import Device
from reconciler.decide import decide, trial_policy_of
from reconciler.errors import AuditError, KruxosError, SpecError, short_error
from reconciler.executor import Executor, Rebooter, Stager, command_rebooter, probe_health
from reconciler.health import HealthAnswer
from reconciler.inbox import FileInbox, Inbox
from reconciler.logline import log
from reconciler.machine import DeviceMachine, Machine
from reconciler.observe import backend_for, fleet_url, observe, runtime_for
from reconciler.observed import ChannelView, ObservedState
from reconciler.overrides import STOPPING_REQUESTS
from reconciler.service_runtime import ServiceRuntime
from reconciler.specfile import LoadedSpec, SpecKeeper
from reconciler.staging import InstallerStager
from reconciler.store import StateStore

AUDIT_RETRY = timedelta(seconds=5)
#: What still runs when its decision cannot be recorded: judging a trial and rolling
#: it back (the precedence rule: nothing holds a rollback, an unwritable trail neither),
#: a container's trial too.
UNRECORDED_OK = (ProbeHealth, Rollback, ProbeContainer, RollbackContainer)
#: After a failed pass the next one waits 1 s, doubling per failure in a row up to this,
#: each delay spread by ±20 % so that devices failing together do not retry together.
BACKOFF_CAP = timedelta(seconds=15)

if TYPE_CHECKING:
    from reconciler.containers import ContainerRuntime


def backoff(failures: int, rng: random.Random) -> timedelta:
    """The pause after ``failures`` failed passes in a row, with jitter."""
    base = min(BACKOFF_CAP.total_seconds(), 2.0 ** max(0, failures - 1))
    return timedelta(seconds=base * rng.uniform(0.8, 1.2))




@dataclass
class Parts:
    """The reconciler's collaborators: each one replaceable by a fake in tests.

    The model checker of crash and power-cut runs drives exactly this seam:
    the real ``decide`` and the real executor over stores, boot envs,
    channels, stagers, probes and reboots of its own.
    """

    store: StateStore
    audit: AuditTrail | UnopenedTrail
    backend: Backend
    channel: Any
    stager: Stager
    prober: Callable[[str, float], HealthAnswer]
    rebooter: Rebooter
    machine: Machine
    keeper: SpecKeeper
    inbox: Inbox | None = None  # None: the device's inbox of request files
    services: ServiceRuntime | None = None  # None: no service updates (fakes of old tests)
    containers: ContainerRuntime | None = None  # a runtime: docker device's engine

    @classmethod
    def real(cls, device: Device, clock: Callable[[], datetime],
             rebooter: Rebooter | None = None,
             on_refused: RefusalSink | None = None) -> Parts:
        """The collaborators of a real device: its files, its bootloader, HTTP, reboot.

        ``on_refused`` records what the channel serves and the device refuses
        (once per refused file, once per set of releases it cannot install)."""
        store = StateStore(device.data_dir)
        audit = open_trail(store, device.audit_dir, clock,
                           Retention(device.audit_keep_days, device.audit_keep_bytes))
        backend = backend_for(device)
        channel = ChannelWatch(device, store, clock, on_refused=on_refused)
        return cls(store, audit, backend, channel,
                   InstallerStager(device, backend, channel), probe_health,
                   rebooter or command_rebooter(device), DeviceMachine(device),
                   SpecKeeper(device.spec_path, device.data_dir), FileInbox(device.data_dir),
                   ServiceRuntime(device, channel),
                   runtime_for(device) if device.container is not None else None)


@dataclass
class PassResult:
    """What one reconcile pass did and when the loop should look again."""

    action: Action | None
    outcome: Outcome | None
    wake_at: datetime | None
    rebooting: bool = False


class Reconciler:
    """One reconcile pass at a time over the device's disk state (no memory of steps)."""

    def __init__(self, device: Device, *, rebooter: Rebooter | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 parts: Parts | None = None) -> None:
        """``parts``: the collaborators, injected (in-memory fakes in tests); by default
        the real ones on the device's files. ``rebooter``/``clock`` are shortcuts."""
        self.device = device
        self.clock = clock
        parts = parts or Parts.real(device, clock, rebooter,
                                    on_refused=self._record_channel_refusal)
        self.store, self.audit, self.backend = parts.store, parts.audit, parts.backend
        for record in getattr(self.audit, "opened_with", ()):
            log(f"#{record.seq} {record.action}: {record.reason}")
        self.channel = parts.channel
        self.machine = parts.machine
        self.keeper = parts.keeper
        self.inbox: Inbox = parts.inbox or FileInbox(device.data_dir)
        self.stopping = False
        self.executor = Executor(device, self.store, self.backend, parts.stager, parts.rebooter,
                                 clock, should_stop=self._should_stop, prober=parts.prober,
                                 boot_id=parts.machine.boot_id, inbox=self.inbox,
                                 services=parts.services, containers=parts.containers)
        self._suspend_checked = 0.0
        self.spec: LoadedSpec | None = None
        self.on_trial = False
        self._failures = 0
        self._spec_lock = threading.RLock()
        self._recorded_problems: set[str] = set()
        self._rng = random.Random()
        self._pending_restore: tuple[tuple[str, Any], ...] = ()
        self._audit_said: str | None = None

    def _should_stop(self) -> bool:
        """Stop a long step (a download) on SIGTERM or when the spec turns ``suspend`` on.

        Checked at every block boundary; the spec file is re-read at most twice a
        second so the check stays cheap.
        """
        if self.stopping or self.inbox.waiting(STOPPING_REQUESTS):
            return True
        now = time.monotonic()
        if now - self._suspend_checked < 0.5:
            return False
        self._suspend_checked = now
        try:
            loaded = self._current_spec()  # a rejection during a long staging is recorded now
        except Exception as exc:  # noqa: BLE001 - a check never breaks the download
            log(f"cannot check the spec during the step: {short_error(exc)}")
            return False
        return bool(loaded and loaded.policy.spec.suspend)

    def run_pass(self, actor: str) -> PassResult:
        """Decide and run one step; no exception ends the daemon.

        An unwritable audit trail stops every action (and the pass is tried
        again soon); any other exception is recorded once, as an ``event``
        with a short reason, and the next pass follows after a backoff with
        jitter, so a bad input can never turn into a crash loop.
        """
        try:
            result = self._pass(actor)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any bad input
            return self._pass_failed(exc)
        self._failures = 0
        return result

    def _pass_failed(self, exc: Exception) -> PassResult:
        self._failures += 1
        pause = backoff(self._failures, self._rng)
        self._problem("pass-failed", f"a reconcile pass failed: {short_error(exc)}; passes "
                      "go on with a backoff")
        return PassResult(None, None, self.clock() + pause)

    def _problem(self, action: str, reason: str) -> None:
        """Record a problem once per distinct reason (an audit ``event``), and log it."""
        if reason in self._recorded_problems:
            return
        log(reason)
        try:
            self.audit.event("daemon", action, reason)
        except Exception as exc:  # noqa: BLE001 - a problem report must not raise
            log(f"cannot record it in the audit trail: {short_error(exc)}")
            return
        self._recorded_problems.add(reason)

    def _guarded(self, what: str, step: Callable[[], Any]) -> Any:
        """Run a step a trial's judgement does not depend on; a failure is recorded once."""
        try:
            return step()
        except AuditError:
            raise
        except Exception as exc:  # noqa: BLE001 - see run_pass
            self._problem("pass-failed", f"{what} failed: {short_error(exc)}; the pass goes "
                          "on without it")
            return None

    def _replenish(self) -> None:
        """Make the reserve for rollback records whole again once the disk has room."""
        was_full = self.store.reserve.in_use
        if self.store.reserve.replenish() and was_full:
            self.audit.event("daemon", "disk-space", "the data disk has room again: the space "
                             "kept for rollback records is reserved again")
        elif not was_full and self.store.reserve.in_use:
            log("the data disk is full")

    def _recovered(self) -> tuple[tuple[str, Any], ...]:
        """When both copies of the state were lost, what the audit trail gives back.

        Read once per loss and kept until the ``restore-state`` step wrote it:
        a version that failed on trial stays blocked, and a trial's first probe
        still starts its deadline. Only the executor writes them back.
        """
        if not self.store.lost:
            return self._pending_restore
        self.store.lost = False
        facts: list[tuple[str, Any]] = []
        started = self.audit.trial_started()
        if started is not None:
            facts.append(("trial", {
                "boot_id": self.machine.boot_id(), "slot": started["slot"],
                "first_probe_at": started["first_probe_at"],
                "last_probe_at": started["first_probe_at"], "probes": 1,
                "consecutive_ok": 0}))
        failed = self.audit.failed_version()
        if failed is not None:
            facts.append(("failed", failed))
        self._pending_restore = tuple(facts)
        return self._pending_restore

    def _reopen_audit(self) -> None:
        """A trail that could not be opened is tried again at every pass."""
        if isinstance(self.audit, UnopenedTrail):
            self.audit = open_trail(self.store, self.device.audit_dir, self.clock,
                                    Retention(self.device.audit_keep_days,
                                              self.device.audit_keep_bytes))
            for record in getattr(self.audit, "opened_with", ()):
                log(f"#{record.seq} {record.action}: {record.reason}")

    def _housekeeping(self) -> None:
        """Before a pass: the reserve, the repairs of the data dir; never holds the pass."""
        try:
            self._replenish()
            for note in self.store.take_repairs():
                log(f"state: {note}")
                self.audit.event("daemon", "state-repaired", note)
        except AuditError as exc:
            log(f"cannot record it in the audit trail: {short_error(exc)}")

    def _pass(self, actor: str) -> PassResult:
        self._reopen_audit()
        self.store.load()
        self._housekeeping()
        spec = self._current_spec()
        now = self.clock()
        view = self._channel_view(spec, now)
        revision = spec.revision if spec else None
        observed = observe(self.device, self.store, self.backend, view, revision,
                           self._recovered(), self.machine, self.inbox,
                           self.executor.containers, fleet_url=fleet_url(spec))
        action = decide(spec.policy if spec else None, observed, now)
        self.on_trial = observed.on_trial
        try:
            return self._act(actor, spec, observed, action)
        except AuditError as exc:
            said = f"audit trail cannot be written, no action runs: {exc}"
            if said != self._audit_said:
                log(said)
                self._audit_said = said
            return PassResult(action, None, now + AUDIT_RETRY)

    def _channel_view(self, spec: LoadedSpec | None, now: datetime) -> ChannelView:
        """The verified channel; any failure (even a URL that does not parse) is a view error."""
        if spec is None:
            return ChannelView(error="no valid spec: the channel is not known")
        try:
            view: ChannelView = self.channel.view(spec.policy, spec.revision, now)
            return view
        except Exception as exc:  # noqa: BLE001 - the channel never stops a pass
            return ChannelView(error=f"channel: {short_error(exc)}",
                               retry_after=timedelta(seconds=30))

    def _act(self, actor: str, spec: LoadedSpec | None, observed: ObservedState,
             action: Action) -> PassResult:
        fields = {"spec_revision": spec.revision if spec else None,
                  "spec_file": str(spec.path) if spec else None,
                  "observed": observed.summary()}
        request = {"details": _request_details(action)} \
            if isinstance(action, TakeRequest) else {}  # the command that asked follows it
        try:
            record, repeated = self.audit.decision(actor, action.kind, action.reason,
                                                   dedupe=not _never_folded(action), **fields,
                                                   **request)
        except AuditError as exc:
            if not isinstance(action, UNRECORDED_OK):
                raise
            return self._act_unrecorded(action, spec, observed, exc)
        if not repeated:
            log(f"#{record.seq} {action.kind}: {action.reason}")
        if failpoints.ARMED:
            failpoints.failpoint(f"decided.{action.kind}")
        outcome = self.executor.run(action, spec.policy if spec else None,
                                    spec.revision if spec else None)
        if isinstance(action, RestoreState) and outcome.ok:
            self._pending_restore = ()
        self.audit.outcome(record.seq, actor, action.kind, outcome.text, outcome.duration_s,
                           details={"code": outcome.code}, **fields)
        if not outcome.ok:
            log(f"#{record.seq} {action.kind} failed: {outcome.detail}")
        if isinstance(action, TakeRequest) and action.request.kind == "pin" and spec:
            # a person may ask for a release published a moment ago
            self._guarded("fetching the channel", lambda: self.channel.refresh(spec.policy,
                                                                              self.clock()))
        rebooting = outcome.ok and reboots(action)
        wake = self._wake_at(action, outcome, spec, observed)
        return PassResult(action, outcome, wake, rebooting)

    def _act_unrecorded(self, action: Action, spec: LoadedSpec | None,
                        observed: ObservedState, error: AuditError) -> PassResult:
        """Judge a trial even when the trail cannot be written: nothing holds a rollback.

        The one exception to write-ahead (``docs/states.md``): a health probe and a
        rollback run without their record, which goes to the journal instead."""
        log(f"{error}; {action.kind} runs anyway, recorded here only: {action.reason}")
        outcome = self.executor.run(action, spec.policy if spec else None,
                                    spec.revision if spec else None)
        log(f"{action.kind} (unrecorded): {outcome.text}")
        rebooting = outcome.ok and reboots(action)
        return PassResult(action, outcome, self._wake_at(action, outcome, spec, observed),
                          rebooting)

    def _wake_at(self, action: Action, outcome: Outcome, spec: LoadedSpec | None,
                 observed: ObservedState) -> datetime | None:
        """When to look again: a probe waits one interval (or until the deadline)."""
        now = self.clock()
        if isinstance(action, ProbeHealth) and not self.executor.last_probe_healthy:
            hp = observed.trial_policy or trial_policy_of(spec.policy if spec else None)
            started = observed.health.first_probe_at if observed.health else None
            deadline = (started or now) + hp.timeout
            return max(now, min(now + hp.interval, deadline))
        if outcome.retry_after_s is not None:
            return now + timedelta(seconds=outcome.retry_after_s)
        if outcome.code == "refused" and isinstance(action, SwapContainer):
            return now  # a release whose container did not start is rolled back at once
        if not outcome.ok:
            return now + timedelta(seconds=30)
        if isinstance(action, Wait | Nothing) and action.until is not None:
            return action.until
        if isinstance(action, Wait):
            return None
        if isinstance(action, Nothing | Blocked) or spec is None:
            return None  # only a trigger or the resync can change the answer
        return now  # a step ran: look again at once, the next step may be due

    def _current_spec(self) -> LoadedSpec | None:
        """The spec in force; a rejected file is recorded once per content revision.

        A file that breaks the reader in any way is a rejected file; a failure
        to keep the last good copy (a full disk) keeps the spec of the last pass.
        """
        with self._spec_lock:
            return self._read_spec()

    def check_spec(self) -> None:
        """Read the spec now (the watcher, while a pass may run): a rejection is recorded
        within moments of the file being written, not when the current step ends."""
        try:
            self._current_spec()
        except Exception as exc:  # noqa: BLE001 - the watcher must go on watching
            log(f"cannot check the spec: {short_error(exc)}")

    def _read_spec(self) -> LoadedSpec | None:
        try:
            loaded, error = self.keeper.refresh()
        except OSError as exc:
            self._problem("pass-failed", f"cannot keep a copy of the last good spec: "
                          f"{short_error(exc)}")
            return self.spec
        except Exception as exc:  # noqa: BLE001 - a hostile file must not stop the pass
            loaded, error = self.spec, SpecError(f"{self.device.spec_path}: cannot be read "
                                                 f"as a spec ({short_error(exc)})")
        if error is not None:
            self._record_rejection(error)
        self.spec = loaded
        return loaded

    def _record_rejection(self, error: KruxosError) -> None:
        bad = self.keeper.file_revision or "unreadable"  # the bytes the keeper read, once
        if self.keeper.rejected() == bad:
            return
        kept = self.keeper.copy_revision()
        reason = (f"{error} (keeping the last good spec {kept})" if kept else
                  f"{error} (no good spec was read before it: nothing new starts until one "
                  "is written)")
        self.audit.event("spec", "spec-rejected", reason, spec_revision=bad,
                         spec_file=str(self.device.spec_path))
        self.keeper.note_rejected(bad)
        log(f"spec rejected: {reason}")

    def _record_channel_refusal(self, refusal: Refusal) -> None:
        """A refused metadata file, or releases it refuses to install, recorded once each
        whatever the pass decides."""
        self.audit.event("daemon", refusal.action, refusal.reason,
                         details={**refusal.details, "channel": self.device.channel_name})
        log(f"{refusal.action.replace('-', ' ')}: {refusal.reason}")


def _request_details(action: TakeRequest) -> dict[str, str]:
    """What a command follows its request by: its id in the inbox, and the version a pin
    asks for (a later pin of the same version asks for the same thing)."""
    details = {"request": action.request.id}
    if action.request.version is not None:
        details["version"] = action.request.version
    return details


def _never_folded(action: Action) -> bool:
    """Reboots and a person's requests are each recorded, never counted as a repeat."""
    return reboots(action) or isinstance(action, TakeRequest)
