"""Build :class:`ObservedState` from the device: slot identities, boot env, state file.

Everything is read fresh on each pass. A slot's version comes from its own
bytes (the identity record in its last 4 KiB), its mark and the trial counter
from the bootloader environment, and the rest (health progress of this boot,
the last rollback, a failed version, a staging in progress) from the state
file on the data dir.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.boot import Backend, BootState, open_backend
from reconciler.config import Device, rollout_id
from reconciler.container_rules import RELEASE, UPDATE, container_state
from reconciler.errors import BootEnvError, KruxosError, short_error
from reconciler.inbox import FileInbox, Inbox
from reconciler.machine import DeviceMachine, Machine
from reconciler.observed import (
    SLOTS,
    ChannelView,
    ContainerUpdate,
    ContainerView,
    FailedVersion,
    FleetSlot,
    HealthProgress,
    ObservedState,
    Override,
    Request,
    ServiceLast,
    ServiceStep,
    ServiceUpdate,
    Slot,
    Staging,
    TrialPolicy,
)
from reconciler.semver import is_semver
from reconciler.services import read_overlays
from reconciler.store import StateStore

if TYPE_CHECKING:
    from reconciler.containers import ContainerRuntime


def backend_for(device: Device) -> Backend:
    """The bootloader backend named in the device config."""
    return open_backend(device.bootloader, device.boot_env)


def read_boot_state(backend: Backend) -> tuple[BootState, str | None]:
    """The boot state, or the backend's safe answer plus the error when it is corrupt."""
    try:
        return backend.read(), None
    except BootEnvError as exc:
        safe = getattr(backend, "safe_state", None)
        return (safe() if safe else BootState(default="A")), str(exc)


def observe(device: Device, store: StateStore, backend: Backend,
            channel: ChannelView | None = None,
            spec_revision: str | None = None,
            recovered: tuple[tuple[str, Any], ...] = (),
            machine: Machine | None = None,
            inbox: Inbox | None = None,
            containers: ContainerRuntime | None = None,
            fleet_url: str | None = None) -> ObservedState:
    """What is on the device now; ``channel`` is the last verified channel view.

    ``spec_revision`` is the spec in force: reboots counted under another
    revision do not count (a new spec clears the loop breaker). ``recovered``:
    facts of a lost state file that the audit trail gave back, to be written.
    ``machine``: the running system (by default the device's own); ``inbox``: where a
    person's requests wait (by default the data dir's). ``containers``: the engine of a
    ``runtime: docker`` device, which has no slots and no bootloader. ``fleet_url``: the
    spec's FleetLock server (``rollout.fleetLock.url``), if it names one.
    """
    if device.container is not None:
        return _observe_container(device, store, channel, recovered, inbox,
                                  containers or runtime_for(device))
    machine = machine or DeviceMachine(device)
    boot, boot_problem = read_boot_state(backend)
    booted = machine.booted_slot()
    boot_id = machine.boot_id()
    doc, state_problem = _load_state(store)
    slots = {name: _slot(device, machine, boot, name) for name in SLOTS}
    root = _root_of(machine, booted)
    failed = _failed(doc.get("failed"))
    return ObservedState(
        booted=booted,
        slots=slots,
        default=boot.default,
        trial=boot.trial,
        tries_left=boot.tries_left,
        fallback_trace=boot.fallback_reason,
        health=_health(doc.get("trial"), boot_id, booted),
        rolled_back_from=_get(doc, "rollback", "from_version"),
        rollback_reason=_get(doc, "rollback", "reason"),
        staging=_staging(doc.get("staging")),
        failed=failed,
        channel=channel or ChannelView(error="channel not fetched yet"),
        override=_override(doc.get("override")),
        request=_request(doc.get("request"), boot_id, booted, slots[booted].version),
        trial_policy=_trial_policy(doc.get("trial_policy"), booted),
        trial_policy_version=_get(doc, "trial_policy", "version"),
        forward_reboots=_forward_reboots(doc.get("reboots"), spec_revision),
        disk_full=store.reserve.in_use,
        requests=_requests(inbox or FileInbox(device.data_dir)),
        boot_env_problem=boot_problem,
        state_problem=state_problem,
        recovered=recovered,
        service_release=_service_release(doc.get("service_releases"), root),
        service_update=_service_update(doc.get("service_update"), root, device),
        service_last=_service_last(doc.get("service_last"), root),
        overlays=_overlays(device, root),
        fleet=_fleet(doc.get("fleet_lock"), boot_id, device, fleet_url),
    )


