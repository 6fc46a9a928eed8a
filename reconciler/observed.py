"""What is on the device, as frozen plain values (pure: built by ``observe.py``).

The decision core sees the device only through :class:`ObservedState`. Every
field here is read back from disk on every pass (the slots' own identity records,
the bootloader environment, the state file on the data dir), so a crash or a
reboot between two steps loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from reconciler.components import Components

SlotName = Literal["A", "B"]
SLOTS: tuple[SlotName, SlotName] = ("A", "B")
Mark = Literal["good", "staged", "bad", "empty"]


def other(slot: SlotName) -> SlotName:
    """The slot that is not ``slot``."""
    return "B" if slot == "A" else "A"


@dataclass(frozen=True)
class Slot:
    """One root partition: its device, the version its identity names, its boot mark."""

    name: SlotName
    device: str
    version: str | None
    mark: Mark
    problem: str | None = None
    #: The slot's device does not exist (``problem`` says which path).
    missing: bool = False

    @property
    def sound(self) -> bool:
        """True when the slot's identity can be trusted and ordered (a semver, no problem)."""
        return self.problem is None and self.version is not None

    @property
    def label(self) -> str:
        """``B (sda3)``: how status lines name a slot."""
        return f"{self.name} ({self.device})"


@dataclass(frozen=True)
class HealthProgress:
    """The health check of the booted trial slot during this boot."""

    first_probe_at: datetime | None = None
    last_probe_at: datetime | None = None
    consecutive_ok: int = 0
    probes: int = 0
    last_summary: str | None = None
    timeout_reason: str = "Health check timeout — no answer from the health endpoint"


@dataclass(frozen=True)
class TrialPolicy:
    """The health policy of one trial, captured when the trial was armed.

    A trial is judged by the policy it was armed with, so no later input — a
    spec edited, rejected or lost — can stop or stretch its judgement.
    ``automatic: False`` is the one case where a person decides.
    """

    url: str = "http://127.0.0.1:7800/health/ready"
    interval: timedelta = timedelta(seconds=5)
    timeout: timedelta = timedelta(minutes=2)
    success_threshold: int = 1
    automatic: bool = True


@dataclass(frozen=True)
class Staging:
    """A staging that started and has not finished (it resumes from ``done`` bytes)."""

    version: str
    slot: SlotName
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class FailedVersion:
    """A version that failed on trial; never retried while it stays the desired one."""

    version: str
    reason: str
    at: datetime | None = None


@dataclass(frozen=True)
class ChannelView:
    """What the release channel offers, as last fetched and verified.

    ``versions`` lists every published release; ``refused`` those this device
    cannot install, newest first, with why (``requires X, which this device
    does not implement``); ``latest`` is the newest release it *can* install.
    """

    versions: frozenset[str] = frozenset()
    latest: str | None = None
    error: str | None = None
    retry_after: timedelta = timedelta(seconds=30)
    refused: Mapping[str, str] = field(default_factory=dict)
    #: What each listed release is made of (root image, services), by version: from it the
    #: core derives whether a move needs a slot update or only a service update. Empty:
    #: unknown, and every move is a slot update, as before service updates existed.
    components: Mapping[str, Components] = field(default_factory=dict)
    #: Each release's signed container image (``REPOSITORY@sha256:HEX``), by version: what
    #: a device with ``runtime: docker`` pulls, by digest only.
    images: Mapping[str, str] = field(default_factory=dict)
    #: Installable releases newer than ``latest`` whose phased rollout has not reached this
    #: device yet, by version, newest first, each with why and when it will be
    #: (``1.2.0 is being rolled out: this device is offered it at ...``).
    held: Mapping[str, str] = field(default_factory=dict)
    #: The first moment one of them is offered (``None``: none will be while the channel
    #: stays as signed): ``latest`` may change then, so the daemon looks again by then.
    held_until: datetime | None = None


ServiceStep = Literal["staged", "switched", "restarted"]


