"""The decision table of the fleet's reboot slot (``rollout.fleetLock``).

Axes: the spec names a server or not x the slot (none asked / refused a moment ago /
refused long ago / held, taken this boot or in an earlier one / given back this boot)
x where the device is (staged and ready to reboot, armed, on trial, the rollback
booted, a person's pin) x the earlier gates (window closed, autoReboot off). The gate
is the last one before a forward reboot; a rollback and a trial's judgement never
wait for it; the slot goes back once the reboot it was for is over, and once a boot.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from reconciler.actions import (
    ArmTrial,
    Blocked,
    Confirm,
    ProbeHealth,
    ReleaseRebootSlot,
    Rollback,
    Stage,
    TakeRebootSlot,
    Wait,
)
from reconciler.decide import SLOT_RETRY, decide
from reconciler.observed import FleetSlot, ObservedState, Override
from tests.test_decide import CLOSED, NOW, observed, on_trial, policy, started

LOCK = {"fleetLock": {"url": "http://127.0.0.1:8090/"}}
FREE = FleetSlot("canary", released_this_boot=True)


def staged(slot: FleetSlot | None = FREE, **fields: Any) -> ObservedState:
    return observed(other_version="1.0.1", other_mark="staged", fleet=slot, **fields)


def test_without_a_server_in_the_spec_the_reboot_needs_no_slot() -> None:
    assert isinstance(decide(policy("1.0.1"), staged(), NOW), ArmTrial)
    assert isinstance(decide(policy("1.0.1"), staged(None), NOW), ArmTrial)


def test_a_reboot_into_a_trial_first_asks_for_a_slot_in_the_device_group() -> None:
    action = decide(policy("1.0.1", rollout=LOCK), staged(), NOW)
    assert action == TakeRebootSlot("canary", "1.0.1", action.reason)
    assert action.reason == "1.0.1 is ready to reboot into: ask for a reboot slot (group canary)"


def test_a_held_slot_lets_the_reboot_go_on() -> None:
    held = replace(FREE, held=True, taken_this_boot=True)
    assert isinstance(decide(policy("1.0.1", rollout=LOCK), staged(held), NOW), ArmTrial)


def test_a_refused_slot_waits_and_asks_again_after_the_retry() -> None:
    refused = replace(FREE, asked_at=NOW - timedelta(seconds=1),
                      answer="409 failed_lock: all 1 slots are held")
    wait = decide(policy("1.0.1", rollout=LOCK), staged(refused), NOW)
    assert isinstance(wait, Wait) and wait.until == NOW - timedelta(seconds=1) + SLOT_RETRY
    assert wait.reason == ("waiting for a reboot slot (group canary) to reboot into 1.0.1: "
                           "409 failed_lock: all 1 slots are held")
    later = replace(refused, asked_at=NOW - SLOT_RETRY)
    assert isinstance(decide(policy("1.0.1", rollout=LOCK), staged(later), NOW),
                      TakeRebootSlot)


def test_the_window_comes_before_the_slot() -> None:
    rollout = {**LOCK, "windows": [CLOSED]}
    wait = decide(policy("1.0.1", rollout=rollout), staged(), NOW)
    assert isinstance(wait, Wait) and "maintenance window" in wait.reason
    off = {**LOCK, "autoReboot": False}
    assert "autoReboot is off" in decide(policy("1.0.1", rollout=off), staged(), NOW).reason


def test_an_armed_trial_waiting_for_its_reboot_asks_for_a_slot_too() -> None:
    armed = staged(trial="B")
    assert isinstance(decide(policy("1.0.1", rollout=LOCK), armed, NOW), TakeRebootSlot)


@pytest.mark.parametrize("answer", ["now", "rules"])
def test_a_person_who_asked_for_now_still_takes_a_slot(answer: str) -> None:
    pin = Override("1.0.1", reboot=answer, spec_wanted="1.0.1")  # type: ignore[arg-type]
    action = decide(policy("1.0.1", rollout=LOCK), staged(override=pin), NOW)
    assert isinstance(action, TakeRebootSlot)


def test_activating_on_the_next_reboot_needs_no_slot_it_does_not_reboot() -> None:
    pin = Override("1.0.1", reboot="next-boot", spec_wanted="1.0.1")
    action = decide(policy("1.0.1", rollout=LOCK), staged(override=pin), NOW)
    assert isinstance(action, ArmTrial) and not action.reboot


def test_a_device_without_an_id_is_blocked_with_why_not_rebooted() -> None:
    lost = FleetSlot("canary", problem="no deviceId and /etc/machine-id is empty")
    action = decide(policy("1.0.1", rollout=LOCK), staged(lost), NOW)
    assert isinstance(action, Blocked)
    assert action.reason.endswith("cannot ask for one: no deviceId and /etc/machine-id is "
                                  "empty")


def test_staging_never_waits_for_a_slot() -> None:
    action = decide(policy("1.0.1", rollout=LOCK), observed(fleet=FREE), NOW)
    assert isinstance(action, Stage)


# ---- the trial and the rollback: never held; the slot goes back after -------------------

def test_a_trial_is_judged_and_its_slot_kept_until_then() -> None:
    held = FleetSlot("canary", held=True)
    trial = replace(on_trial(started(ok=0)), fleet=held)
    action = decide(policy("1.0.1", rollout=LOCK), trial, NOW)
    assert isinstance(action, ProbeHealth | Wait)
    assert not isinstance(action, ReleaseRebootSlot)
    healthy = replace(on_trial(started(ok=1)), fleet=held)
    assert isinstance(decide(policy("1.0.1", rollout=LOCK), healthy, NOW), Confirm)


def test_a_trial_timed_out_rolls_back_whatever_the_slot() -> None:
    refused = FleetSlot("canary", asked_at=NOW, answer="503 store_unavailable")
    timed_out = replace(on_trial(started(ago=timedelta(hours=1))), fleet=refused)
    assert isinstance(decide(policy("1.0.1", rollout=LOCK), timed_out, NOW), Rollback)


@pytest.mark.parametrize("spec", [policy("1.0.1", rollout=LOCK), policy("1.0.1"), None])
def test_after_the_confirm_or_the_rollback_boot_the_held_slot_goes_back(spec: Any) -> None:
    held = FleetSlot("canary", held=True)
    confirmed = observed("B", "1.0.1", "1.0.0", "good", default="B", fleet=held)
    action = decide(spec, confirmed, NOW)
    assert isinstance(action, ReleaseRebootSlot), action
    assert action.reason == ("give the reboot slot (group canary) back: the reboot it was "
                             "for is over (1.0.1 runs in slot B (sda3))")


def test_a_slot_taken_in_this_boot_is_not_given_back_before_its_reboot() -> None:
    taken = FleetSlot("canary", held=True, taken_this_boot=True)
    action = decide(policy("1.0.1", rollout=LOCK), staged(taken), NOW)
    assert isinstance(action, ArmTrial)


def test_each_boot_gives_the_slot_back_once_even_with_nothing_recorded() -> None:
    unknown = FleetSlot("canary")
    action = decide(policy("1.0.0", rollout=LOCK), observed(fleet=unknown), NOW)
    assert isinstance(action, ReleaseRebootSlot)
    assert "each boot gives it back once" in action.reason
    done = decide(policy("1.0.0", rollout=LOCK), observed(fleet=FREE), NOW)
    assert not isinstance(done, ReleaseRebootSlot)


def test_a_failed_give_back_is_tried_again_later_without_holding_anything_up() -> None:
    failed = FleetSlot("canary", held=True, asked_at=NOW - timedelta(seconds=1),
                       answer="unreachable: connection refused")
    action = decide(policy("1.0.2", rollout=LOCK), observed(fleet=failed), NOW)
    assert isinstance(action, Stage), action  # staging goes on meanwhile
    later = replace(failed, asked_at=NOW - SLOT_RETRY)
    assert isinstance(decide(policy("1.0.2", rollout=LOCK), observed(fleet=later), NOW),
                      ReleaseRebootSlot)
