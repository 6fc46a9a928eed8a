"""Run one action against the device and report an :class:`Outcome`.

The executor is where side effects live: bootloader writes, the installer,
health probes, the reboot command, and the state file entries the next pass
will observe. It never raises for an action that fails — a failed download or
an unreachable health endpoint is an outcome to record, not a crash — and it
writes state before any reboot, so the next boot finds it on disk.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from reconciler import health
from reconciler.actions import (
    Action,
    ArmTrial,
    Blocked,
    Confirm,
    ConfirmContainer,
    ConfirmServices,
    Disarm,
    EndOverride,
    KeepServices,
    LiftBlock,
    NoteFallback,
    Nothing,
    Outcome,
    ProbeContainer,
    ProbeHealth,
    ProbeServices,
    PullImage,
    Reboot,
    RefuseRequest,
    ReleaseRebootSlot,
    RepairBootEnv,
    RestartServices,
    RestoreServices,
    RestoreState,
    Rollback,
    RollbackContainer,
    RollbackServices,
    Stage,
    StageServices,
    SwapContainer,
    SwitchServices,
    TakeRebootSlot,
    TakeRequest,
    Wait,
)
from reconciler.boot import Backend, BootState
from reconciler.config import Device
from reconciler.decide import count_probe
from reconciler.errors import KruxosError, ReleaseError, Stopped, TemporaryError, short_error
from reconciler.failpoints import failpoint
from reconciler.fleet.device import FleetSlots
from reconciler.inbox import FileInbox, Inbox
from reconciler.observed import SlotName
from reconciler.overrides import RESUME_FILE, apply_request
from reconciler.release.metadata import ServiceArtifact
from reconciler.service_runtime import ServiceRuntime
from reconciler.services import Record
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore

if TYPE_CHECKING:
    from reconciler.containers import ContainerRuntime


class Stager(Protocol):
    """Writes a release into a slot (the streaming installer behind it)."""

    def stage(self, version: str, slot: SlotName, policy: UpdatePolicy,
              should_stop: Callable[[], bool],
              progress: Callable[[int | None, int], None]) -> str:
        """Stage ``version`` into ``slot``; return a summary; raise KruxosError on refusal.

        ``progress(done, total)`` reports the bytes verified, written and recorded in
        the durable resume point, so what a crash keeps (``done`` is ``None`` when
        writing begins); the executor keeps it in the state file."""


Rebooter = Callable[[str], None]


def command_rebooter(device: Device) -> Rebooter:
    """Reboot by running the device config's reboot command."""

    def reboot(reason: str) -> None:
        subprocess.run(list(device.reboot_command), check=True, timeout=60)

    return reboot


def probe_health(url: str, timeout_s: float) -> health.HealthAnswer:
    """The real health probe (HTTP), as the executor's default prober."""
    return health.probe(url, timeout=timeout_s)


