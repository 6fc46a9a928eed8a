"""The rules of a container update, for ``decide`` (pure).

On a device with ``runtime: docker`` there are no slots and no bootloader: a
release is a container image named by its signed digest. The update is the
seed's manual ``docker pull`` / ``stop`` / ``rm`` / ``run``, made safe::

    (desired differs) ─► PullImage (by signed digest) ─► pulled ─► [restart gate] ─► SwapContainer
      ─► started ─► ProbeContainer … ─► ConfirmContainer (old container removed)
                                    └─► RollbackContainer (deadline, exited, failed start)

Like a trial: the health policy is captured at the swap and judges the update
whatever the spec says later; once the swap began, the update is finished
(resumed after a crash, probed, confirmed or rolled back) before anything new
starts; nothing holds a rollback (no window, no suspend, no missing spec). A
rollback keeps the version as failed, so it is not tried again until the
desired version changes. What a crash left is read from the engine (which
containers exist, what image they run) and the state file (the step recorded
before it ran): a ``swapping`` update is resumed, a decided rollback finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.actions import (
    Action,
    Blocked,
    ConfirmContainer,
    ProbeContainer,
    PullImage,
    RefuseRequest,
    RollbackContainer,
    SwapContainer,
    Wait,
)
from reconciler.observed import (
    ContainerUpdate,
    ContainerView,
    ObservedState,
    Slot,
    SlotName,
    TrialPolicy,
)
from reconciler.spec import UpdatePolicy
from reconciler.windows import describe, is_open, next_open

#: The state file's sections: the update on its way, and the release the container runs.
UPDATE = "container_update"
RELEASE = "container_release"
#: How soon a pass looks again at an engine that did not answer.
ENGINE_RETRY = timedelta(seconds=10)
#: The reason of a person's rollback (the same words as a slot device's).
MANUAL = "manual (kruxos update rollback)"


@dataclass(frozen=True)
class ContainerRollback:
    """What ``kruxos update rollback`` does on a container device: give up ``version`` and
    run ``to_version`` again (the kept old container, or a new one from the image kept since
    the last confirm), or why it cannot (``refusal``)."""

    version: str | None
    to_version: str | None
    refusal: str | None = None


def container_rollback(obs: ObservedState) -> ContainerRollback | None:
    """The person's rollback of a container device (``None``: not a container device).

    An update on its way (swapping or on trial) is rolled back to the container that ran
    before; a confirmed one to the image that ran before it, which the engine keeps until
    the next confirm. Anything older is gone: that needs a pin (``kruxos update apply``)."""
    view = obs.container
    if view is None:
        return None
    if view.update is not None:
        return ContainerRollback(view.update.version, view.update.from_version)
    if view.kept_image is None:
        return ContainerRollback(view.version, None, f"cannot roll back: {view.label} runs "
                                 f"{view.version or 'an unknown release'} and the engine keeps "
                                 "no image it ran before (an image is kept from one confirmed "
                                 "update to the next); pin an older release with kruxos update "
                                 "apply VERSION instead")
    if view.version is None:
        return ContainerRollback(None, view.kept_version, f"cannot roll back: {view.label} runs "
                                 "no release the signed channel lists")
    return ContainerRollback(view.version, view.kept_version)


def container_state(view: ContainerView, **fields: Any) -> ObservedState:
    """The observed state of a container device: no slots, so the shared rules (the desired
    version, blocks, pins, suspend) see one "slot" holding the version the container runs
    and nothing else; the container rules read ``view``."""
    slots: dict[SlotName, Slot] = {"A": Slot("A", view.name, view.version, "good"),
             "B": Slot("B", "none", None, "empty")}
    return ObservedState(booted="A", slots=slots, default="A", container=view, **fields)


def judge_container(obs: ObservedState, fallback: TrialPolicy, now: datetime) -> Action | None:
    """Finish an update whose swap began: resume, probe, confirm or roll back (any spec);
    ``None`` when there is none (or the device has no container runtime)."""
    view = obs.container
    if view is None:
        return None
    if view.update is None:
        return _settled_request(obs, view)
    update = view.update
    if obs.failed is not None and obs.failed.version == update.version:
        return RollbackContainer(update.version, update.from_version, obs.failed.reason
                                 or f"{update.version} failed")
    if obs.request == "rollback":
        return RollbackContainer(update.version, update.from_version, MANUAL)
    if view.engine_error is not None:
        return Wait(f"the update to {update.version} is under way; the container engine does "
                    f"not answer ({view.engine_error})", until=now + ENGINE_RETRY)
    if update.step == "start-failed":
        return RollbackContainer(update.version, update.from_version,
                                 f"{update.version}: the new container did not start "
                                 f"({update.problem or 'no reason given'})")
    if update.step == "swapping":
        return SwapContainer(update.version, update.digest, update.from_version,
                             f"the swap to {update.version} was interrupted: finish it",
                             policy=update.policy or fallback)
    return _judge_started(view, update, update.policy or fallback, now, obs.request)


def _settled_request(obs: ObservedState, view: ContainerView) -> Action | None:
    """A person's rollback of a confirmed update (the kept image runs again), or a request
    there is nothing for any more (forgotten, with why)."""
    if obs.request == "confirm":
        return RefuseRequest("confirm", f"nothing to confirm: {view.label} runs "
                             f"{view.version or 'an unknown release'}, no update is on trial")
    if obs.request != "rollback":
        return None
    plan = container_rollback(obs)
    assert plan is not None
    if plan.refusal is not None or plan.version is None:
        return RefuseRequest("rollback", plan.refusal or "cannot roll back")
    return RollbackContainer(plan.version, plan.to_version,
                             f"{MANUAL}: the last change was the update {plan.to_version or '?'} "
                             f"→ {plan.version}", image=view.kept_image)


def _judge_started(view: ContainerView, update: ContainerUpdate, policy: TrialPolicy,
                   now: datetime, request: str | None) -> Action:
    current = view.current
    if current is None or not current.running:
        state = "gone" if current is None else current.status
        return RollbackContainer(update.version, update.from_version,
                                 f"{update.version}: the new container is not running "
                                 f"({view.name}: {state})")
    if request == "confirm":
        return ConfirmContainer(update.version, f"{update.version} confirmed by a person "
                                "(kruxos update confirm)")
    if not policy.automatic:
        return Wait(f"{update.version} runs in {view.label} on trial; automatic rollback was "
                    "off at the swap: a person decides")
    return _health_step(update, policy, now)


def _health_step(update: ContainerUpdate, policy: TrialPolicy, now: datetime) -> Action:
    """Probe, wait for the next probe, confirm, or roll back at the deadline."""
    health, version = update.health, update.version
    if health is None or health.first_probe_at is None:
        return _probe(update, policy, f"{version} started: first health probe")
    if health.consecutive_ok >= policy.success_threshold:
        return ConfirmContainer(version, f"{version} passed the health check "
                                f"({health.consecutive_ok} healthy answer(s) of "
                                f"{policy.success_threshold} needed)")
    deadline = health.first_probe_at + policy.timeout
    if now >= deadline:
        return RollbackContainer(version, update.from_version, health.timeout_reason)
    last = f"last: {health.last_summary or 'none'}"
    due = (health.last_probe_at or health.first_probe_at) + policy.interval
    if now < due:
        return Wait(f"{version} on trial: next health probe ({last})", until=min(due, deadline))
    return _probe(update, policy, f"{version} on trial: health probe ({last})")


def _probe(update: ContainerUpdate, policy: TrialPolicy, reason: str) -> ProbeContainer:
    return ProbeContainer(update.version, reason, url=policy.url,
                          timeout_s=min(policy.interval.total_seconds(), 10.0),
                          progress=update.health)


def converge_container(policy: UpdatePolicy, obs: ObservedState, now: datetime, desired: str,
                       captured: TrialPolicy) -> Action:
    """Pull ``desired``'s image by its signed digest, or swap to it once pulled (gated)."""
    view = obs.container
    assert view is not None, "called for container devices only"
    signed = obs.channel.images.get(desired)
    if signed is None:
        if obs.channel.error is not None and desired not in obs.channel.versions:
            return Wait(f"cannot pull {desired}: {obs.channel.error}",
                        until=now + obs.channel.retry_after)
        return Blocked(f"{desired} has no signed container image on the channel; "
                       f"{view.label} keeps {view.version or 'what it runs'}")
    if view.engine_error is not None:
        return Wait(f"cannot update to {desired}: the container engine does not answer "
                    f"({view.engine_error})", until=now + ENGINE_RETRY)
    digest = signed.partition("@")[2]
    if view.current is None:
        running = "no container yet"
    elif view.version is None:
        running = "an unknown release"
    else:
        running = view.version
    now_asked = obs.override is not None and obs.override.reboot == "now"
    if digest in view.pulled:
        gate = None if now_asked else _restart_gate(policy, now, desired, view)
        what = f"start {view.label}" if view.current is None else \
            f"swap {view.label} from {running}"
        return gate or SwapContainer(desired, digest, view.version,
                                     f"{desired} is pulled ({digest[:19]}…): {what}",
                                     policy=captured)
    windows = policy.spec.rollout.window_values()
    if policy.spec.rollout.stage == "in-window" and not is_open(windows, now) and not now_asked:
        return Wait(f"{desired} is pulled in a maintenance window (rollout.stage: in-window)",
                    until=next_open(windows, now))
    return PullImage(desired, digest, f"Pull {desired} by its signed digest {digest[:19]}… "
                     f"({view.label}: {running})" if view.current is None else
                     f"({view.label} runs {running})")


def _restart_gate(policy: UpdatePolicy, now: datetime, desired: str,
                  view: ContainerView) -> Action | None:
    """A Wait while the swap (a restart of the product) waits for a maintenance window
    (not when a person asked for it now: ``kruxos update apply --yes``)."""
    rollout = policy.spec.rollout
    windows = rollout.window_values()
    if view.current is None or rollout.service_restarts == "any-time" or is_open(windows, now):
        return None
    opens = next_open(windows, now)
    when = opens.strftime("%Y-%m-%d %H:%M UTC") if opens else "never"
    return Wait(f"{desired} is pulled; the swap of {view.label} waits for the maintenance "
                f"window opening {when} ({'; '.join(describe(w) for w in windows)}; "
                "rollout.serviceRestarts: any-time does not wait)", until=opens)
