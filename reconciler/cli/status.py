"""``kruxos update status``: the seed's lines, plus the states it does not show.

Presentation only: the facts come from ``observe`` and the next step from
``decide`` (the same pure function the daemon runs), never from logic here.

Forms (the first four lines are always there)::

    Boot slot: B (sda3)
    Version: 1.0.1
    Boot status: CONFIRMED
    Previous: 1.0.0 (sda2, available for rollback)

    Boot status: CONFIRMED (rolled back from 1.0.1)
    Rollback reason: Health check timeout — gateway failed to start

    Boot status: PENDING
    Trial: 2 tries left; health check 0 of 1 healthy answers, 1m52s left (last: ...)

    Services: 1.0.2 (service update on 1.0.1, no reboot)
      gateway 1.0.3 (service update, previous 1.0.2)
    Service update: 1.0.3 (gateway) restarted

    Staging: 1.0.1 into B (sda3), 45% (1.3 of 3.1 MB)
    Staged: 1.0.1 in B (sda3)
    Not installable: 1.2.0 (requires service-artifacts, which this device does not implement)
    Next: <what the reconciler does next, and why>

A device with ``runtime: docker`` has no slots; its form::

    Runtime: docker
    Container: kruxos runs 1.0.1 (running)
    Kept for rollback: kruxos-previous (exited)
    Container update: 1.0.2 started; health check 0 of 1 healthy answers (last: 404)
    Rolled back: 1.0.2 (Health check timeout — ...)
    Next: ...
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from reconciler.actions import Action
from reconciler.decide import desired_version, trial_policy_of
from reconciler.observed import ObservedState
from reconciler.spec import UpdatePolicy, format_duration


def status_lines(obs: ObservedState, policy: UpdatePolicy | None, action: Action | None,
                 now: datetime) -> list[str]:
    """The human form of ``update status``."""
    if obs.container is not None:
        return _container_lines(obs, action)
    booted = obs.booted_slot
    lines = [f"Boot slot: {booted.label}", f"Version: {booted.version or 'unknown'}",
             f"Boot status: {obs.boot_status}"]
    if obs.service_release is not None:
        lines.append(f"Services: {obs.service_release} (service update on "
                     f"{booted.version or 'unknown'}, no reboot)")
    for name, current, previous in obs.overlays:
        before = f"previous {previous}" if previous else "previous: the image's own"
        lines.append(f"  {name} {current or 'removed'} (service update, {before})")
    update = obs.service_update
    if update is not None:
        names = ", ".join(update.services) or "no service"
        lines.append(f"Service update: {update.version} ({names}) {update.step}")
    if obs.on_trial:
        lines.append(_trial_line(obs, policy, now))
    if obs.rolled_back_from and obs.rollback_reason and not obs.on_trial:
        lines.append(f"Rollback reason: {obs.rollback_reason}")
    wanted = desired_version(policy, obs) if policy is not None else None
    lines.extend(_other_slot_lines(obs, wanted))
    if obs.fleet is not None and (obs.fleet.held or obs.fleet.answer):
        state = "held" if obs.fleet.held else f"not held (last answer: {obs.fleet.answer})"
        lines.append(f"Reboot slot: {state}, group {obs.fleet.group}")
    if obs.disk_full:
        lines.append("Data disk: full (the space kept for rollback records is in use; free "
                     "space on the data dir)")
    if obs.state_problem is not None:
        lines.append(f"State file: {obs.state_problem}")
    if obs.boot_env_problem is not None:
        lines.append(f"Boot env: {obs.boot_env_problem}")
    lines.extend(_refused_lines(obs))
    if obs.override is not None:
        who = f" by {obs.override.by}" if obs.override.by else ""
        lines.append(f"Pinned: {obs.override.version} at this device{who} "
                     "('kruxos update resume' hands back to the spec)")
    if action is not None:
        lines.append(f"Next: {action.reason}")
    return lines


def _container_lines(obs: ObservedState, action: Action | None) -> list[str]:
    """The container form: what runs, what is kept, the update on its way, a rollback."""
    view = obs.container
    assert view is not None
    lines = ["Runtime: docker"]
    if view.engine_error is not None:
        lines.append(f"Engine: not answering ({view.engine_error})")
    elif view.current is None:
        lines.append(f"Container: {view.name} does not exist")
    else:
        lines.append(f"Container: {view.name} runs {view.version or 'an unknown release'} "
                     f"({view.current.status})")
    if view.previous is not None:
        lines.append(f"Kept for rollback: {view.previous.name} ({view.previous.status})")
    elif view.kept_image is not None:
        lines.append(f"Kept for rollback: the image of {view.kept_version or 'the release before'}"
                     f" ({view.kept_image[:19]}…; kruxos update rollback starts it again)")
    update = view.update
    if update is not None:
        health = update.health
        said = "" if health is None else (f"; health check {health.consecutive_ok} healthy "
                                          f"answer(s) (last: {health.last_summary or 'none'})")
        lines.append(f"Container update: {update.version} {update.step}{said}")
    if obs.failed is not None:
        lines.append(f"Rolled back: {obs.failed.version} ({obs.failed.reason})")
    lines.extend(_refused_lines(obs))
    if obs.override is not None:
        lines.append(f"Pinned: {obs.override.version} at this device")
    if action is not None:
        lines.append(f"Next: {action.reason}")
    return lines


#: Releases the device cannot install that status names one by one; the rest are counted.
_NAMED_REFUSED = 3


def _refused_lines(obs: ObservedState) -> list[str]:
    """``Not installable: 1.2.0 (requires X, which this device does not implement)``."""
    refused = obs.channel.refused  # newest first
    names = list(refused)[:_NAMED_REFUSED]
    lines = [f"Not installable: {v} ({refused[v]})" for v in names]
    if len(refused) > len(names):
        lines.append(f"Not installable: and {len(refused) - len(names)} more "
                     "(kruxos update status --json lists them)")
    return lines


def _other_slot_lines(obs: ObservedState, wanted: str | None) -> list[str]:
    other = obs.other_slot
    staging = obs.staging
    if staging is not None and staging.slot == other.name and other.mark == "bad":
        pct = 100 * staging.done // max(1, staging.total)
        if staging.version != wanted:
            return [f"Other slot: {other.label} holds a partial {staging.version} ({pct}%), "
                    "marked bad"]
        return [f"Staging: {staging.version} into {other.label}, {pct}% "
                f"({staging.done / 1e6:.1f} of {staging.total / 1e6:.1f} MB)"]
    if other.missing:
        return [f"Other slot: {other.label} missing: {other.problem}"]
    rolled_back = obs.failed is not None and obs.failed.version == other.version
    if other.mark == "good" and other.version and rolled_back:
        return [f"Other slot: {other.label} holds {other.version}, the release rolled back "
                f"from ('kruxos update apply {other.version}' tries it again)"]
    if other.mark == "good" and other.version and not obs.on_trial:
        return [f"Previous: {other.version} ({other.device}, available for rollback)"]
    if other.mark == "good" and obs.on_trial:
        return [f"Previous: {other.version} ({other.device}, the fallback if the trial fails)"]
    if other.mark == "staged" and other.version and obs.trial == other.name:
        return [f"Armed: {other.version} in {other.label}, boots on trial at the next reboot "
                f"({obs.tries_left} tries)"]
    if other.mark == "staged" and other.version:
        return [f"Staged: {other.version} in {other.label}"]
    if other.mark == "bad" and other.version:
        return [f"Other slot: {other.label} holds {other.version}, marked bad"]
    return [f"Other slot: {other.label} empty"]


def _trial_line(obs: ObservedState, policy: UpdatePolicy | None, now: datetime) -> str:
    """The trial as the policy captured at arming judges it (not today's spec)."""
    hp = obs.trial_policy or trial_policy_of(policy)
    health = obs.health
    tries = f"{obs.tries_left} tr{'y' if obs.tries_left == 1 else 'ies'} left"
    if not hp.automatic:
        return (f"Trial: {tries}; automatic health check off (rollback.automatic: false when "
                "the trial was armed): a person decides, 'kruxos update confirm' or "
                "'kruxos update rollback'")
    if health is None or health.first_probe_at is None:
        return f"Trial: {tries}; health check not started yet"
    left = max(timedelta(0), health.first_probe_at + hp.timeout - now)
    return (f"Trial: {tries}; health check {health.consecutive_ok} of "
            f"{hp.success_threshold} healthy answers, {format_duration(left)} left "
            f"(last: {health.last_summary or 'none'})")


#: The facts of a device with slots that a container device does not have: its JSON form
#: leaves them out rather than show the stand-in slot the shared rules see.
_SLOT_FACTS = ("booted", "slots", "default", "trial", "tries_left", "fallback_trace", "health",
               "rolled_back_from", "rollback_reason", "staging", "trial_policy",
               "trial_policy_version", "forward_reboots", "boot_env_problem", "service_release",
               "service_update", "service_last", "overlays")


def status_json(obs: ObservedState, boot_raw: dict[str, Any], policy: UpdatePolicy | None,
                action: Action | None, now: datetime) -> dict[str, Any]:
    """The machine form: every observed fact plus the raw boot environment; on a container
    device (``runtime: docker``), its container instead of slots and a boot environment."""
    doc = asdict(obs)
    doc["runtime"] = "docker" if obs.container is not None else "slots"
    doc["channel"] = {"versions": sorted(obs.channel.versions), "latest": obs.channel.latest,
                      "error": obs.channel.error, "refused": dict(obs.channel.refused),
                      "held": dict(obs.channel.held),
                      "held_until": obs.channel.held_until.isoformat()
                      if obs.channel.held_until else None}
    if obs.container is None:
        doc["slots"] = {name: asdict(slot) for name, slot in obs.slots.items()}
        doc["boot_status"] = obs.boot_status
        doc["boot"] = boot_raw
    else:
        for name in _SLOT_FACTS:
            doc.pop(name)
    doc["next"] = ({"action": action.kind, "reason": action.reason} if action else None)
    doc["time"] = now.isoformat()
    plain: dict[str, Any] = _plain(doc)
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
