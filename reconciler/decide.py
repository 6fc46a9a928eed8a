"""``decide(spec, observed, now) -> Action``: the one next step, and why (pure).

No I/O, no clock reads, no randomness: the same inputs always give the same
action. The rules, in the order they are asked (the first that applies wins):

1. A rollback already decided (its failure kept on disk) is finished; then a
   slot on trial is judged; its health check is never suspended.
2. Finish what the bootloader already points at (a rollback or trial pending
   a reboot, a fallback the bootloader made by itself).
3. Resolve the desired version (an override pin, the spec's exact version, or
   the newest release on the channel this device can install: a newer one that
   requires a feature the device does not implement is skipped, and said so).
4. Refuse what must not happen: a version that failed on trial, a release
   requiring a feature the device does not implement, a downgrade not allowed
   by the spec.
5. ``suspend`` starts no new step.
6. Use the other slot when it already holds the desired version verified;
   otherwise stage it there. Reboots wait for a window and ``autoReboot``.
   A move whose root image is unchanged is a service update instead, no reboot
   (:mod:`reconciler.service_rules`); once switched, it is finished (restart,
   probe, confirm or restore) before anything else, and nothing holds a restore.
   A device with ``runtime: docker`` has no slots: its update is a container swap
   (:mod:`reconciler.container_rules`), finished before anything else once begun.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from reconciler.actions import (
    Action,
    ArmTrial,
    Blocked,
    Confirm,
    Disarm,
    EndOverride,
    LiftBlock,
    NoteFallback,
    Nothing,
    ProbeContainer,
    ProbeHealth,
    Reboot,
    ReleaseRebootSlot,
    RepairBootEnv,
    RestoreState,
    Rollback,
    Stage,
    TakeRebootSlot,
    TakeRequest,
    Wait,
)
from reconciler.container_rules import converge_container, judge_container
from reconciler.observed import (
    HealthProgress,
    Mark,
    ObservedState,
    Request,
    TrialPolicy,
    other,
)
from reconciler.semver import Version, is_semver
from reconciler.service_rules import (
    ServiceRollback,
    converge_services,
    judge_services,
    overdue_services,
    service_need,
    service_rollback,
)
from reconciler.spec import UpdatePolicy
from reconciler.windows import Window, closes_at, describe, is_open, next_open

MANUAL_ROLLBACK = "manual (kruxos update rollback)"
#: How soon a device refused a reboot slot asks again (the server decides; asking is cheap).
SLOT_RETRY = timedelta(seconds=5)
#: More forward reboots than this in a row without a confirm stop forward reboots.
LOOP_LIMIT = 2
#: How soon a pass looks again for a slot device that does not exist.
MISSING_SLOT_RETRY = timedelta(minutes=1)


def decide(policy: UpdatePolicy | None, observed: ObservedState, now: datetime) -> Action:
    """The single next step for the device, with a reason a person can read.

    ``policy`` is ``None`` when no valid spec is known at all: a trial is still
    judged (by the policy captured when it was armed) and a rollback still
    finishes; nothing new starts.
    """
    for rule in (_restore_state, _repair_boot_env, _decided_rollback, _overdue_trial,
                 _overdue_services, _judge_container, _take_request, _end_override,
                 _lift_block, _judge_trial, _judge_services, _give_back_slot,
                 _finish_pending):
        action = rule(policy, observed, now)
        if action is not None:
            return action
    if policy is None:
        return Wait("no valid spec is known: nothing new starts until one is written")
    return _converge(policy, observed, now)


def _restore_state(policy: UpdatePolicy | None, obs: ObservedState,
                   now: datetime) -> Action | None:
    """Facts of a lost state file that the audit trail gave back are written first.

    A blocked version stays blocked and a trial's deadline keeps counting from
    its first probe; both are needed before the trial is judged, and writing
    them is quick.
    """
    if not obs.recovered:
        return None
    said = []
    for name, value in obs.recovered:
        if name == "failed":
            said.append(f"{value.get('version')} stays blocked (it failed on trial)")
        elif name == "trial":
            said.append(f"the trial's first health probe at {value.get('first_probe_at')} "
                        "still counts")
        else:
            said.append(f"section {name}")
    return RestoreState(obs.recovered, "the state file was lost; from the audit trail: "
                        + "; ".join(said))


def _repair_boot_env(policy: UpdatePolicy | None, obs: ObservedState,
                     now: datetime) -> Action | None:
    """A boot env that cannot be read is rewritten from what is known good, never guessed over.

    The booted slot is known to boot. If the state file says it was armed for a
    trial, the trial goes on (the other slot, good before, is the default);
    else it becomes the default. The other slot keeps a staged mark only when
    its own identity names a release and no staging was writing it; otherwise it
    is marked bad, so nothing unverified is ever booted.
    """
    if obs.boot_env_problem is None:
        return None
    booted, target = obs.booted_slot, obs.other_slot
    why = f"the boot environment cannot be read ({obs.boot_env_problem})"
    if obs.trial_policy is not None and booted.version == obs.trial_policy_version:
        return RepairBootEnv(target.name, ((booted.name, "staged"), (target.name, "good")),
                             f"{why}: rewritten with slot {booted.label} still on trial and "
                             f"slot {target.label} the default", trial=booted.name, tries=1)
    writing = obs.staging is not None and obs.staging.slot == target.name
    mark: Mark = "staged" if target.sound and not writing else "bad"
    if target.version is None and target.problem is None and not writing:
        mark = "empty"
    return RepairBootEnv(booted.name, ((booted.name, "good"), (target.name, mark)),
                         f"{why}: rewritten from the booted slot {booted.label} (default, "
                         f"good) and slot {target.label}'s own identity (marked {mark})")


def _decided_rollback(policy: UpdatePolicy | None, obs: ObservedState,
                      now: datetime) -> Action | None:
    """A rollback already decided goes on at once, before any request or probe.

    The executor keeps the failure on the data disk before it writes the boot
    env, so a crash or a power cut between the two leaves the booted release
    recorded as failed while the boot env still boots it. On trial, a new health
    check would start a new deadline (the first probe went with the trial's
    record) and could confirm what a person asked to roll back; confirmed, the
    person's rollback would be forgotten. Either way the rollback is finished;
    once the boot env is written, by the reboot that was not asked yet (a
    person's request waits for it, a second rollback would find nothing to do).
    """
    failed, booted, target = obs.failed, obs.booted_slot, obs.other_slot
    if failed is None or failed.version != booted.version:
        return None
    reason = failed.reason or f"{failed.version} failed"
    if obs.on_trial:
        return Rollback(obs.booted, target.name, failed.version, reason)
    if obs.trial is None and obs.default != obs.booted:
        return Reboot(obs.default, f"the rollback of {failed.version} is half done (the boot "
                      f"env boots slot {obs.default} next): finish it with a reboot")
    if (obs.trial is None and obs.default == obs.booted and target.mark == "good"
            and target.version and target.version != failed.version):
        return Rollback(obs.booted, target.name, failed.version, reason)
    return None


def _overdue_trial(policy: UpdatePolicy | None, obs: ObservedState,
                   now: datetime) -> Action | None:
    """A trial past its deadline is rolled back before anything else is looked at."""
    if not obs.on_trial or obs.request is not None:
        return None
    tp = obs.trial_policy or trial_policy_of(policy)
    if not tp.automatic:
        return None
    action = _health_step(tp, obs, now, obs.booted_slot.version or "?")
    return action if isinstance(action, Rollback) else None


def _overdue_services(policy: UpdatePolicy | None, obs: ObservedState,
                      now: datetime) -> Action | None:
    """A service update past its health deadline is restored before any request."""
    return overdue_services(obs, trial_policy_of(policy), now)


def _judge_services(policy: UpdatePolicy | None, obs: ObservedState,
                    now: datetime) -> Action | None:
    """A switched service update is restarted, probed, confirmed or restored (any spec); a
    person's rollback when a service update changed last undoes it, no reboot."""
    return judge_services(obs, trial_policy_of(policy), now)


def _judge_container(policy: UpdatePolicy | None, obs: ObservedState,
                     now: datetime) -> Action | None:
    """A container update whose swap began is finished first (``runtime: docker``); while it
    only waits or probes, a person's request is taken first (a confirm or a rollback by hand)."""
    action = judge_container(obs, trial_policy_of(policy), now)
    if obs.requests and isinstance(action, Wait | ProbeContainer):
        return None
    return action


# ---- a person's requests, the end of a pin, the lifting of a block -------------------------

def spec_wants(policy: UpdatePolicy, obs: ObservedState) -> str | None:
    """The version the spec itself asks for now (``latest`` resolved), ignoring pins."""
    wanted = policy.spec.version
    return obs.channel.latest if wanted == "latest" else wanted


def _take_request(policy: UpdatePolicy | None, obs: ObservedState,
                  now: datetime) -> Action | None:
    """The oldest request in the inbox, as a step of its own (one per pass, in order)."""
    if not obs.requests:
        return None
    request = obs.requests[0]
    action = _REQUESTS[request.kind](request, policy, obs)
    return replace(action, reason=f"{action.reason} (by {request.by})")


def _on_pin(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    wanted = spec_wants(policy, obs) if policy else None
    version = req.version or "?"
    reason = f"{version} pinned by a person (kruxos update apply); the spec wanted {wanted}"
    retry = obs.failed is not None and obs.failed.version == req.version
    if retry:
        reason += f"; {version} was rolled back before and is tried again, as asked"
    return TakeRequest(req, reason, spec_wanted=wanted, retry=retry)


def _on_reboot(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    if req.answer == "now":
        return TakeRequest(req, "a person at the device asked to reboot now, even outside a "
                           "maintenance window")
    return TakeRequest(req, "a person at the device chose to activate the update on the next "
                       "reboot")


def _on_stop(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    return TakeRequest(req, "the download was stopped by a person (Ctrl-C); the next apply "
                       "resumes it")


def _on_resume(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    return TakeRequest(req, "the pin ended: the spec rules again (kruxos update resume)")


def _on_confirm(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    what = "the container update on trial" if obs.container else "the slot on trial"
    return TakeRequest(req, f"a person asked to confirm {what} (kruxos update confirm)",
                       slot=obs.booted, version=_request_version(obs))


def _on_rollback(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    return TakeRequest(req, "a person asked to roll back (kruxos update rollback)",
                       slot=obs.booted, version=_request_version(obs))


def _request_version(obs: ObservedState) -> str | None:
    """The version a confirm or rollback is bound to: the booted slot's, or on a container
    device the update's on its way (else the running container's)."""
    view = obs.container
    if view is not None and view.update is not None:
        return view.update.version
    return view.version if view is not None else obs.booted_slot.version


def _on_cancel(req: Request, policy: UpdatePolicy | None, obs: ObservedState) -> TakeRequest:
    """Forget the staging and the staged slot; pin the running version."""
    target, running = obs.other_slot, obs.booted_slot.version
    forget = target.name if cancels_a_staging(obs) else None
    if forget is not None:
        reason = f"staging cancelled and slot {target.label} forgotten"
    else:
        wanted = desired_version(policy, obs) if policy else None
        reason = f"nothing was staged yet{f' ({wanted} was next)' if wanted else ''}"
    return TakeRequest(req, f"{reason}; {running} stays pinned until the spec changes or "
                       "kruxos update resume",
                       spec_wanted=spec_wants(policy, obs) if policy else None,
                       forget=forget, slot=obs.booted, version=running)


def cancels_a_staging(obs: ObservedState) -> bool:
    """A cancel now has a staging in progress or a staged (maybe armed) slot to forget."""
    target = obs.other_slot
    staging_there = obs.staging is not None and obs.staging.slot == target.name
    return target.mark == "staged" or staging_there


def cancel_refusal(policy: UpdatePolicy | None, obs: ObservedState) -> str | None:
    """Why a cancel would do nothing at all, or ``None``.

    A cancel forgets a staging; with none, it still holds the running version
    against an update the spec (or a pin) is about to start. When the device
    already runs what is wanted and nothing is staged, there is nothing to hold."""
    if cancels_a_staging(obs) or obs.on_trial:
        return None
    running = obs.booted_slot.version
    wanted = desired_version(policy, obs) if policy else None
    if wanted is not None and wanted != running:
        return None
    if obs.container is not None:
        return (f"nothing to cancel: {obs.container.label} runs {running}, which is what is "
                "wanted, and no update is on its way")
    return (f"nothing to cancel: slot {obs.booted_slot.label} runs {running}, which is what "
            "is wanted, and nothing is staged or staging")


_REQUESTS = {"pin": _on_pin, "reboot": _on_reboot, "stop": _on_stop, "resume": _on_resume,
             "confirm": _on_confirm, "rollback": _on_rollback, "cancel": _on_cancel}


def _end_override(policy: UpdatePolicy | None, obs: ObservedState,
                  now: datetime) -> Action | None:
    """A pin ends once the spec's own desired version resolves to something new."""
    pin = obs.override
    if pin is None or policy is None:
        return None
    now_wanted = spec_wants(policy, obs)
    if now_wanted is None or now_wanted == pin.spec_wanted:
        return None
    return EndOverride(pin.version, f"the pin of {pin.version} ended: the spec now wants "
                       f"{now_wanted} (it wanted {pin.spec_wanted} when pinned)")


def _lift_block(policy: UpdatePolicy | None, obs: ObservedState,
                now: datetime) -> Action | None:
    """A failed version is forgotten once the desired version resolves to another one.

    A pin at another version does not lift it while the spec itself still wants
    the failed version: the pin is a hold at the device (``cancel`` pins the
    running version), and dropping it with ``resume`` must not bring back the
    version the person rolled back from. A person who wants the failed version
    again pins it (``apply V``)."""
    failed = obs.failed
    if failed is None or policy is None:
        return None
    desired = desired_version(policy, obs)
    if desired is None or desired == failed.version:
        return None
    if obs.override is not None and spec_wants(policy, obs) == failed.version:
        return None  # a hold at the device: the spec still wants what failed
    return LiftBlock(failed.version, f"{failed.version} may be tried again: the desired "
                     f"version is now {desired}")


def count_probe(progress: HealthProgress | None, healthy: bool, summary: str,
                timeout_reason: str, now: datetime) -> HealthProgress:
    """The health progress of this boot after one more answer (the counters, in one place)."""
    start = progress if progress is not None and progress.first_probe_at is not None else \
        HealthProgress(first_probe_at=now)
    return replace(start, last_probe_at=now, probes=start.probes + 1,
                   consecutive_ok=start.consecutive_ok + 1 if healthy else 0,
                   last_summary=summary, timeout_reason=timeout_reason)


def trial_policy_of(policy: UpdatePolicy | None) -> TrialPolicy:
    """The health policy a trial armed now is judged by (the defaults without a spec)."""
    if policy is None:
        return TrialPolicy()
    hp = policy.spec.health
    return TrialPolicy(hp.url, hp.interval, hp.timeout, hp.success_threshold,
                       policy.spec.rollback.automatic)


def _judge_trial(policy: UpdatePolicy | None, obs: ObservedState,
                 now: datetime) -> Action | None:
    """Confirm, probe or roll back the booted slot while it is on trial.

    The policy captured at arming rules; the spec's is used only for a trial
    armed before policies were captured (or whose record was lost).
    """
    if not obs.on_trial:
        return None
    slot, version = obs.booted, obs.booted_slot.version or "?"
    tp = obs.trial_policy or trial_policy_of(policy)
    if obs.request == "confirm":
        return Confirm(slot, version, f"{version} confirmed by a person (kruxos update confirm)")
    if obs.request == "rollback":
        return Rollback(slot, other(slot), version, MANUAL_ROLLBACK)
    if not tp.automatic:
        return Wait(f"slot {obs.booted_slot.label} runs {version} on trial; automatic "
                    "rollback was off when the trial was armed: confirm or roll back by hand "
                    "(kruxos update confirm / kruxos update rollback)")
    return _health_step(tp, obs, now, version)


def _health_step(tp: TrialPolicy, obs: ObservedState, now: datetime, version: str) -> Action:
    """Probe, wait for the next probe, confirm, or roll back at the deadline."""
    slot, health = obs.booted, obs.health
    if health is None or health.first_probe_at is None:
        return _probe(tp, obs, f"slot {slot} booted {version} on trial: first health probe")
    if health.consecutive_ok >= tp.success_threshold:
        return Confirm(slot, version, f"{version} passed the health check "
                       f"({health.consecutive_ok} healthy answer(s) of {tp.success_threshold} "
                       "needed)")
    deadline = health.first_probe_at + tp.timeout
    if now >= deadline:
        return Rollback(slot, other(slot), version, health.timeout_reason)
    last = f"last: {health.last_summary or 'none'}"
    due = (health.last_probe_at or health.first_probe_at) + tp.interval
    if now < due:
        return Wait(f"slot {slot} on trial: next health probe ({last})",
                    until=min(due, deadline))
    return _probe(tp, obs, f"slot {slot} on trial: health probe ({last})")


def _probe(tp: TrialPolicy, obs: ObservedState, reason: str) -> ProbeHealth:
    return ProbeHealth(obs.booted, reason, url=tp.url,
                       timeout_s=min(tp.interval.total_seconds(), 10.0), progress=obs.health)


def _give_back_slot(policy: UpdatePolicy | None, obs: ObservedState,
                    now: datetime) -> Action | None:
    """The reboot slot goes back once the reboot it was for is over: the trial confirmed
    or the rollback booted (never while on trial, never before that reboot), and once in
    every boot, so a crash or a lost state file never leaves one held. A call that failed
    is tried again after a while, without holding anything else up."""
    slot = obs.fleet
    if slot is None or slot.problem is not None or obs.on_trial or slot.taken_this_boot:
        return None
    if not slot.held and slot.released_this_boot:
        return None
    if slot.asked_at is not None and now < slot.asked_at + SLOT_RETRY:
        return None
    why = "the reboot it was for is over" if slot.held else "each boot gives it back once"
    return ReleaseRebootSlot(slot.group, f"give the reboot slot (group {slot.group}) back: "
                             f"{why} ({obs.booted_slot.version or '?'} runs in slot "
                             f"{obs.booted_slot.label})")


def _finish_pending(policy: UpdatePolicy | None, obs: ObservedState,
                    now: datetime) -> Action | None:
    """Steps the bootloader environment shows as started but not finished."""
    target = obs.other_slot
    if obs.request == "rollback" and target.mark == "good" and target.version:
        return Rollback(obs.booted, target.name, obs.booted_slot.version, MANUAL_ROLLBACK)
    if obs.trial == target.name and target.version and policy is None:
        return Wait(f"the trial of {target.version} in slot {target.label} is armed; no "
                    "valid spec is known, so no reboot starts")
    if obs.trial == target.name and target.version and policy is not None:
        wanted = desired_version(policy, obs)
        if wanted is not None and wanted != target.version:
            return Disarm(target.name, target.version, f"the trial of {target.version} in slot "
                          f"{target.label} is armed but {wanted} is wanted now: disarm it")
        gate = _reboot_gate(policy, obs, now, target.version, armed=True)
        return gate or ArmTrial(target.name, target.version,
                                f"trial of {target.version} in slot {target.label} is armed: "
                                "reboot into it", policy=trial_policy_of(policy))
    if obs.default != obs.booted and obs.trial is None:
        return Reboot(obs.default, f"the bootloader boots slot {obs.default} next: finish "
                      "the switch with a reboot")
    staging_there = obs.staging is not None and obs.staging.slot == target.name
    # The bootloader's fallback trace stays in its env until the next arming: it is
    # about the version last armed, not about a slot a cancel marked bad since.
    armed_last = obs.trial_policy_version
    if (obs.fallback_trace and target.mark == "bad" and target.version
            and obs.rolled_back_from != target.version and not staging_there
            and armed_last in (None, target.version)):
        return NoteFallback(target.version, f"Trial boot failed — {obs.fallback_trace}")
    return None


def desired_version(policy: UpdatePolicy, obs: ObservedState) -> str | None:
    """The version the device should run now; ``None`` when it cannot be known yet."""
    return _desired(policy, obs)[0]


def _desired(policy: UpdatePolicy, obs: ObservedState) -> tuple[str | None, str]:
    """The desired version and where it comes from; ``None`` when it cannot be known."""
    if obs.override is not None:
        return obs.override.version, "a person at the device pinned"
    wanted = policy.spec.version
    if wanted != "latest":
        return wanted, "spec wants"
    return obs.channel.latest, "latest on the channel is"


def _converge(policy: UpdatePolicy, obs: ObservedState, now: datetime) -> Action:
    """Bring the booted version to the desired one; say which newer releases ``latest`` skipped
    and which its phased rollout holds back (looking again by the time one is offered)."""
    action = _converge_to(policy, obs, now)
    note = _skipped_note(policy, obs) + _held_note(policy, obs)
    action = replace(action, reason=action.reason + note) if note else action
    return _look_again_by(policy, obs, action)


def _held_note(policy: UpdatePolicy, obs: ObservedState) -> str:
    """``; 1.2.0 is being rolled out: this device is offered it at ...``, or ``""``.

    Only ``latest`` is held back by a rollout: a version the spec names, or a
    person pinned, is a person's choice.
    """
    if obs.override is not None or policy.spec.version != "latest" or not obs.channel.held:
        return ""
    reasons = list(obs.channel.held.values())
    more = len(reasons) - _NAMED_SKIPS
    return "; " + "; ".join(reasons[:_NAMED_SKIPS]) + (f"; and {more} more held back"
                                                       if more > 0 else "")


def _look_again_by(policy: UpdatePolicy, obs: ObservedState, action: Action) -> Action:
    """A rest (``Nothing``, ``Wait``) that ends no later than the first held-back release is
    offered: ``latest`` may change then."""
    until = obs.channel.held_until
    if until is None or obs.override is not None or policy.spec.version != "latest":
        return action
    if isinstance(action, Nothing) and (action.until is None or action.until > until):
        return replace(action, until=until)
    if isinstance(action, Wait) and (action.until is None or action.until > until):
        return replace(action, until=until)
    return action


def _converge_to(policy: UpdatePolicy, obs: ObservedState, now: datetime) -> Action:
    desired, source = _desired(policy, obs)
    booted, running = obs.booted_slot, obs.running_version
    if desired is None:
        none = "channel lists no release" + (" this device can install" if obs.channel.refused
                                             else "")
        return Wait(f"cannot resolve 'latest': {obs.channel.error or none}",
                    until=now + obs.channel.retry_after)
    if obs.failed is not None and obs.failed.version == desired:
        return Blocked(f"{desired} was rolled back ({obs.failed.reason}); not retried until "
                       "the desired version changes")
    if desired == running:
        where = obs.container.label if obs.container else f"slot {booted.label}"
        return Nothing(f"{where} runs {desired}, {_as_wanted(source)}")
    unsupported = obs.channel.refused.get(desired)
    if unsupported is not None:
        return Blocked(f"{desired} cannot be installed on this device: it {unsupported} "
                       f"({source} {desired})")
    refusal = _refuse_downgrade(policy, running, desired)
    if refusal is not None:
        return refusal
    if obs.override is not None and obs.override.paused:
        return Wait(f"the download of {desired} was stopped by a person; "
                    "'kruxos update apply' resumes it")
    if policy.spec.suspend and not _person_reboots_now(obs):
        return Wait(f"suspended by the spec: {source} {desired}, no new step starts")
    if obs.container is not None:
        return converge_container(policy, obs, now, desired, trial_policy_of(policy))
    need = service_need(obs, desired)
    if need is not None:
        return converge_services(policy, obs, now, desired, need, trial_policy_of(policy))
    return _switch_or_stage(policy, obs, now, desired, source)


#: Skipped releases a reason names one by one; the rest are counted.
_NAMED_SKIPS = 3


def _skipped_note(policy: UpdatePolicy, obs: ObservedState) -> str:
    """``; skipped 1.2.0 (requires X, ...)``: newer releases ``latest`` passed over, or ``""``.

    ``latest`` is the newest release this device can install; a newer one that
    requires a feature the device does not implement is skipped, never staged,
    and every reason that follows from ``latest`` says so.
    """
    if obs.override is not None or policy.spec.version != "latest":
        return ""
    latest = obs.channel.latest
    newer = sorted((v for v in obs.channel.refused if latest is None or is_newer(v, latest)),
                   key=lambda v: ((Version(v),) if is_semver(v) else (), v), reverse=True)
    if not newer:
        return ""
    named = ", ".join(f"{v} ({obs.channel.refused[v]})" for v in newer[:_NAMED_SKIPS])
    more = len(newer) - _NAMED_SKIPS
    return f"; skipped {named}" + (f" and {more} more" if more > 0 else "")


def _person_reboots_now(obs: ObservedState) -> bool:
    return obs.override is not None and obs.override.reboot == "now"


def _as_wanted(source: str) -> str:
    if source == "spec wants":
        return "as the spec wants"
    if "channel" in source:
        return "the latest release on the channel"
    return "as pinned at the device (kruxos update resume hands back to the spec)"


def service_rollback_plan(obs: ObservedState) -> ServiceRollback | None:
    """What ``kruxos update rollback`` does when a service update is what changed last
    (``None``: the slot rollback): :func:`reconciler.service_rules.service_rollback`."""
    return service_rollback(obs)


def rollback_refusal(obs: ObservedState) -> str | None:
    """Why a person's rollback of a slot not on trial cannot be done, or ``None``."""
    target = obs.other_slot
    if target.mark == "empty" or target.version is None:
        return f"cannot roll back: the other slot {target.label} is empty"
    if obs.failed is not None and obs.failed.version == target.version:
        return (f"cannot roll back: the other slot {target.label} holds {target.version}, "
                f"which failed ({obs.failed.reason})")
    if target.mark != "good":
        return (f"cannot roll back: the other slot {target.label} holds {target.version} "
                f"marked {target.mark}, not a good slot to boot")
    return None


def downgrade_refusal(policy: UpdatePolicy | None, booted: str | None,
                      version: str) -> str | None:
    """Why pinning ``version`` over the running ``booted`` is refused, or ``None``."""
    allowed = policy is not None and policy.spec.allow_downgrade
    if booted is None or allowed or not (is_semver(booted) and is_semver(version)):
        return None
    if Version(version) >= Version(booted):
        return None
    return (f"{version} is lower than the running {booted}; the spec does not allow "
            "downgrades (allowDowngrade: false)")


def is_newer(latest: str, current: str | None) -> bool:
    """Whether ``latest`` is an update for ``current`` (a version not semver: any release is)."""
    if current is None or not is_semver(current) or not is_semver(latest):
        return current != latest
    return Version(latest) > Version(current)


def _refuse_downgrade(policy: UpdatePolicy, booted: str | None, desired: str) -> Action | None:
    """A downgrade needs ``allowDowngrade``; a version that is not semver cannot be ordered,
    so it is no downgrade (the slot's identity problem is named in the reasons instead)."""
    if booted is None or policy.spec.allow_downgrade:
        return None
    if not (is_semver(booted) and is_semver(desired)) or Version(desired) >= Version(booted):
        return None
    return Blocked(f"{desired} is lower than the running {booted}; set allowDowngrade: true "
                   "to go back")


def _switch_or_stage(policy: UpdatePolicy, obs: ObservedState, now: datetime,
                     desired: str, source: str) -> Action:
    """Boot the other slot if it holds ``desired`` verified, else stage it there."""
    target = obs.other_slot
    why = f"{source} {desired}, booted {obs.booted_slot.version or 'nothing'}"
    if obs.booted_slot.problem:
        why += f" (slot {obs.booted_slot.label}: {obs.booted_slot.problem})"
    if target.version == desired and target.mark in ("staged", "good"):
        gate = _reboot_gate(policy, obs, now, desired)
        return gate or ArmTrial(target.name, desired,
                                f"{desired} is staged in slot {target.label}: {why}"
                                f"{_in_window(policy, now)}",
                                policy=trial_policy_of(policy))
    if target.missing:
        return Wait(f"cannot stage {desired}: slot {target.label}: {target.problem} (the "
                    "image layer's slots name a device this machine does not have)",
                    until=now + MISSING_SLOT_RETRY)
    if obs.channel.error is not None and desired not in obs.channel.versions:
        note = f" ({why})" if obs.booted_slot.problem else ""
        return Wait(f"cannot stage {desired}: {obs.channel.error}{note}",
                    until=now + obs.channel.retry_after)
    if desired not in obs.channel.versions:
        return Blocked(f"{desired} is not published on the channel ({why})")
    if obs.disk_full:
        return Wait(f"the data disk is full: {desired} is not staged until space is freed "
                    "(the space kept for rollback records is in use)")
    windows = policy.spec.rollout.window_values()
    if policy.spec.rollout.stage == "in-window" and not is_open(windows, now):
        return Wait(f"{desired} stages in a maintenance window (rollout.stage: in-window; "
                    f"{_windows_text(windows)})", until=next_open(windows, now))
    resumed = obs.staging is not None and obs.staging.version == desired
    verb = "Resume staging" if resumed else "Stage"
    return Stage(desired, target.name, f"{verb} {desired} into slot {target.label}: {why}")


def _reboot_gate(policy: UpdatePolicy, obs: ObservedState, now: datetime,
                 version: str, armed: bool = False) -> Action | None:
    """A Wait (or an arm without reboot, or a step to take a reboot slot) when a forward
    reboot into ``version`` is not for now. The gates in order: the loop breaker and a
    full disk, a person's pin, suspend and autoReboot, the maintenance window, then the
    fleet's reboot slot (``docs/states.md``). A rollback passes none of them."""
    return _window_gate(policy, obs, now, version, armed) or _fleet_gate(policy, obs, now,
                                                                         version)


def _fleet_gate(policy: UpdatePolicy, obs: ObservedState, now: datetime,
                version: str) -> Action | None:
    """The last gate: a reboot slot from the spec's FleetLock server (``None``: go on; the
    executor asks again right before the reboot, and does not reboot without it)."""
    if policy.spec.rollout.fleet_lock is None:
        return None
    slot = obs.fleet
    if slot is None or slot.problem is not None:
        why = slot.problem if slot is not None else "the device has no fleet lock setup"
        return Blocked(f"{version} waits for a reboot slot, but this device cannot ask for "
                       f"one: {why}")
    if slot.held:
        return None
    if slot.asked_at is not None and now < slot.asked_at + SLOT_RETRY:
        return Wait(f"waiting for a reboot slot (group {slot.group}) to reboot into "
                    f"{version}: {slot.answer or 'refused'}", until=slot.asked_at + SLOT_RETRY)
    return TakeRebootSlot(slot.group, version, f"{version} is ready to reboot into: ask for "
                          f"a reboot slot (group {slot.group})")


def _window_gate(policy: UpdatePolicy, obs: ObservedState, now: datetime,
                 version: str, armed: bool = False) -> Action | None:
    """A Wait (or an arm without reboot) when a reboot into ``version`` is not for now."""
    if obs.forward_reboots > LOOP_LIMIT:
        return Blocked(f"loop breaker: {obs.forward_reboots} reboots into a trial in a row "
                       "without reaching a confirmed state; no forward reboot until the spec "
                       "changes or a person asks (kruxos update apply, kruxos update resume)")
    if obs.disk_full:  # a new trial's records could not be kept in the trail
        return Wait(f"{version} is staged in slot {obs.other_slot.label}; the data disk is "
                    "full: no reboot into a trial until space is freed (the space kept for "
                    "rollback records is in use)")
    applies, person = _person_gate(policy, obs, version, armed)
    if applies:
        return person
    rollout = policy.spec.rollout
    if policy.spec.suspend:
        return Wait(f"{version} is staged; suspended by the spec, no reboot starts")
    if not rollout.auto_reboot:
        return Wait(f"{version} is staged in slot {obs.other_slot.label}; autoReboot is off: "
                    "waiting for a person to reboot")
    windows = rollout.window_values()
    if is_open(windows, now):
        return None
    opens = next_open(windows, now)
    when = opens.strftime("%Y-%m-%d %H:%M UTC") if opens else "never"
    return Wait(f"{version} is staged in slot {obs.other_slot.label}; reboot waits for the "
                f"maintenance window opening {when} ({_windows_text(windows)})", until=opens)


def _windows_text(windows: Sequence[Window]) -> str:
    """``Mon,Wed 02:00+1h30m Europe/Berlin; Sat 03:00+1h UTC``."""
    return "; ".join(describe(window) for window in windows)


def _in_window(policy: UpdatePolicy, now: datetime) -> str:
    """`` in the maintenance window …, open until …`` when windows gate the reboot."""
    windows = policy.spec.rollout.window_values()
    if not windows:
        return ""
    closes = closes_at(windows, now)
    until = f", open until {closes.strftime('%Y-%m-%d %H:%M UTC')}" if closes else ""
    return f"; in the maintenance window ({_windows_text(windows)}{until})"


def _person_gate(policy: UpdatePolicy, obs: ObservedState, version: str,
                 armed: bool) -> tuple[bool, Action | None]:
    """Whether a person's pin decides this reboot, and what it says (``None``: reboot now)."""
    pin = obs.override
    if pin is None or pin.version != version or pin.reboot == "rules":
        return False, None
    target = obs.other_slot
    if pin.reboot == "now":
        return True, None
    if pin.reboot == "ask":
        return True, Wait(f"{version} is staged in slot {target.label}; waiting for the person "
                          "at the device to answer 'Reboot now?'")
    if armed:
        return True, Wait(f"{version} is armed in slot {target.label}: it activates on the "
                          "next reboot")
    # the pin says "next reboot", not how it was said (--no-reboot, --json, N or Ctrl-C)
    return True, ArmTrial(target.name, version, f"{version} activates on the next reboot, as "
                          "the person at the device asked (kruxos update apply, not rebooting "
                          "now)", reboot=False,
                          policy=trial_policy_of(policy))