@dataclass(frozen=True)
class ServiceUpdate:
    """A service update on its way, as the state file and the service store show it.

    ``staged``: every artifact of ``version`` is verified in the store, nothing
    switched; ``switched``: the store's records name the new artifacts
    (uncommitted), the old processes may still run; ``restarted``: the affected
    services run the new artifacts and are judged by ``policy``, the health
    policy captured at the switch (as a trial's is at arming). ``services`` are
    the services it touches; ``from_version`` is the release restored on failure.
    ``irreversible`` names the services whose new version migrates data that no
    copy can give back (``migrates_data`` without ``data_dir``): once they have
    started, a failed health check keeps them rather than restoring.
    """

    version: str
    from_version: str | None
    services: tuple[str, ...]
    step: ServiceStep
    health: HealthProgress | None = None
    policy: TrialPolicy | None = None
    irreversible: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceLast:
    """The last service update committed on the booted root image: what a person's
    ``kruxos update rollback`` undoes when it is what changed last.

    ``from_version`` is the release it moved from (its artifacts are the store's
    ``previous``, its data the copy kept at the confirm); ``irreversible`` names
    the services that migrated data no copy can give back (no rollback past them).
    """

    version: str
    from_version: str | None
    services: tuple[str, ...]
    irreversible: tuple[str, ...] = ()


ContainerStep = Literal["swapping", "started", "start-failed"]


@dataclass(frozen=True)
class EngineContainer:
    """A container as the engine reports it: the image it was made from, whether it runs."""

    name: str
    image_id: str
    status: str  # the engine's word: created, running, exited, ...

    @property
    def running(self) -> bool:
        """True while the engine runs it."""
        return self.status == "running"


@dataclass(frozen=True)
class ContainerUpdate:
    """A container update on its way, as the state file recorded it before each step.

    ``swapping``: the old container may be stopped and renamed, the new one not yet
    started; ``started``: the new container runs and is judged by ``policy`` (captured
    at the swap); ``start-failed``: the engine could not start it (``problem``).
    ``old_image_id`` is what the old container ran: a rollback starts it again.
    """

    version: str
    from_version: str | None
    digest: str
    step: ContainerStep
    old_image_id: str | None = None
    health: HealthProgress | None = None
    policy: TrialPolicy | None = None
    problem: str | None = None


@dataclass(frozen=True)
class ContainerView:
    """The device's container and its engine, read fresh each pass (``runtime: docker``).

    ``current`` is the container of the configured name, ``previous`` the old one kept
    (renamed) for a rollback; ``version`` the release whose signed digest the current
    container's image carries; ``pulled`` the signed digests whose images the engine holds;
    ``kept_image``/``kept_version`` the image the container ran before the last confirmed
    update, while the engine still holds it (a person's rollback starts it again).
    """

    name: str
    current: EngineContainer | None = None
    previous: EngineContainer | None = None
    version: str | None = None
    pulled: frozenset[str] = frozenset()
    update: ContainerUpdate | None = None
    engine_error: str | None = None
    kept_image: str | None = None
    kept_version: str | None = None

    @property
    def label(self) -> str:
        """``container kruxos``: how reasons name it."""
        return f"container {self.name}"


@dataclass(frozen=True)
class FleetSlot:
    """This device's reboot slot on a FleetLock server (``rollout.fleetLock``), as the
    state file recorded the last call; the server holds the truth, every call is
    idempotent.

    ``held``: the last ``pre-reboot`` was granted and no ``steady-state`` since;
    ``taken_this_boot``: it was granted in the boot running now (not yet rebooted: never
    given back before the reboot it is for); ``released_this_boot``: a ``steady-state``
    was answered 200 in this boot (each boot gives back once, so a lost state file or a
    crash never leaves a slot held); ``asked_at``/``answer``: the last refused or failed
    call and what the server said.
    """

    group: str
    held: bool = False
    taken_this_boot: bool = False
    released_this_boot: bool = False
    asked_at: datetime | None = None
    answer: str | None = None
    #: The device has no id to ask with (no ``deviceId``, no machine id): why.
    problem: str | None = None


RebootPolicy = Literal["rules", "ask", "now", "next-boot"]


@dataclass(frozen=True)
class Override:
    """A person's pin of the desired version at this device (``kruxos update apply``).

    ``reboot`` says who decides the reboot into the pinned version: ``rules``
    (the spec's windows and autoReboot), ``ask`` (the person is being asked),
    ``now`` (the person said yes: reboot even outside a window), ``next-boot``
    (arm the trial, activate on whatever reboot comes next). ``paused`` is set
    when the person stopped the download (Ctrl-C); a new apply resumes it.
    """

    version: str
    actor: str = "cli"
    reboot: RebootPolicy = "rules"
    paused: bool = False
    by: str = ""
    spec_wanted: str | None = None