def fleet_url(spec: Any) -> str | None:
    """The FleetLock server a loaded spec names (``rollout.fleetLock.url``), or ``None``."""
    lock = spec.policy.spec.rollout.fleet_lock if spec is not None else None
    return lock.url if lock is not None else None


def _fleet(value: Any, boot_id: str, device: Device, url: str | None) -> FleetSlot | None:
    """The reboot slot as the state file recorded its last call; ``None`` when the spec
    names no server and no slot is held (nothing to take, nothing to give back)."""
    record = value if isinstance(value, dict) else {}
    held = record.get("held") is True
    if url is None and not held:
        return None
    group = record.get("group") if held and isinstance(record.get("group"), str) \
        else device.fleet_group
    problem = None
    if rollout_id(device) is None:
        problem = f"no deviceId, and {device.machine_id} gives no machine id"
    answer = record.get("answer")
    return FleetSlot(str(group), held=held, taken_this_boot=held and
                     record.get("taken_boot") == boot_id,
                     released_this_boot=record.get("released_boot") == boot_id,
                     asked_at=_time(record.get("asked_at")),
                     answer=answer[:300] if isinstance(answer, str) else None, problem=problem)


def runtime_for(device: Device) -> ContainerRuntime:
    """The engine of a ``runtime: docker`` device. The Docker SDK is loaded here, at first
    use: a slot device's daemon and every command on it start without it."""
    from reconciler.containers import ContainerRuntime

    return ContainerRuntime(device)


def _observe_container(device: Device, store: StateStore, channel: ChannelView | None,
                       recovered: tuple[tuple[str, Any], ...], inbox: Inbox | None,
                       containers: ContainerRuntime) -> ObservedState:
    """A container device: what its engine reports, and the update the state file recorded."""
    doc, state_problem = _load_state(store)
    view = channel or ChannelView(error="channel not fetched yet")
    release: dict[str, Any] = doc[RELEASE] if isinstance(doc.get(RELEASE), dict) else {}
    engine = replace(containers.view(view, release), update=_container_update(doc.get(UPDATE)))
    return container_state(
        engine, failed=_failed(doc.get("failed")), channel=view,
        request=_container_request(doc.get("request"), engine),
        override=_override(doc.get("override")), disk_full=store.reserve.in_use,
        requests=_requests(inbox or FileInbox(device.data_dir)),
        state_problem=state_problem, recovered=recovered)


def _container_request(value: Any, view: ContainerView) -> Any:
    """A person's confirm or rollback, only for the update (or the release) it was asked
    for: one left over by a crash never acts on a later update."""
    if not isinstance(value, dict):
        return None
    bound = view.update.version if view.update is not None else view.version
    if value.get("version") != bound:
        return None
    kind = value.get("kind")
    return kind if kind in ("confirm", "rollback") else None


def _container_update(value: Any) -> ContainerUpdate | None:
    """The container update the state file recorded before its step; a rollback that began
    is finished (its failure is kept beside it)."""
    if not isinstance(value, dict) or not isinstance(value.get("version"), str):
        return None
    step = value.get("step")
    return ContainerUpdate(
        value["version"], _text(value.get("from_version")), str(value.get("digest") or ""),
        step if step in ("swapping", "started", "start-failed") else "swapping",
        _text(value.get("old_image_id")), _service_health(value.get("health")),
        _service_policy(value.get("policy")), _text(value.get("problem")))


def _overlays(device: Device, root: str | None) -> tuple[tuple[str, str | None, str | None],
                                                         ...]:
    """The booted root image's service overlays as people read them (versions only)."""
    if root is None:
        return ()
    try:
        records = read_overlays(device.services_dir, root)
    except KruxosError:
        return ()
    return tuple((name, r.current.version if r.current else None,
                  r.previous.version if r.previous else None)
                 for name, r in sorted(records.items())
                 if r.current is not None or r.previous is not None)  # not: restored to none


