"""The rules of a service update, for ``decide`` (pure).

A move whose root image is unchanged needs no reboot (:mod:`reconciler.components`):
its service artifacts are staged into the service store, switched, the
affected services restarted and probed, then the switch is confirmed, or the
previous artifacts restored and the version kept as failed::

    (desired differs, same root) ─► StageServices ─► staged ─► [restart gate] ─► SwitchServices
      ─► switched ─► RestartServices ─► restarted ─► ProbeServices … ─► ConfirmServices
                                                                   ├─► RestoreServices (deadline)
                                                                   └─► KeepServices (deadline,
                                                 a service migrated data irreversibly)

Like a trial: the health policy is captured at the switch and judges the
update whatever the spec says later; once switched, the update is finished
before anything new starts; nothing holds a restore (no window, no suspend, no
missing spec). The switch, which restarts services, waits for a maintenance
window unless the spec says ``rollout.serviceRestarts: any-time``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler.actions import (
    Action,
    ConfirmServices,
    KeepServices,
    ProbeServices,
    RefuseRequest,
    RestartServices,
    RestoreServices,
    RollbackServices,
    StageServices,
    SwitchServices,
    Wait,
)
from reconciler.components import UpdateNeed, update_needed
from reconciler.observed import ObservedState, ServiceUpdate, TrialPolicy
from reconciler.spec import UpdatePolicy
from reconciler.windows import describe, is_open, next_open


def service_need(obs: ObservedState, desired: str) -> UpdateNeed | None:
    """The service update moving to ``desired`` needs, or ``None`` for a slot update.

    A slot update when the channel does not say what ``desired`` is made of
    (metadata from before service artifacts) or the root image differs.
    """
    wanted = obs.channel.components.get(desired)
    if wanted is None:
        return None
    running = obs.running_version
    need = update_needed(obs.channel.components.get(running) if running else None, wanted)
    return None if need.kind == "slot" else need


def _names(services: tuple[str, ...]) -> str:
    return ", ".join(services) if services else "no service"


def converge_services(policy: UpdatePolicy, obs: ObservedState, now: datetime, desired: str,
                      need: UpdateNeed, captured: TrialPolicy) -> Action:
    """Switch a staged update of ``desired`` (gated), or stage it (a staged update of
    another version, never switched, is simply replaced)."""
    staged = obs.service_update
    if staged is not None and staged.step == "staged" and staged.version == desired:
        gate = _restart_gate(policy, now, staged)
        return gate or SwitchServices(desired, staged.services,
                                      f"{desired} is staged in the service store: switch "
                                      f"{_names(staged.services)} ({need.reason})",
                                      policy=captured)
    if obs.channel.error is not None and desired not in obs.channel.versions:
        return Wait(f"cannot stage {desired}: {obs.channel.error}",
                    until=now + obs.channel.retry_after)
    if obs.disk_full:
        return Wait(f"the data disk is full: {desired} is not staged until space is freed")
    windows = policy.spec.rollout.window_values()
    if policy.spec.rollout.stage == "in-window" and not is_open(windows, now):
        return Wait(f"{desired} stages in a maintenance window (rollout.stage: in-window)",
                    until=next_open(windows, now))
    return StageServices(desired, need.services, f"Stage the services of {desired}: "
                         f"{need.reason}")


def _restart_gate(policy: UpdatePolicy, now: datetime, staged: ServiceUpdate) -> Action | None:
    """A Wait while restarts wait for a maintenance window; ``None``: switch now."""
    rollout = policy.spec.rollout
    windows = rollout.window_values()
    if not staged.services or rollout.service_restarts == "any-time" or is_open(windows, now):
        return None
    opens = next_open(windows, now)
    when = opens.strftime("%Y-%m-%d %H:%M UTC") if opens else "never"
    return Wait(f"{staged.version} is staged; the restart of {_names(staged.services)} waits "
                f"for the maintenance window opening {when} "
                f"({'; '.join(describe(w) for w in windows)}; rollout.serviceRestarts: "
                "any-time does not wait)", until=opens)


#: The reason of a person's rollback (as ``decide.MANUAL_ROLLBACK`` words a slot's).
MANUAL = "manual (kruxos update rollback)"


@dataclass(frozen=True)
class ServiceRollback:
    """What a person's ``kruxos update rollback`` does when a service update is what changed
    last: ``version`` undone, back to ``to_version``, ``services`` restarted, no reboot;
    ``refusal`` says why it cannot be done."""

    version: str
    to_version: str | None
    services: tuple[str, ...]
    action: str
    refusal: str | None = None


def service_rollback(obs: ObservedState) -> ServiceRollback | None:
    """The service update a person's rollback undoes now, or ``None``: a slot rollback.

    A service update on its way (switched, not confirmed) is restored; else the last one
    committed on the booted root image is rolled back. One whose release says a service
    migrates data irreversibly cannot be undone once it has started."""
    update, last = obs.service_update, obs.service_last
    if update is not None and update.step != "staged":
        started = update.irreversible if update.step == "restarted" else ()
        return ServiceRollback(update.version, update.from_version, update.services,
                               "restore-services", _past_migration(update.version, started))
    if last is None:
        return None
    return ServiceRollback(last.version, last.from_version, last.services, "rollback-services",
                           _past_migration(last.version, last.irreversible))


def _past_migration(version: str, irreversible: tuple[str, ...]) -> str | None:
    if not irreversible:
        return None
    return (f"cannot roll back {version}: its release says {_names(irreversible)} migrates "
            "data irreversibly (no data copy), and it has run; publish a fixed release "
            "instead")


def undo_services(obs: ObservedState) -> Action | None:
    """A person's rollback request when a service update is what changed last (never
    gated: nothing holds a rollback); a refused one is forgotten with its reason."""
    if obs.request != "rollback":
        return None
    plan = service_rollback(obs)
    if plan is None:
        return None
    if plan.refusal is not None:
        return RefuseRequest("rollback", plan.refusal)
    if plan.action == "restore-services":
        return RestoreServices(plan.version, plan.to_version, plan.services, MANUAL)
    return RollbackServices(plan.version, plan.to_version, plan.services,
                            f"{MANUAL}: the last change was the service update "
                            f"{plan.to_version} → {plan.version}")


def judge_services(obs: ObservedState, fallback: TrialPolicy, now: datetime) -> Action | None:
    """Restart, probe, confirm or restore a switched service update, or undo the last one at
    a person's request; ``None`` when there is none (a staged one waits for
    :func:`converge_services`)."""
    undo = undo_services(obs)
    if undo is not None:
        return undo
    update = obs.service_update
    if update is None or update.step == "staged":
        return None
    names = _names(update.services)
    if not update.services:
        return ConfirmServices(update.version, (), f"{update.version} has the services that "
                               "run: nothing to restart, confirmed")
    if update.step == "switched":
        return RestartServices(update.version, update.services, f"{update.version} is "
                               f"switched in the service store: restart {names}")
    policy = update.policy or fallback
    if not policy.automatic:
        return Wait(f"{update.version} runs {names} on trial; automatic rollback was off at "
                    "the switch: a person decides (confirm or roll back by hand)")
    return _health_step(update, policy, now)


def overdue_services(obs: ObservedState, fallback: TrialPolicy,
                     now: datetime) -> Action | None:
    """A restarted update past its deadline is restored before anything else is looked at."""
    update = obs.service_update
    if update is None or update.step != "restarted" or not update.services:
        return None
    policy = update.policy or fallback
    action = _health_step(update, policy, now) if policy.automatic else None
    return action if isinstance(action, RestoreServices | KeepServices) else None


def _health_step(update: ServiceUpdate, policy: TrialPolicy, now: datetime) -> Action:
    """Probe, wait for the next probe, confirm, or restore at the deadline."""
    health, names = update.health, _names(update.services)
    if health is None or health.first_probe_at is None:
        return _probe(update, policy, f"{update.version}: {names} restarted: first health "
                                      "probe")
    if health.consecutive_ok >= policy.success_threshold:
        return ConfirmServices(update.version, update.services,
                               f"{update.version}: {names} passed the health check "
                               f"({health.consecutive_ok} healthy answer(s) of "
                               f"{policy.success_threshold} needed)")
    deadline = health.first_probe_at + policy.timeout
    if now >= deadline and update.irreversible:
        return KeepServices(update.version, update.from_version, update.services,
                            f"{health.timeout_reason}; but {update.version} says "
                            f"{_names(update.irreversible)} migrates data irreversibly (no "
                            "data copy) and it has started: it stays, not rolled back; "
                            "publish a fixed release to move on")
    if now >= deadline:
        return RestoreServices(update.version, update.from_version, update.services,
                               health.timeout_reason)
    last = f"last: {health.last_summary or 'none'}"
    due = (health.last_probe_at or health.first_probe_at) + policy.interval
    if now < due:
        return Wait(f"{update.version}: {names} on trial: next health probe ({last})",
                    until=min(due, deadline))
    return _probe(update, policy, f"{update.version}: {names} on trial: health probe ({last})")


def _probe(update: ServiceUpdate, policy: TrialPolicy, reason: str) -> ProbeServices:
    return ProbeServices(update.version, update.services, reason, url=policy.url,
                         timeout_s=min(policy.interval.total_seconds(), 10.0),
                         progress=update.health)