@dataclass
class Executor:
    """Runs actions; ``clock`` and ``rebooter`` are injected so tests control them."""

    device: Device
    store: StateStore
    backend: Backend
    stager: Stager
    rebooter: Rebooter
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    should_stop: Callable[[], bool] = lambda: False
    prober: Callable[[str, float], health.HealthAnswer] = probe_health
    last_probe_healthy: bool = False
    spec_revision: str | None = None
    boot_id: Callable[[], str] | None = None
    inbox: Inbox | None = None
    services: ServiceRuntime | None = None
    containers: ContainerRuntime | None = None

    def _boot_id(self) -> str:
        return self.boot_id() if self.boot_id is not None else self.device.current_boot_id()

    def run(self, action: Action, policy: UpdatePolicy | None,
            spec_revision: str | None = None) -> Outcome:
        """Run ``action``; every failure becomes a failed :class:`Outcome`.

        ``spec_revision`` is the spec in force, kept with the loop breaker's count.
        """
        started = time.monotonic()
        self.spec_revision = spec_revision
        try:
            detail = self._dispatch(action, policy)
            return Outcome(True, detail, time.monotonic() - started)
        except TemporaryError as exc:
            code = "stopped" if isinstance(exc, Stopped) else "unavailable"
            return Outcome(False, str(exc), time.monotonic() - started, exc.delay, code)
        except ReleaseError as exc:
            return Outcome(False, str(exc), time.monotonic() - started, code="refused")
        except (KruxosError, OSError, subprocess.SubprocessError) as exc:
            return Outcome(False, str(exc), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - an action failure is an outcome, never a crash
            return Outcome(False, short_error(exc), time.monotonic() - started)

    def _dispatch(self, action: Action, policy: UpdatePolicy | None) -> str:
        handlers: dict[type, Callable[[Any, UpdatePolicy | None], str]] = {
            Nothing: _nothing, Wait: _nothing, Blocked: _nothing,
            Stage: self._stage, ArmTrial: self._arm, ProbeHealth: self._probe,
            Confirm: self._confirm, Rollback: self._rollback, Reboot: self._reboot,
            NoteFallback: self._note_fallback, Disarm: self._disarm,
            RepairBootEnv: self._repair, TakeRequest: self._take_request,
            EndOverride: self._end_override, LiftBlock: self._lift_block,
            RestoreState: self._restore,
            StageServices: self._stage_services, SwitchServices: self._switch_services,
            RestartServices: self._restart_services, ProbeServices: self._probe_services,
            ConfirmServices: self._confirm_services, RestoreServices: self._restore_services,
            KeepServices: self._confirm_services, RollbackServices: self._rollback_services,
            RefuseRequest: self._refuse_request,
            PullImage: lambda a, p: self._engine().pull(a),
            SwapContainer: lambda a, p: self._engine().swap(a, self.store, self.clock()),
            ProbeContainer: lambda a, p: self._engine().probe(a, self.store, self.prober,
                                                              self.clock()),
            ConfirmContainer: lambda a, p: self._engine().confirm(a, self.store),
            RollbackContainer: lambda a, p: self._engine().rollback(a, self.store,
                                                                    self.clock()),
            TakeRebootSlot: lambda a, p: self._fleet().take(a, p),
            ReleaseRebootSlot: lambda a, p: self._fleet().release(a, p),
        }
        return handlers[type(action)](action, policy)

    def _fleet(self) -> FleetSlots:
        """The device's reboot slot on the spec's FleetLock server."""
        return FleetSlots(self.device, self.store, self.clock, self._boot_id)

    def _engine(self) -> ContainerRuntime:
        """The container runtime of a ``runtime: docker`` device (made at first use)."""
        if self.containers is None:
            from reconciler.observe import runtime_for

            self.containers = runtime_for(self.device)
        return self.containers

    def _now(self) -> str:
        return self.clock().isoformat()

    def _stage(self, action: Stage, policy: UpdatePolicy | None) -> str:
        if policy is None:
            raise KruxosError("no valid spec: nothing is staged")
        kept = self.store.section("staging")
        resumed = int(kept.get("done", 0)) if kept.get("version") == action.version else 0

        def progress(done: int | None, total: int) -> None:
            self.store.put("staging", {"version": action.version, "slot": action.slot,
                                       "done": resumed if done is None else done,
                                       "total": total})

        summary = self.stager.stage(action.version, action.slot, policy, self.should_stop,
                                    progress)
        failpoint("stage.written")
        self.store.put("staging", None)
        return summary

    def _arm(self, action: ArmTrial, policy: UpdatePolicy | None) -> str:
        """Capture the trial's health policy on disk first, then arm the bootloader. A
        reboot first makes sure the fleet's reboot slot is still this device's (fencing)."""
        tp = action.policy
        fenced = self._fleet().fence(action.version, policy) if action.reboot else None

        def capture(doc: dict[str, Any]) -> None:
            doc.pop("trial", None)
            doc.pop("request", None)  # a request is for the boot it was made in
            doc["trial_policy"] = {
                "slot": action.slot, "version": action.version, "url": tp.url,
                "interval_s": tp.interval.total_seconds(),
                "timeout_s": tp.timeout.total_seconds(),
                "success_threshold": tp.success_threshold, "automatic": tp.automatic,
                "armed_at": self._now()}

        self.store.update(capture)
        self.backend.arm_trial(action.slot, self.device.trial_tries)
        failpoint("trial.armed")
        if action.reboot:
            self._count_forward_reboot()
        armed = f"armed slot {action.slot} for {self.device.trial_tries} trial boot(s)"
        if not action.reboot:
            return f"{armed}; it activates on the next reboot"
        self.rebooter(action.reason)
        return f"{armed}; {fenced}; rebooting" if fenced else f"{armed}; rebooting"

    def _count_forward_reboot(self) -> None:
        """One more reboot into a trial, before it happens (the loop breaker reads it)."""

        def count(doc: dict[str, Any]) -> None:
            record = doc.get("reboots") or {}
            same = record.get("spec_revision") == self.spec_revision
            doc["reboots"] = {"count": int(record.get("count", 0)) + 1 if same else 1,
                              "spec_revision": self.spec_revision}

        self.store.update(count)

    def _probe(self, action: ProbeHealth, policy: UpdatePolicy | None) -> str:
        """Ask once; the counters of this boot's progress are counted by ``count_probe``."""
        answer = self.prober(self.device.map_url(action.url), action.timeout_s)
        progress = count_probe(action.progress, answer.healthy, answer.summary(),
                               health.rollback_reason(answer, timed_out=True), self.clock())
        record = {"boot_id": self._boot_id(), "slot": action.slot,
                  "first_probe_at": _iso(progress.first_probe_at),
                  "last_probe_at": _iso(progress.last_probe_at),
                  "consecutive_ok": progress.consecutive_ok, "probes": progress.probes,
                  "last_summary": progress.last_summary, "last_answer": answer.to_dict(),
                  "timeout_reason": progress.timeout_reason}
        self.last_probe_healthy = answer.healthy
        self.store.put("trial", record)
        return answer.summary()

    def _confirm(self, action: Confirm, policy: UpdatePolicy | None) -> str:
        self.backend.mark_good(action.slot)
        failpoint("confirm.marked")

        def clear(doc: dict[str, Any]) -> None:
            for key in ("trial", "trial_policy", "rollback", "staging", "request", "reboots"):
                doc.pop(key, None)

        self.store.update(clear)
        return f"slot {action.slot} marked good with {action.version}{self._retire_overlays()}"

    def _retire_overlays(self) -> str:
        """After a slot update: drop the service overlays of root images no slot holds (the
        new image carries its own services). A failure here does not undo the confirm."""
        runtime = self.services
        if runtime is None or not runtime.exists():
            return ""
        try:
            keep = runtime.slot_roots()
            removed = runtime.store.retire(keep)

            def prune(doc: dict[str, Any]) -> None:
                for section in ("service_releases", "service_last"):
                    kept = {r: v for r, v in (doc.get(section) or {}).items() if r in keep}
                    doc[section] = kept or None

            self.store.update(prune)
        except (OSError, KruxosError) as exc:
            return f"; old service overlays not retired ({short_error(exc)})"
        roots = sum(1 for name in removed if name.startswith("roots/"))
        return f"; {roots} old root image(s)' service overlays retired" if roots else ""

    def _rollback(self, action: Rollback, policy: UpdatePolicy | None) -> str:
        """Keep the failure on the data disk, then roll back: a data disk that cannot be
        written does not hold the rollback (the slot's bad mark in the boot env keeps it
        from booting again; the blocked version is then only in this outcome)."""
        try:
            self._remember_failure(action.from_version, action.reason, keep_request=True)
            unkept = ""
        except (OSError, KruxosError) as exc:
            unkept = f"; the failure could not be kept on the data disk ({short_error(exc)})"
        self.backend.rollback(action.reason)
        failpoint("rollback.env-written")
        self._drop_request()  # asked and done: a crash before here leaves it to be done again
        left = self.backend.read().marks.get(action.from_slot)
        self.rebooter(action.reason)
        return (f"slot {action.from_slot} marked {left}; rebooting into slot {action.to_slot}, "
                f"the default again{unkept}")

    def _reboot(self, action: Reboot, policy: UpdatePolicy | None) -> str:
        self.store.put("request", None)  # a request is for the boot it was made in
        self.rebooter(action.reason)
        return f"rebooting into slot {action.slot}"

    def _repair(self, action: RepairBootEnv, policy: UpdatePolicy | None) -> str:
        marks = {slot: mark for slot, mark in action.marks}
        state = BootState(default=action.default, trial=action.trial, tries_left=action.tries,
                          marks=marks)
        done = self.backend.repair(state)
        detail = f"boot env rewritten: default {action.default}, marks " + ", ".join(
            f"{slot} {mark}" for slot, mark in action.marks)
        return f"{detail}; {done}" if done else detail

    def _take_request(self, action: TakeRequest, policy: UpdatePolicy | None) -> str:
        """Write what the request asks, then take it out of the inbox (even if that failed)."""
        try:
            if action.forget is not None:
                self.backend.set_mark(action.forget, "bad")
            if action.request.kind == "cancel":
                (self.device.data_dir / RESUME_FILE).unlink(missing_ok=True)
            boot_id = self._boot_id()
            self.store.update(lambda doc: apply_request(doc, action, boot_id,
                                                        self.spec_revision))
            failpoint("request.applied")
        finally:
            (self.inbox or FileInbox(self.device.data_dir)).take(action.request.id)
        return f"request {action.request.kind} taken"

    def _end_override(self, action: EndOverride, policy: UpdatePolicy | None) -> str:
        self.store.put("override", None)
        return f"the pin of {action.version} is gone"

    def _lift_block(self, action: LiftBlock, policy: UpdatePolicy | None) -> str:
        self.store.put("failed", None)
        return f"{action.version} is no longer blocked"

    def _restore(self, action: RestoreState, policy: UpdatePolicy | None) -> str:
        sections = {name: dict(value) for name, value in action.sections}
        self.store.update(lambda doc: doc.update(sections))
        return "written back: " + ", ".join(sections)

    # ---- service updates (reconciler.service_rules): no reboot -------------------------

    def _runtime(self) -> ServiceRuntime:
        if self.services is None:
            raise KruxosError("this device has no service runtime: no service update")
        return self.services

    def _update_doc(self) -> dict[str, Any]:
        update = self.store.section("service_update")
        if not update:
            raise KruxosError("no service update is recorded in the state file")
        return dict(update)

    def _put_update(self, change: Callable[[dict[str, Any]], None]) -> None:
        def apply(doc: dict[str, Any]) -> None:
            update = dict(doc.get("service_update") or {})
            change(update)
            doc["service_update"] = update
        self.store.update(apply)

    def _stage_services(self, action: StageServices, policy: UpdatePolicy | None) -> str:
        """Fetch and verify the artifacts into the store, then record the staged update."""
        if policy is None:
            raise KruxosError("no valid spec: nothing is staged")
        runtime = self._runtime()
        root, root_version = runtime.root()
        release = runtime.release(policy, action.version)
        summary = runtime.stage(policy, release, action.services)
        failpoint("services.staged")
        by_name = {a.name: a for a in release.services}
        running = (self.store.section("service_releases") or {}).get(root) or root_version
        self.store.put("service_update", {
            "version": action.version, "from_version": running,
            "services": list(action.services), "step": "staged", "root_sha256": root,
            "artifacts": {n: _artifact_json(by_name.get(n)) for n in action.services}})
        return f"staged the services of {action.version}: {summary}"

    def _switch_services(self, action: SwitchServices, policy: UpdatePolicy | None) -> str:
        """Capture the health policy, switch each service in the store (uncommitted), then
        record the step; a crash between is read back from the store by ``observe``."""
        runtime = self._runtime()
        tp = action.policy
        captured = {"url": tp.url, "interval_s": tp.interval.total_seconds(),
                    "timeout_s": tp.timeout.total_seconds(),
                    "success_threshold": tp.success_threshold, "automatic": tp.automatic,
                    "switched_at": self._now()}
        self._put_update(lambda u: u.update(policy=captured))
        update = self._update_doc()
        root, root_version = update["root_sha256"], runtime.root()[1]
        artifacts = update.get("artifacts") or {}
        copied = []
        for name in action.services:
            target = _artifact(name, artifacts.get(name))
            record = runtime.store.record(root, name)
            if record is not None and record.uncommitted:
                continue  # switched before a crash: the record is the truth
            if target is not None and target.data_dir is not None:
                copied.append(runtime.copy_data(name, update["from_version"], target.data_dir))
            runtime.store.switch(root, root_version, name, target)
        failpoint("services.switched")
        self._put_update(lambda u: u.update(step="switched"))
        said = f"; {', '.join(copied)} first" if copied else ""
        return f"switched {', '.join(action.services)} to {action.version} (uncommitted){said}"

    def _restart_services(self, action: RestartServices, policy: UpdatePolicy | None) -> str:
        done = self._runtime().restart(action.services)
        failpoint("services.restarted")
        self._put_update(lambda u: u.update(step="restarted"))
        return done

    def _probe_services(self, action: ProbeServices, policy: UpdatePolicy | None) -> str:
        """Ask once; only the affected services count (the health JSON's ``services``)."""
        raw = self.prober(self.device.map_url(action.url), action.timeout_s)
        answer = affected_answer(raw, action.services)
        progress = count_probe(action.progress, answer.healthy, answer.summary(),
                               health.rollback_reason(answer, timed_out=True), self.clock())
        record = {"first_probe_at": _iso(progress.first_probe_at),
                  "last_probe_at": _iso(progress.last_probe_at),
                  "consecutive_ok": progress.consecutive_ok, "probes": progress.probes,
                  "last_summary": progress.last_summary, "last_answer": raw.to_dict(),
                  "timeout_reason": progress.timeout_reason}
        self._put_update(lambda u: u.update(health=record))
        return answer.summary()

    def _confirm_services(self, action: ConfirmServices | KeepServices,
                          policy: UpdatePolicy | None) -> str:
        """Commit each switch in the store, then record the release that runs and what a
        hand rollback would undo."""
        runtime = self._runtime()
        update = self._update_doc()
        root = update["root_sha256"]
        for name in action.services:
            record = runtime.store.record(root, name)
            if record is not None and record.uncommitted:
                runtime.store.commit(root, name)
            if update.get("from_version"):  # the copy a hand rollback puts back is kept
                runtime.store.copies.prune(name, {update["from_version"]})
        failpoint("services.committed")

        last = {"version": action.version, "from_version": update.get("from_version"),
                "services": list(action.services), "artifacts": update.get("artifacts") or {}}
        if isinstance(action, KeepServices):
            last["kept"] = action.reason

        def done(doc: dict[str, Any]) -> None:
            releases = dict(doc.get("service_releases") or {})
            releases[root] = action.version
            doc["service_releases"] = releases
            doc["service_last"] = {**(doc.get("service_last") or {}), root: last}
            doc.pop("service_update", None)

        self.store.update(done)
        names = ', '.join(action.services) or 'no service'
        if isinstance(action, KeepServices):
            return f"{action.version} kept: {names} committed as they are, never rolled back"
        return f"{action.version} confirmed: {names} committed, no reboot"

    def _restore_services(self, action: RestoreServices,
                          policy: UpdatePolicy | None) -> str:
        """Keep the failure first (so a crash finishes the restore, never confirms it), then
        restore each switched service, restart them, and end the update. Never gated."""
        runtime = self._runtime()
        now = self._now()

        def begin(doc: dict[str, Any]) -> None:
            update = dict(doc.get("service_update") or {})
            update["restoring"] = action.reason
            doc["service_update"] = update
            doc["failed"] = {"version": action.version, "reason": action.reason, "at": now}
            _drop_rollback_request(doc)

        return self._restore_from(runtime, begin, action)

    def _rollback_services(self, action: RollbackServices,
                           policy: UpdatePolicy | None) -> str:
        """A person's rollback of the last committed service update: written as a restore
        that began (the version blocked, the request gone), so a crash anywhere after is
        finished by the next pass as any restore is; then the same restore."""
        runtime = self._runtime()
        root = runtime.root()[0]
        last = (self.store.section("service_last") or {}).get(root) or {}
        if last.get("version") != action.version:
            raise KruxosError(f"no committed service update of {action.version} on the booted "
                              "root image to roll back")
        now = self._now()

        def begin(doc: dict[str, Any]) -> None:
            doc["service_update"] = {
                "version": action.version, "from_version": last.get("from_version"),
                "services": list(action.services), "step": "restarted", "root_sha256": root,
                "artifacts": last.get("artifacts") or {}, "restoring": action.reason}
            doc["failed"] = {"version": action.version, "reason": action.reason, "at": now}
            _drop_rollback_request(doc)

        return self._restore_from(runtime, begin, action)

    def _restore_from(self, runtime: ServiceRuntime, begin: Callable[[dict[str, Any]], None],
                      action: RestoreServices | RollbackServices) -> str:
        """Record the restore as begun (``begin`` edits the state document), then finish it."""
        self.store.update(begin)
        failpoint("services.restoring")
        return self._finish_restore(runtime, action.version, action.from_version,
                                    action.services, action.reason)

    def _finish_restore(self, runtime: ServiceRuntime, version: str, from_version: str | None,
                        services: tuple[str, ...], reason: str) -> str:
        """Each service's previous artifact current again (an uncommitted switch restored, a
        committed one reverted; each idempotent), its data copy put back, then the restart;
        the update ends, and a rolled back committed one is no longer what runs."""
        update = self._update_doc()
        root, artifacts = update["root_sha256"], update.get("artifacts") or {}
        data = []
        for name in services:
            record = runtime.store.record(root, name)
            if record is not None and record.uncommitted:
                runtime.store.restore(root, name)
            elif record is not None and _runs(record, artifacts.get(name)):
                runtime.store.revert(root, name)
            target = _artifact(name, artifacts.get(name))
            if target is not None and target.data_dir is not None and from_version:
                data.append(runtime.put_back_data(name, from_version, target.data_dir))
        restarted = runtime.restart(services)
        booted_version = runtime.root()[1]

        def done(doc: dict[str, Any]) -> None:
            doc.pop("service_update", None)
            last = dict(doc.get("service_last") or {})
            if (last.get(root) or {}).get("version") != version:
                return  # an update never committed: what runs did not change
            del last[root]
            doc["service_last"] = last or None
            releases = dict(doc.get("service_releases") or {})
            releases.pop(root, None)
            if from_version and from_version != booted_version:
                releases[root] = from_version
            doc["service_releases"] = releases or None

        self.store.update(done)
        back = from_version or "the previous services"
        said = f"; {'; '.join(data)}" if data else ""
        return (f"restored {back} ({restarted}){said}, no reboot; {version} blocked: "
                f"{reason}")

    def _refuse_request(self, action: RefuseRequest, policy: UpdatePolicy | None) -> str:
        def drop(doc: dict[str, Any]) -> None:
            if (doc.get("request") or {}).get("kind") == action.request:
                doc.pop("request", None)

        self.store.update(drop)
        return f"the {action.request} request is forgotten: {action.reason}"

    def _disarm(self, action: Disarm, policy: UpdatePolicy | None) -> str:
        self.backend.set_mark(action.slot, "staged")
        return f"slot {action.slot} disarmed; it keeps {action.version} staged"

    def _note_fallback(self, action: NoteFallback, policy: UpdatePolicy | None) -> str:
        self._remember_failure(action.version, action.reason)
        return f"{action.version} recorded as failed on trial"

    def _drop_request(self) -> None:
        """Forget a person's request once its boot env write is done (a full data disk
        does not hold the rollback: the request is bound to this boot anyway)."""
        if not self.store.section("request"):
            return
        try:
            self.store.put("request", None)
        except (OSError, KruxosError):
            pass

    def _remember_failure(self, version: str | None, reason: str,
                          keep_request: bool = False) -> None:
        """Keep the failed version and the rollback reason on disk before rebooting."""
        now = self._now()

        def change(doc: dict[str, Any]) -> None:
            doc["rollback"] = {"from_version": version, "reason": reason, "at": now}
            if version:
                doc["failed"] = {"version": version, "reason": reason, "at": now}
            doc.pop("trial", None)
            doc.pop("trial_policy", None)
            if not keep_request:
                doc.pop("request", None)

        self.store.update(change)


def _drop_rollback_request(doc: dict[str, Any]) -> None:
    """A person's rollback request is done with once its rollback (or refusal) is written."""
    if (doc.get("request") or {}).get("kind") == "rollback":
        doc.pop("request", None)


def _runs(record: Record, artifact: Any) -> bool:
    """Whether a committed record still runs what the update switched to (not reverted)."""
    if not isinstance(artifact, dict):
        return record.current is None and record.previous is not None
    return record.current is not None and record.current.sha256 == artifact.get("sha256")


def _artifact_json(artifact: ServiceArtifact | None) -> dict[str, Any] | None:
    if artifact is None:
        return None
    doc: dict[str, Any] = {"version": artifact.version, "sha256": artifact.sha256,
                           "size": artifact.size}
    if artifact.data_dir is not None:
        doc["data_dir"] = artifact.data_dir
    if artifact.migrates_data:
        doc["migrates_data"] = True
    return doc


def _artifact(name: str, value: Any) -> ServiceArtifact | None:
    """The artifact a staged update recorded (what the store switches to; ``None``: removed)."""
    if not isinstance(value, dict):
        return None
    data_dir = value.get("data_dir")
    return ServiceArtifact(name, str(value["version"]), "", int(value["size"]),
                           str(value["sha256"]), 1, (),
                           str(data_dir) if data_dir is not None else None,
                           value.get("migrates_data") is True)


def affected_answer(answer: health.HealthAnswer,
                    services: tuple[str, ...]) -> health.HealthAnswer:
    """The answer as a service update judges it: only ``services`` count.

    A 200 is healthy; no answer, or a failure that names no service, is not
    (it cannot say the affected ones are well); otherwise it is healthy unless
    an affected service is named failing (or too many were named to tell)."""
    if answer.healthy or answer.status is None or not answer.failing:
        return answer
    failing = {n: w for n, w in answer.failing.items() if n in services or n == "..."}
    return health.HealthAnswer(not failing, answer.status, failing, answer.error)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _nothing(action: Any, policy: UpdatePolicy | None) -> str:
    return ""