def _root_of(machine: Machine, booted: Any) -> str | None:
    """The SHA-256 of the booted slot's root image, as its own identity names it."""
    try:
        identity, _ = machine.slot_identity(booted)
    except OSError:
        return None
    return identity.sha256 if identity is not None and identity.sha256 else None


def _service_release(value: Any, root: str | None) -> str | None:
    """The release whose services run on the booted root image (overlays belong to a root:
    another root's service update does not apply to this one)."""
    if not isinstance(value, dict) or root is None:
        return None
    version = value.get(root)
    return version if isinstance(version, str) and version else None


#: What a restore that began looks like to ``decide``: past any deadline, so the restore
#: runs again (it is idempotent) and nothing else happens first.
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


def _service_update(value: Any, root: str | None, device: Device) -> ServiceUpdate | None:
    """The service update on its way on the booted root image, its step as the service
    store shows it: a switch the store made and the state file had not recorded yet
    (a crash between the two) is ``switched``; a restore that began is finished."""
    if not isinstance(value, dict) or root is None or value.get("root_sha256") != root:
        return None
    services = tuple(str(n) for n in value.get("services") or ())
    step: ServiceStep = "staged"
    if value.get("step") in ("switched", "restarted"):
        step = "switched" if value["step"] == "switched" else "restarted"
    policy = _service_policy(value.get("policy"))
    health = _service_health(value.get("health"))
    if isinstance(value.get("restoring"), str):
        reason = value["restoring"]
        return ServiceUpdate(value["version"], value.get("from_version"), services,
                             "restarted", HealthProgress(first_probe_at=_LONG_AGO,
                                                         timeout_reason=reason),
                             TrialPolicy(timeout=timedelta(0)))
    if step == "staged" and _any_uncommitted(device, root, services):
        step = "switched"
    return ServiceUpdate(value["version"], value.get("from_version"), services, step,
                         health, policy, _irreversible(value.get("artifacts"), services))


def _service_last(value: Any, root: str | None) -> ServiceLast | None:
    """The last service update committed on the booted root image (another root's does not
    apply: overlays belong to a root release)."""
    if not isinstance(value, dict) or root is None or not isinstance(value.get(root), dict):
        return None
    last = value[root]
    if not isinstance(last.get("version"), str):
        return None
    services = tuple(str(n) for n in last.get("services") or ())
    return ServiceLast(last["version"], last.get("from_version"), services,
                       _irreversible(last.get("artifacts"), services))


def _irreversible(artifacts: Any, services: tuple[str, ...]) -> tuple[str, ...]:
    """The services whose new artifact migrates data and declares no data dir to copy."""
    if not isinstance(artifacts, dict):
        return ()
    return tuple(n for n in services if isinstance(artifacts.get(n), dict)
                 and artifacts[n].get("migrates_data") is True
                 and artifacts[n].get("data_dir") is None)


def _any_uncommitted(device: Device, root: str, services: tuple[str, ...]) -> bool:
    try:
        overlays = read_overlays(device.services_dir, root)
    except KruxosError:
        return False
    return any(overlays[n].uncommitted for n in services if n in overlays)


def _service_policy(value: Any) -> TrialPolicy | None:
    """The health policy captured at the switch (as a trial's at arming)."""
    return _policy(value) if isinstance(value, dict) else None


