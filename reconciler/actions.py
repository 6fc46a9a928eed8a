"""The actions ``decide`` can return, and the outcome the executor reports (pure).

Each action is frozen data with a ``reason`` a person can read in the audit
trail. ``kind`` is the short name used in audit records and ``--action`` filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from reconciler.observed import HealthProgress, Mark, Request, SlotName, TrialPolicy


@dataclass(frozen=True)
class Nothing:
    """The device already is what the spec asks for; look again at ``until`` at the latest
    (``None``: on a trigger or the resync), when what the spec asks for may change (a
    release held back by its rollout is offered then)."""

    reason: str
    until: datetime | None = None
    kind: ClassVar[str] = "nothing"


@dataclass(frozen=True)
class Wait:
    """Something is wanted but not now: wake again at ``until`` (``None``: on a trigger)."""

    reason: str
    until: datetime | None = None
    kind: ClassVar[str] = "wait"


@dataclass(frozen=True)
class Blocked:
    """Something is wanted but must not happen until a person or the spec changes it."""

    reason: str
    kind: ClassVar[str] = "blocked"


@dataclass(frozen=True)
class Stage:
    """Download, verify and write ``version`` into the other slot ``slot``."""

    version: str
    slot: SlotName
    reason: str
    kind: ClassVar[str] = "stage"


@dataclass(frozen=True)
class ArmTrial:
    """Arm a limited trial of ``slot`` in the bootloader, then reboot into it."""

    slot: SlotName
    version: str
    reason: str
    reboot: bool = True
    policy: TrialPolicy = TrialPolicy()

    @property
    def kind(self) -> str:
        """``reboot`` when it reboots now, ``arm`` when it waits for the next reboot."""
        return "reboot" if self.reboot else "arm"


@dataclass(frozen=True)
class ProbeHealth:
    """Ask the health endpoint once about the booted trial slot (the trial's own policy)."""

    slot: SlotName
    reason: str
    url: str = TrialPolicy.url
    timeout_s: float = 5.0
    progress: HealthProgress | None = None
    kind: ClassVar[str] = "probe"


@dataclass(frozen=True)
class Confirm:
    """Mark the booted trial slot good: it becomes the default."""

    slot: SlotName
    version: str
    reason: str
    kind: ClassVar[str] = "confirm"


@dataclass(frozen=True)
class Rollback:
    """Give up on ``from_slot``: mark it bad, boot the previous good slot ``to_slot``."""

    from_slot: SlotName
    to_slot: SlotName
    from_version: str | None
    reason: str
    kind: ClassVar[str] = "rollback"


@dataclass(frozen=True)
class Reboot:
    """Finish an earlier step that needs a reboot (the bootloader already points elsewhere)."""

    slot: SlotName
    reason: str
    kind: ClassVar[str] = "reboot"


@dataclass(frozen=True)
class Disarm:
    """Take back an armed trial that is no longer wanted; the slot stays staged."""

    slot: SlotName
    version: str
    reason: str
    kind: ClassVar[str] = "disarm"


@dataclass(frozen=True)
class NoteFallback:
    """The bootloader gave up on a trial by itself: remember the version as failed."""

    version: str
    reason: str
    kind: ClassVar[str] = "note-fallback"


@dataclass(frozen=True)
class RepairBootEnv:
    """Write a fresh boot env from what is known good, over one that cannot be read.

    ``default`` boots when no trial is armed; ``trial`` (with ``tries``) keeps
    a trial that was running when the env was damaged; ``marks`` is each
    slot's mark, from the slots' own identity and the state file.
    """

    default: SlotName
    marks: tuple[tuple[SlotName, Mark], ...]
    reason: str
    trial: SlotName | None = None
    tries: int = 0
    kind: ClassVar[str] = "repair-boot-env"


@dataclass(frozen=True)
class StageServices:
    """Download and verify ``version``'s artifacts of ``services`` into the service store;
    nothing is switched (``()``: the release's services are the running ones)."""

    version: str
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "stage-services"


@dataclass(frozen=True)
class SwitchServices:
    """Make the staged artifacts current in the store (uncommitted), capturing the health
    policy the update will be judged by."""

    version: str
    services: tuple[str, ...]
    reason: str
    policy: TrialPolicy = TrialPolicy()
    kind: ClassVar[str] = "switch-services"


@dataclass(frozen=True)
class RestartServices:
    """Restart the switched services (stop the removed ones) so the new artifacts run."""

    version: str
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "restart-services"


@dataclass(frozen=True)
class ProbeServices:
    """Ask the health endpoint once; only ``services`` count in its answer."""

    version: str
    services: tuple[str, ...]
    reason: str
    url: str = TrialPolicy.url
    timeout_s: float = 5.0
    progress: HealthProgress | None = None
    kind: ClassVar[str] = "probe-services"


@dataclass(frozen=True)
class ConfirmServices:
    """The restarted services are healthy: commit the switch; ``version`` is what runs."""

    version: str
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "confirm-services"


@dataclass(frozen=True)
class RestoreServices:
    """The update failed: restore the previous artifacts (and data copies), restart them,
    and keep ``version`` as failed so it is not tried again."""

    version: str
    from_version: str | None
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "restore-services"


@dataclass(frozen=True)
class KeepServices:
    """The update failed its health check, but a service it started migrated data that no
    copy can give back (``migrates_data`` without ``data_dir``): a restore would run the old
    version on data it cannot read. The switch is committed as it is, the version stays,
    blocked from any rollback, and the reason is audited; a fixed release moves it on."""

    version: str
    from_version: str | None
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "keep-services"


@dataclass(frozen=True)
class RollbackServices:
    """A person's rollback when a committed service update is what changed last: the
    previous artifacts (and data copies) back, the services restarted, ``version`` blocked
    as a hand rollback of a slot blocks its release; no reboot."""

    version: str
    from_version: str | None
    services: tuple[str, ...]
    reason: str
    kind: ClassVar[str] = "rollback-services"


@dataclass(frozen=True)
class RefuseRequest:
    """A person's request that cannot be carried out now: forget it, with why, so it never
    acts later on something else (a rollback past a data migration)."""

    request: str
    reason: str
    kind: ClassVar[str] = "request-refused"


@dataclass(frozen=True)
class PullImage:
    """Pull ``version``'s container image by its signed digest; refuse any other content."""

    version: str
    digest: str
    reason: str
    kind: ClassVar[str] = "pull-image"


@dataclass(frozen=True)
class SwapContainer:
    """Stop the old container (kept, renamed), create and start the new one from the pulled
    image with the same volumes, capturing the health policy it will be judged by."""

    version: str
    digest: str
    from_version: str | None
    reason: str
    policy: TrialPolicy = TrialPolicy()
    kind: ClassVar[str] = "swap-container"


@dataclass(frozen=True)
class ProbeContainer:
    """Ask the new container's health endpoint once (the policy captured at the swap)."""

    version: str
    reason: str
    url: str = TrialPolicy.url
    timeout_s: float = 5.0
    progress: HealthProgress | None = None
    kind: ClassVar[str] = "probe-container"


@dataclass(frozen=True)
class ConfirmContainer:
    """The new container is healthy: remove the old one; its image is kept until the next
    confirm."""

    version: str
    reason: str
    kind: ClassVar[str] = "confirm-container"


@dataclass(frozen=True)
class RollbackContainer:
    """Give up on ``version``: keep it as failed, stop and remove the new container, start the
    old one again (``image``: made anew from the image it ran, when no old container is kept,
    as after a confirm). Never gated."""

    version: str
    from_version: str | None
    reason: str
    image: str | None = None
    kind: ClassVar[str] = "rollback-container"


@dataclass(frozen=True)
class TakeRebootSlot:
    """Ask the FleetLock server for a reboot slot in ``group`` before rebooting into
    ``version`` (the last gate of a forward reboot)."""

    group: str
    version: str
    reason: str
    kind: ClassVar[str] = "take-reboot-slot"


@dataclass(frozen=True)
class ReleaseRebootSlot:
    """Give the reboot slot of ``group`` back (``steady-state``): once the trial is
    confirmed or the rollback has booted, and once in every boot."""

    group: str
    reason: str
    kind: ClassVar[str] = "release-reboot-slot"


#: Audit action names of requests whose kind would read like a step that ran.
REQUEST_ACTIONS = {"reboot": "reboot-answer", "rollback": "rollback-request",
                   "confirm": "confirm-request"}


@dataclass(frozen=True)
class TakeRequest:
    """Turn a person's request into state, then remove it from the inbox.

    ``spec_wanted`` is what the spec itself asked for when a pin was made (the
    pin ends when that changes); ``retry`` lets a pinned version that failed
    before be tried again; ``forget`` is the other slot a cancel marks bad;
    ``slot``/``version`` bind a confirm or rollback to the boot it was asked in.
    """

    request: Request
    reason: str
    spec_wanted: str | None = None
    retry: bool = False
    forget: SlotName | None = None
    slot: SlotName | None = None
    version: str | None = None

    @property
    def kind(self) -> str:
        """The request's audit name: ``pin``, ``reboot-answer``, ``rollback-request``..."""
        return REQUEST_ACTIONS.get(self.request.kind, self.request.kind)


@dataclass(frozen=True)
class EndOverride:
    """The pin of ``version`` ends: the spec's own desired version moved on."""

    version: str
    reason: str
    kind: ClassVar[str] = "override-ended"


@dataclass(frozen=True)
class LiftBlock:
    """Forget that ``version`` failed: the desired version is another one now."""

    version: str
    reason: str
    kind: ClassVar[str] = "unblock"


@dataclass(frozen=True)
class RestoreState:
    """Write back facts of a lost state file that came back from the audit trail."""

    sections: tuple[tuple[str, Mapping[str, Any]], ...]
    reason: str
    kind: ClassVar[str] = "restore-state"


Action = (
    Nothing | Wait | Blocked | Stage | ArmTrial | ProbeHealth | Confirm | Rollback | Reboot
    | Disarm | NoteFallback | RepairBootEnv | TakeRequest | EndOverride | LiftBlock
    | RestoreState | StageServices | SwitchServices | RestartServices | ProbeServices
    | ConfirmServices | RestoreServices | KeepServices | RollbackServices | RefuseRequest
    | PullImage | SwapContainer | ProbeContainer | ConfirmContainer | RollbackContainer
    | TakeRebootSlot | ReleaseRebootSlot
)


def reboots(action: Action) -> bool:
    """True when the device reboots once ``action`` ran (the daemon then stops acting)."""
    if isinstance(action, ArmTrial):
        return action.reboot
    return isinstance(action, Rollback | Reboot)


#: How an action ended, for scripts (``docs/audit.md``): it did what it was asked; it
#: stopped on purpose and resumes where it stopped; what it needs (the channel, a server)
#: did not answer, and it is tried again; a release was refused (signature, hash, size,
#: requirements) and is not tried again as it is; anything else went wrong.
OUTCOME_CODES = ("ok", "stopped", "unavailable", "refused", "failed")


@dataclass(frozen=True)
class Outcome:
    """What running an action did; the executor never raises for an action failure."""

    ok: bool
    detail: str
    duration_s: float = 0.0
    retry_after_s: float | None = None
    #: What a script reads instead of the text (``details.code`` of the audit record): one
    #: of :data:`OUTCOME_CODES`; by default ``ok`` or ``failed``.
    code: str = ""

    def __post_init__(self) -> None:
        if not self.code:
            object.__setattr__(self, "code", "ok" if self.ok else "failed")
        if self.code not in OUTCOME_CODES or (self.code == "ok") != self.ok:
            raise ValueError(f"outcome code {self.code!r} with ok={self.ok}")

    @property
    def text(self) -> str:
        """``ok`` or ``failed: ...`` as stored in the audit trail."""
        if self.ok:
            return f"ok: {self.detail}" if self.detail else "ok"
        return f"failed: {self.detail}"