RequestKind = Literal["pin", "reboot", "stop", "cancel", "resume", "confirm", "rollback"]


@dataclass(frozen=True)
class Request:
    """A person's request waiting in the inbox (``kruxos update ...``), not taken yet.

    ``id`` names it in the inbox, so it is taken exactly once. ``version`` is
    the pinned release (``pin``); ``answer`` the reboot policy of a pin or the
    answer to "Reboot now?" (``reboot``).
    """

    id: str
    kind: RequestKind
    by: str = "?"
    at: float | None = None
    version: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class ObservedState:
    """Everything ``decide`` may know about the device, read fresh on each pass."""

    booted: SlotName
    slots: Mapping[SlotName, Slot]
    default: SlotName
    trial: SlotName | None = None
    tries_left: int = 0
    fallback_trace: str | None = None
    health: HealthProgress | None = None
    rolled_back_from: str | None = None
    rollback_reason: str | None = None
    staging: Staging | None = None
    failed: FailedVersion | None = None
    channel: ChannelView = field(default_factory=ChannelView)
    override: Override | None = None
    request: Literal["confirm", "rollback"] | None = None
    trial_policy: TrialPolicy | None = None
    trial_policy_version: str | None = None
    forward_reboots: int = 0
    disk_full: bool = False
    requests: tuple[Request, ...] = ()
    boot_env_problem: str | None = None
    state_problem: str | None = None
    #: Facts of a lost state file that came back from the audit trail, not yet written.
    recovered: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    #: The release whose services run on the booted root image after a committed service
    #: update; ``None``: the booted slot's own release.
    service_release: str | None = None
    service_update: ServiceUpdate | None = None
    #: The last service update committed on the booted root image (``None``: none since
    #: the image's own services, or it was rolled back).
    service_last: ServiceLast | None = None
    #: The service overlays on the booted root image, for people (decide does not read
    #: them): ``(name, current version, previous version)``, ``None`` for none (a removed
    #: service, or the image's own before).
    overlays: tuple[tuple[str, str | None, str | None], ...] = ()
    #: ``runtime: docker``: the container and its engine (no slots, no bootloader: the
    #: slots above then only carry the running version for the shared rules).
    container: ContainerView | None = None
    #: The device's reboot slot on a FleetLock server; ``None``: the device has none to
    #: give back and the spec names no server.
    fleet: FleetSlot | None = None

    @property
    def running_version(self) -> str | None:
        """The release the device runs: the booted slot's, or a service update's on it."""
        return self.service_release or self.booted_slot.version

    @property
    def booted_slot(self) -> Slot:
        """The slot running now."""
        return self.slots[self.booted]

    @property
    def other_slot(self) -> Slot:
        """The inactive slot: the only one ever written."""
        return self.slots[other(self.booted)]

    @property
    def on_trial(self) -> bool:
        """True while the booted slot is a trial the bootloader is counting."""
        return self.trial == self.booted

    @property
    def boot_status(self) -> str:
        """``PENDING``, ``CONFIRMED`` or ``CONFIRMED (rolled back from X)``."""
        if self.on_trial:
            return "PENDING"
        if self.booted_slot.mark == "bad" and self.default != self.booted:
            return f"ROLLING BACK (rebooting into {self.slots[self.default].label})"
        if self.rolled_back_from:
            return f"CONFIRMED (rolled back from {self.rolled_back_from})"
        return "CONFIRMED"

    def summary(self) -> dict[str, object]:
        """A compact view for audit records."""
        if self.container is not None:
            update = self.container.update
            return {"runtime": "docker", "container": self.container.name,
                    "version": self.container.version,
                    "update": None if update is None else f"{update.version} {update.step}"}
        return {
            "booted": self.booted,
            "version": self.booted_slot.version,
            "boot_status": self.boot_status,
            "other": {"slot": self.other_slot.name, "version": self.other_slot.version,
                      "mark": self.other_slot.mark},
            "trial": self.trial,
            "tries_left": self.tries_left if self.trial else None,
        }