def _policy(value: dict[str, Any]) -> TrialPolicy | None:
    """A captured health policy, or ``None`` when the record is not one."""
    try:
        return TrialPolicy(str(value["url"]), timedelta(seconds=float(value["interval_s"])),
                           timedelta(seconds=float(value["timeout_s"])),
                           max(1, int(value["success_threshold"])), bool(value["automatic"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _service_health(value: Any) -> HealthProgress | None:
    return _progress(value) if isinstance(value, dict) else None


def _progress(value: dict[str, Any]) -> HealthProgress:
    """The health progress a trial's or a service update's record holds."""
    return HealthProgress(
        first_probe_at=_time(value.get("first_probe_at")),
        last_probe_at=_time(value.get("last_probe_at")),
        consecutive_ok=int(value.get("consecutive_ok", 0)),
        probes=int(value.get("probes", 0)),
        last_summary=value.get("last_summary"),
        timeout_reason=value.get("timeout_reason") or HealthProgress().timeout_reason,
    )


def _requests(inbox: Inbox) -> tuple[Request, ...]:
    """The inbox's requests not taken yet, oldest first (decide takes one per pass)."""
    out = []
    for request_id, value in inbox.pending():
        at = value.get("at")
        out.append(Request(
            id=request_id, kind=value["kind"], by=str(value.get("by") or "?")[:80],
            at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
            version=_text(value.get("version")),
            answer=_text(value.get("answer") or value.get("reboot"))))
    return tuple(out)


def _text(value: Any) -> str | None:
    return value[:80] if isinstance(value, str) and value else None


def _forward_reboots(value: Any, spec_revision: str | None) -> int:
    """Daemon reboots into a trial in a row, under the spec in force, not yet confirmed."""
    if not isinstance(value, dict) or value.get("spec_revision") != spec_revision:
        return 0
    count = value.get("count", 0)
    return count if isinstance(count, int) and count > 0 else 0


def _load_state(store: StateStore) -> tuple[dict[str, Any], str | None]:
    """The state document, or an empty one and why it could not be read."""
    try:
        return store.load(), None
    except KruxosError as exc:
        return {}, short_error(exc)


def _slot(device: Device, machine: Machine, boot: BootState, name: Any) -> Slot:
    """A slot as its own bytes name it; a foreign or non-semver identity is a named problem."""
    missing = False
    try:
        identity, problem = machine.slot_identity(name)
    except FileNotFoundError as exc:
        identity, missing = None, True
        problem = f"its device {exc.filename or device.slot_device(name)} does not exist"
    except OSError as exc:
        identity, problem = None, f"cannot read the slot's identity: {exc.strerror or exc}"
    mark = boot.marks.get(name, "empty")
    if identity is None and mark != "bad":
        mark = "empty"
    version = identity.version if identity else None
    if version is not None and not is_semver(version):
        problem = f"its identity names version {version[:40]!r}, not a semantic version"
    return Slot(name, device.slot_device(name), version, mark, problem, missing)


def _get(doc: dict[str, Any], section: str, key: str) -> Any:
    value = doc.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _time(value: Any) -> datetime | None:
    """An ISO time from the state file as an aware UTC time; anything else is absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _trial_policy(value: Any, booted: str) -> TrialPolicy | None:
    """The health policy captured when the trial of the booted slot was armed."""
    if not isinstance(value, dict) or value.get("slot") != booted:
        return None
    return _policy(value)


def _health(trial: Any, boot_id: str, booted: str) -> HealthProgress | None:
    """This boot's health progress; a record from an earlier boot does not count."""
    if not isinstance(trial, dict) or trial.get("boot_id") != boot_id:
        return None
    if trial.get("slot") != booted:
        return None
    return _progress(trial)


def _staging(value: Any) -> Staging | None:
    if not isinstance(value, dict) or "version" not in value:
        return None
    return Staging(value["version"], value.get("slot", "B"), int(value.get("done", 0)),
                   int(value.get("total", 0)))


def _failed(value: Any) -> FailedVersion | None:
    if not isinstance(value, dict) or "version" not in value:
        return None
    return FailedVersion(value["version"], value.get("reason", ""), _time(value.get("at")))


def _override(value: Any) -> Override | None:
    if not isinstance(value, dict) or not value.get("version"):
        return None
    reboot = value.get("reboot", "rules")
    if reboot not in ("rules", "ask", "now", "next-boot"):
        reboot = "rules"
    return Override(value["version"], value.get("actor", "cli"), reboot,
                    bool(value.get("paused", False)), str(value.get("by") or ""),
                    value.get("spec_wanted"))


def _request(value: Any, boot_id: str, booted: str, version: str | None) -> Any:
    """A person's confirm or rollback, only in the boot and slot it was asked in.

    Every reboot the reconciler makes ends the requests of its boot (the executor
    drops them), so one from an earlier boot is left only by a crash or a power cut
    before it ran: it still holds while the same slot runs the same version."""
    if not isinstance(value, dict) or value.get("slot") != booted:
        return None
    if value.get("boot_id") != boot_id and (version is None or value.get("version") != version):
        return None
    kind = value.get("kind")
    return kind if kind in ("confirm", "rollback") else None
