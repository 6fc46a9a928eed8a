"""The decision table: decide(spec, observed, now) over its axes, by name.

Axes: boot status (confirmed / pending with tries / pending exhausted / rolled
back) x other slot (empty / staged desired / other version / failed version /
previous good) x desired (= booted / = other slot / new / blocked / lower
without allowDowngrade) x window (open / closed / none) x health (not started /
healthy / unhealthy / timed out) x suspend.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ProbeHealth,
    Reboot,
    RepairBootEnv,
    RestoreState,
    Rollback,
    Stage,
    TakeRequest,
    Wait,
)
from reconciler.decide import count_probe, decide
from reconciler.observed import (
    ChannelView,
    FailedVersion,
    HealthProgress,
    Mark,
    ObservedState,
    Override,
    Request,
    Slot,
    SlotName,
    Staging,
    TrialPolicy,
)
from reconciler.spec import UpdatePolicy

# Monday 2026-11-30 12:00 UTC.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OPEN = {"days": ["mon"], "start": "11:00", "duration": "2h", "timezone": "UTC"}
CLOSED = {"days": ["tue"], "start": "02:00", "duration": "1h", "timezone": "UTC"}
CHANNEL = ChannelView(versions=frozenset({"1.0.0", "1.0.1", "1.0.2"}), latest="1.0.2")


def policy(version: str = "1.0.1", **spec: Any) -> UpdatePolicy:
    body: dict[str, Any] = {"version": version, "channel": {"url": "http://127.0.0.1:8080/"}}
    body.update(spec)
    return UpdatePolicy.model_validate({"apiVersion": "kruxos.io/v1", "kind": "UpdatePolicy",
                                        "metadata": {"name": "t"}, "spec": body})


def observed(booted: SlotName = "A", booted_version: str = "1.0.0",
             other_version: str | None = None, other_mark: Mark = "empty",
             **fields: Any) -> ObservedState:
    other: SlotName = "B" if booted == "A" else "A"
    devices = {"A": "sda2", "B": "sda3"}
    slots = {booted: Slot(booted, devices[booted], booted_version, "good"),
             other: Slot(other, devices[other], other_version, other_mark)}
    fields.setdefault("default", booted)
    fields.setdefault("channel", CHANNEL)
    return ObservedState(booted=booted, slots=slots, **fields)


def on_trial(health: HealthProgress | None, tries: int = 2) -> ObservedState:
    """Booted B with 1.0.1 on trial; A keeps 1.0.0 good and is the default."""
    return observed("B", "1.0.1", "1.0.0", "good", default="A", trial="B",
                    tries_left=tries, health=health)


def started(ok: int = 0, ago: timedelta = timedelta(seconds=10),
            last_ago: timedelta = timedelta(seconds=5)) -> HealthProgress:
    return HealthProgress(first_probe_at=NOW - ago, last_probe_at=NOW - last_ago,
                          consecutive_ok=ok, probes=3, last_summary="503: gateway starting",
                          timeout_reason="Health check timeout — gateway failed to start")


# ---- boot status: pending (a slot on trial) x health -------------------------------------

def test_pending_health_not_started_probes_first() -> None:
    assert isinstance(decide(policy(), on_trial(None), NOW), ProbeHealth)


def test_pending_healthy_confirms_the_trial_slot() -> None:
    action = decide(policy(), on_trial(started(ok=1)), NOW)
    assert action == Confirm("B", "1.0.1", action.reason)


def test_pending_needs_success_threshold_consecutive_answers() -> None:
    spec = policy(health={"successThreshold": 3})
    assert not isinstance(decide(spec, on_trial(started(ok=2)), NOW), Confirm)
    assert isinstance(decide(spec, on_trial(started(ok=3)), NOW), Confirm)


def test_pending_unhealthy_before_timeout_waits_for_next_probe_interval() -> None:
    action = decide(policy(), on_trial(started(last_ago=timedelta(seconds=2))), NOW)
    assert isinstance(action, Wait)
    assert action.until == NOW + timedelta(seconds=3)


def test_pending_unhealthy_probes_again_once_interval_elapsed() -> None:
    assert isinstance(decide(policy(), on_trial(started(last_ago=timedelta(seconds=5))), NOW),
                      ProbeHealth)


def test_pending_timed_out_rolls_back_with_reason_from_last_answer() -> None:
    action = decide(policy(), on_trial(started(ago=timedelta(minutes=2))), NOW)
    assert action == Rollback("B", "A", "1.0.1", "Health check timeout — gateway failed to start")


def test_timeout_is_counted_from_the_first_probe_not_from_boot() -> None:
    spec = policy(health={"timeout": "30s"})
    assert not isinstance(decide(spec, on_trial(started(ago=timedelta(seconds=29))), NOW),
                          Rollback)
    assert isinstance(decide(spec, on_trial(started(ago=timedelta(seconds=30))), NOW), Rollback)


def test_pending_with_tries_exhausted_is_still_judged_by_health() -> None:
    assert isinstance(decide(policy(), on_trial(started(ok=1), tries=0), NOW), Confirm)
    timed_out = on_trial(started(ago=timedelta(minutes=3)), tries=0)
    assert isinstance(decide(policy(), timed_out, NOW), Rollback)


@pytest.mark.parametrize("health", [None, started(), started(ago=timedelta(minutes=5))])
def test_health_check_of_a_trial_is_never_suspended(health: HealthProgress | None) -> None:
    action = decide(policy(suspend=True), on_trial(health), NOW)
    assert isinstance(action, ProbeHealth | Rollback | Wait)
    assert not (isinstance(action, Wait) and "suspend" in action.reason)


def test_pending_ignores_closed_window_for_rollback() -> None:
    spec = policy(rollout={"windows": [CLOSED]})
    assert isinstance(decide(spec, on_trial(started(ago=timedelta(minutes=3))), NOW), Rollback)


def test_pending_with_automatic_rollback_off_waits_for_a_person() -> None:
    spec = policy(rollback={"automatic": False})
    for health in (started(ok=5), started(ago=timedelta(minutes=9))):
        action = decide(spec, on_trial(health), NOW)
        assert isinstance(action, Wait) and "by hand" in action.reason


# ---- boot status: confirmed x other slot x desired -----------------------------------------

def test_confirmed_desired_equals_booted_is_nothing_to_do() -> None:
    assert isinstance(decide(policy("1.0.0"), observed(), NOW), Nothing)


def test_confirmed_other_empty_desired_new_stages_into_other_slot() -> None:
    action = decide(policy("1.0.1"), observed(), NOW)
    assert action == Stage("1.0.1", "B", action.reason)
    assert "sda3" in action.reason


def test_stage_never_targets_the_booted_slot() -> None:
    action = decide(policy("1.0.1"), observed("B", "1.0.0", None, "empty"), NOW)
    assert isinstance(action, Stage) and action.slot == "A"


def test_other_slot_with_another_version_is_overwritten_by_staging() -> None:
    action = decide(policy("1.0.2"), observed(other_version="1.0.1", other_mark="staged"), NOW)
    assert isinstance(action, Stage) and action.version == "1.0.2"


def test_staged_desired_in_other_slot_reboots_into_a_trial_when_no_windows() -> None:
    action = decide(policy("1.0.1"), observed(other_version="1.0.1", other_mark="staged"), NOW)
    assert action == ArmTrial("B", "1.0.1", action.reason)


def test_staged_desired_with_window_open_reboots() -> None:
    spec = policy("1.0.1", rollout={"windows": [OPEN]})
    staged = observed(other_version="1.0.1", other_mark="staged")
    action = decide(spec, staged, NOW)
    assert isinstance(action, ArmTrial)
    assert action.reason.endswith("; in the maintenance window (Mon 11:00+2h UTC, open until "
                                  "2026-11-30 13:00 UTC)"), action.reason


def test_staged_desired_with_window_closed_waits_until_it_opens() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED]})
    action = decide(spec, observed(other_version="1.0.1", other_mark="staged"), NOW)
    assert isinstance(action, Wait)
    assert action.until == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert action.reason.endswith("reboot waits for the maintenance window opening "
                                  "2026-12-01 02:00 UTC (Tue 02:00+1h UTC)"), action.reason


def test_window_closed_does_not_hold_back_staging_by_default() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED]})
    assert isinstance(decide(spec, observed(), NOW), Stage)


def test_stage_in_window_waits_for_the_window_to_stage() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED], "stage": "in-window"})
    action = decide(spec, observed(), NOW)
    assert isinstance(action, Wait) and action.until == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    spec_open = policy("1.0.1", rollout={"windows": [OPEN], "stage": "in-window"})
    assert isinstance(decide(spec_open, observed(), NOW), Stage)


def test_auto_reboot_off_stages_then_waits_for_a_person() -> None:
    spec = policy("1.0.1", rollout={"autoReboot": False})
    assert isinstance(decide(spec, observed(), NOW), Stage)
    action = decide(spec, observed(other_version="1.0.1", other_mark="staged"), NOW)
    assert isinstance(action, Wait) and "autoReboot" in action.reason


def test_a_full_data_disk_holds_every_reboot_into_a_trial_but_not_its_judgement() -> None:
    """Once the reserve is in use, a new trial's records (and so its rollback) could not be
    written: no reboot starts, not even one a person pinned, until space is freed."""
    staged = observed(other_version="1.0.1", other_mark="staged", disk_full=True)
    action = decide(policy("1.0.1"), staged, NOW)
    assert isinstance(action, Wait) and "the data disk is full" in action.reason, action
    armed = replace(staged, trial="B", tries_left=3)
    assert isinstance(decide(policy("1.0.1"), armed, NOW), Wait)
    pinned = observed(other_version="1.0.2", other_mark="staged", disk_full=True,
                      override=Override("1.0.2", reboot="now", spec_wanted="1.0.1"))
    action = decide(policy("1.0.1"), pinned, NOW)
    assert isinstance(action, Wait) and "the data disk is full" in action.reason, action
    late = on_trial(HealthProgress(first_probe_at=NOW - timedelta(minutes=10)))
    assert isinstance(decide(policy("1.0.1"), replace(late, disk_full=True), NOW), Rollback)


def test_previous_good_slot_holding_desired_is_switched_to_not_restaged() -> None:
    spec = policy("1.0.0", allowDowngrade=True)
    prev_good = observed("B", "1.0.1", "1.0.0", "good")
    action = decide(spec, prev_good, NOW)
    assert action == ArmTrial("A", "1.0.0", action.reason)


def test_lower_desired_without_allow_downgrade_is_blocked() -> None:
    action = decide(policy("1.0.0"), observed("B", "1.0.1", "1.0.0", "good"), NOW)
    assert isinstance(action, Blocked) and "allowDowngrade" in action.reason


def test_lower_desired_with_allow_downgrade_stages_when_not_in_other_slot() -> None:
    spec = policy("1.0.0", allowDowngrade=True)
    assert isinstance(decide(spec, observed("B", "1.0.1"), NOW), Stage)


def test_bad_other_slot_holding_desired_is_restaged_not_booted() -> None:
    action = decide(policy("1.0.1"), observed(other_version="1.0.1", other_mark="bad"), NOW)
    assert isinstance(action, Stage)


def test_interrupted_staging_of_desired_resumes() -> None:
    obs = observed(other_version=None, other_mark="bad",
                   staging=Staging("1.0.1", "B", done=4096, total=8192))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, Stage) and action.reason.startswith("Resume")


# ---- desired: blocked (failed on trial), no retry loop -------------------------------------

def rolled_back(failed: str = "1.0.2") -> ObservedState:
    return observed("A", "1.0.1", failed, "bad", rolled_back_from=failed,
                    rollback_reason="Health check timeout — gateway failed to start",
                    failed=FailedVersion(failed, "Health check timeout — gateway failed to start"))


def test_rolled_back_version_is_blocked_while_still_desired() -> None:
    action = decide(policy("1.0.2"), rolled_back(), NOW)
    assert isinstance(action, Blocked) and "1.0.2 was rolled back" in action.reason


def test_latest_resolving_to_failed_version_is_blocked() -> None:
    assert isinstance(decide(policy("latest"), rolled_back(), NOW), Blocked)


def lifted(spec: UpdatePolicy, obs: ObservedState) -> tuple[Action, ObservedState]:
    """The first step must lift the block (a decision of its own); then the state after it."""
    action = decide(spec, obs, NOW)
    assert isinstance(action, LiftBlock) and action.version == obs.failed.version  # type: ignore[union-attr]
    return action, replace(obs, failed=None)


def test_latest_resolving_to_a_newer_release_after_failure_stages_it() -> None:
    newer = replace(rolled_back(), channel=ChannelView(
        versions=frozenset({"1.0.1", "1.0.2", "1.0.3"}), latest="1.0.3"))
    lift, after = lifted(policy("latest"), newer)
    assert lift.reason == "1.0.2 may be tried again: the desired version is now 1.0.3"
    action = decide(policy("latest"), after, NOW)
    assert isinstance(action, Stage) and action.version == "1.0.3"


def test_rolled_back_device_with_desired_equal_booted_is_nothing_to_do() -> None:
    _, after = lifted(policy("1.0.1"), rolled_back())
    assert isinstance(decide(policy("1.0.1"), after, NOW), Nothing)


def test_edited_version_after_failure_stages_the_new_version() -> None:
    _, after = lifted(policy("1.0.3"), replace(rolled_back(), channel=ChannelView(
        versions=frozenset({"1.0.3"}), latest="1.0.3")))
    assert isinstance(decide(policy("1.0.3"), after, NOW), Stage)


# ---- finishing steps the bootloader already shows ------------------------------------------

def test_armed_trial_not_yet_booted_reboots_into_it() -> None:
    obs = observed(other_version="1.0.1", other_mark="staged", trial="B", tries_left=3)
    assert isinstance(decide(policy("1.0.1"), obs, NOW), ArmTrial)


def test_rollback_recorded_but_not_rebooted_finishes_with_a_reboot() -> None:
    obs = observed("B", "1.0.1", "1.0.0", "good", default="A")
    assert decide(policy("1.0.1"), obs, NOW) == Reboot("A", decide(policy("1.0.1"), obs,
                                                                     NOW).reason)


def test_bootloader_fallback_is_noted_as_a_failed_version_once() -> None:
    obs = observed("A", "1.0.0", "1.0.1", "bad", fallback_trace="B: trial tries exhausted")
    action = decide(policy("1.0.1"), obs, NOW)
    assert action == NoteFallback("1.0.1", "Trial boot failed — B: trial tries exhausted")
    noted = replace(obs, rolled_back_from="1.0.1", failed=FailedVersion("1.0.1", "x"))
    assert isinstance(decide(policy("1.0.1"), noted, NOW), Blocked)
    armed = replace(obs, trial_policy_version="1.0.1")  # the trial that fell back was 1.0.1's
    assert isinstance(decide(policy("1.0.1"), armed, NOW), NoteFallback)


def test_a_stale_fallback_trace_is_not_pinned_on_a_slot_a_cancel_marked_bad() -> None:
    # 1.0.1 fell back earlier (its trace stays in the env until the next arming); 1.0.2 was
    # then staged and cancelled, never armed: it did not fail on trial.
    obs = observed("A", "1.0.0", "1.0.2", "bad", fallback_trace="B: trial tries exhausted",
                   trial_policy_version="1.0.1", rolled_back_from="1.0.1")
    assert not isinstance(decide(policy("1.0.0"), obs, NOW), NoteFallback)


def test_a_pin_at_the_running_version_does_not_lift_the_block_a_resume_would_undo() -> None:
    from reconciler.observed import Override

    blocked = observed("A", "1.0.0", "1.0.1", "good", rolled_back_from="1.0.1",
                       failed=FailedVersion("1.0.1", "manual (kruxos update rollback)"))
    pinned = replace(blocked, override=Override(version="1.0.0", actor="cli",
                                                spec_wanted="1.0.1"))
    assert not isinstance(decide(policy("1.0.1"), pinned, NOW), LiftBlock)
    assert isinstance(decide(policy("1.0.1"), blocked, NOW), Blocked)  # after the resume
    assert isinstance(decide(policy("1.0.2"), blocked, NOW), LiftBlock)  # the spec moved on


# ---- suspend, channel, override --------------------------------------------------------------

def test_suspend_starts_no_staging() -> None:
    action = decide(policy("1.0.1", suspend=True), observed(), NOW)
    assert isinstance(action, Wait) and "suspend" in action.reason


def test_suspend_starts_no_reboot_into_a_staged_slot() -> None:
    obs = observed(other_version="1.0.1", other_mark="staged")
    assert isinstance(decide(policy("1.0.1", suspend=True), obs, NOW), Wait)


def test_latest_with_unreachable_channel_waits_and_retries() -> None:
    obs = observed(channel=ChannelView(error="connection refused"))
    action = decide(policy("latest"), obs, NOW)
    assert isinstance(action, Wait) and action.until == NOW + timedelta(seconds=30)
    assert "connection refused" in action.reason


def test_exact_version_missing_from_channel_is_blocked() -> None:
    action = decide(policy("9.9.9"), observed(), NOW)
    assert isinstance(action, Blocked) and "not published" in action.reason


def test_override_pin_wins_over_the_spec() -> None:
    action = decide(policy("1.0.1"), observed(override=Override("1.0.2", spec_wanted="1.0.1")),
                    NOW)
    assert isinstance(action, Stage) and action.version == "1.0.2"


# ---- properties over the whole table ---------------------------------------------------------

MARKS: list[Mark] = ["good", "staged", "bad", "empty"]
VERSIONS = [None, "1.0.0", "1.0.1", "1.0.2"]


@settings(max_examples=400, deadline=None)
@given(booted=st.sampled_from(["A", "B"]), other_version=st.sampled_from(VERSIONS),
       other_mark=st.sampled_from(MARKS), desired=st.sampled_from(["1.0.0", "1.0.1", "1.0.2",
                                                                    "latest"]),
       suspend=st.booleans(), window=st.sampled_from([None, OPEN, CLOSED]),
       downgrade=st.booleans(), failed=st.sampled_from([None, "1.0.1", "1.0.2"]))
def test_table_invariants(booted: SlotName, other_version: str | None, other_mark: Mark,
                          desired: str, suspend: bool, window: dict[str, Any] | None,
                          downgrade: bool, failed: str | None) -> None:
    spec = policy(desired, suspend=suspend, allowDowngrade=downgrade,
                  rollout={"windows": [window] if window else []})
    obs = observed(booted, "1.0.1", other_version, other_mark,
                   failed=FailedVersion(failed, "x") if failed else None)
    action = decide(spec, obs, NOW)
    assert action == decide(spec, obs, NOW)  # deterministic
    assert action.reason
    if isinstance(action, Stage):
        assert action.slot != booted and not suspend
        assert action.version != failed
    if isinstance(action, ArmTrial):
        assert window != CLOSED and not suspend and action.version != failed
        assert obs.other_slot.mark in ("staged", "good")
    if isinstance(action, Stage | ArmTrial) and not downgrade:
        assert action.version >= "1.0.1"


def test_interrupted_staging_after_a_rollback_is_resumed_not_noted_as_failed() -> None:
    """The bootloader's trace of an old rollback must not turn a new staging into a failure."""
    obs = observed("B", "1.0.1", "1.0.3", "bad", fallback_trace="Health check timeout — x",
                   rolled_back_from="1.0.2", staging=Staging("1.0.3", "A", 1 << 20, 3 << 20),
                   channel=ChannelView(versions=frozenset({"1.0.3"}), latest="1.0.3"))
    action = decide(policy("1.0.3"), obs, NOW)
    assert isinstance(action, Stage) and action.reason.startswith("Resume")


def test_status_names_a_rollback_waiting_for_its_reboot() -> None:
    obs = replace(observed("A", "1.0.2", "1.0.1", "good", default="B"),
                  slots={"A": Slot("A", "sda2", "1.0.2", "bad"),
                         "B": Slot("B", "sda3", "1.0.1", "good")},
                  rolled_back_from="1.0.2")
    assert obs.boot_status == "ROLLING BACK (rebooting into B (sda3))"


# ---- a person at the device: requests and pins (kruxos update ...) ---------------------------

def test_person_confirms_a_trial_by_hand_even_with_automatic_rollback_off() -> None:
    obs = replace(on_trial(started()), request="confirm")
    action = decide(policy(rollback={"automatic": False}), obs, NOW)
    assert isinstance(action, Confirm) and "by a person" in action.reason


def test_person_ends_a_trial_now_with_a_manual_rollback() -> None:
    action = decide(policy(), replace(on_trial(started()), request="rollback"), NOW)
    assert action == Rollback("B", "A", "1.0.1", "manual (kruxos update rollback)")


def test_person_rolls_back_a_confirmed_update_to_the_previous_good_slot() -> None:
    obs = replace(observed("B", "1.0.1", "1.0.0", "good"), request="rollback")
    assert decide(policy("1.0.1"), obs, NOW) == Rollback("B", "A", "1.0.1",
                                                        "manual (kruxos update rollback)")


def staged_with_pin(reboot: Any, **fields: Any) -> ObservedState:
    return observed(other_version="1.0.2", other_mark="staged",
                    override=Override("1.0.2", reboot=reboot, spec_wanted="1.0.1"), **fields)


def test_pin_waiting_for_the_persons_answer_does_not_reboot() -> None:
    action = decide(policy("1.0.1"), staged_with_pin("ask"), NOW)
    assert isinstance(action, Wait) and "Reboot now?" in action.reason


def test_person_saying_yes_reboots_outside_the_window_and_while_suspended() -> None:
    spec = policy("1.0.1", suspend=True, rollout={"windows": [CLOSED], "autoReboot": False})
    action = decide(spec, staged_with_pin("now"), NOW)
    assert isinstance(action, ArmTrial) and action.reboot and action.version == "1.0.2"


def test_no_reboot_pin_arms_the_trial_for_the_next_reboot_without_rebooting() -> None:
    action = decide(policy("1.0.1"), staged_with_pin("next-boot"), NOW)
    assert isinstance(action, ArmTrial) and not action.reboot and action.kind == "arm"
    # "not now" at the prompt, Ctrl-C and --json pin the same way: no flag is named
    assert "--no-reboot" not in action.reason and "next reboot" in action.reason, action.reason
    armed = decide(policy("1.0.1"), staged_with_pin("next-boot", trial="B", tries_left=3), NOW)
    assert isinstance(armed, Wait) and "next reboot" in armed.reason


def test_pin_following_the_rules_waits_for_the_window_like_the_spec() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED]})
    assert isinstance(decide(spec, staged_with_pin("rules"), NOW), Wait)


def test_download_stopped_by_a_person_waits_for_a_new_apply() -> None:
    obs = observed(override=Override("1.0.2", paused=True, spec_wanted="1.0.1"),
                   staging=Staging("1.0.2", "B", 1, 3))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, Wait) and "update apply" in action.reason


def test_armed_trial_of_a_version_no_longer_wanted_is_disarmed_not_booted() -> None:
    """A pin armed for the next reboot, then dropped: the spec's version rules again."""
    obs = observed(other_version="1.0.2", other_mark="staged", trial="B", tries_left=3)
    action = decide(policy("1.0.0"), obs, NOW)
    assert isinstance(action, Disarm) and action.slot == "B"


# ---- totality: every observed state has an answer; damaged identities are named -----------

def test_booted_slot_whose_header_is_not_semver_stages_and_names_the_problem() -> None:
    booted = replace(observed(), slots={
        "A": Slot("A", "sda2", "2024.1", "good", "its header names version '2024.1', not a "
                  "semantic version"),
        "B": Slot("B", "sda3", None, "empty")})
    action = decide(policy("1.0.1"), booted, NOW)
    assert isinstance(action, Stage)
    assert "2024.1" in action.reason and "not a semantic version" in action.reason


def test_booted_non_semver_version_is_no_downgrade_to_refuse() -> None:
    booted = observed(booted_version="2024.1")
    assert isinstance(decide(policy("1.0.0"), booted, NOW), Stage)


SLOT_VERSIONS = st.one_of(st.none(), st.sampled_from(["1.0.0", "1.0.1", "2024.1", "", "v1",
                                                     "1.0.0-rc.1"]), st.text(max_size=12))
TIMES = st.one_of(st.none(), st.datetimes(min_value=datetime(2020, 1, 1),
                                          max_value=datetime(2030, 1, 1),
                                          timezones=st.just(UTC)))


@st.composite
def any_observed(draw: st.DrawFn) -> ObservedState:
    """Any state observe can hand over, including damaged identities and odd records."""
    marks = st.sampled_from(MARKS)
    names: tuple[tuple[SlotName, str], ...] = (("A", "sda2"), ("B", "sda3"))
    slots: dict[SlotName, Slot] = {
        name: Slot(name, dev, draw(SLOT_VERSIONS), draw(marks),
                   draw(st.one_of(st.none(), st.just("foreign header"))))
        for name, dev in names}
    first = draw(TIMES)
    health = draw(st.one_of(st.none(), st.builds(
        HealthProgress, first_probe_at=st.just(first), last_probe_at=TIMES,
        consecutive_ok=st.integers(0, 5), probes=st.integers(0, 9))))
    versions = st.one_of(st.none(), st.sampled_from(["1.0.0", "1.0.2", "2024.1"]))
    return ObservedState(
        booted=draw(st.sampled_from(["A", "B"])), slots=slots,
        default=draw(st.sampled_from(["A", "B"])),
        trial=draw(st.sampled_from([None, "A", "B"])), tries_left=draw(st.integers(0, 3)),
        fallback_trace=draw(st.one_of(st.none(), st.just("B: trial tries exhausted"))),
        health=health, rolled_back_from=draw(versions),
        staging=draw(st.one_of(st.none(), st.builds(Staging, version=st.sampled_from(
            ["1.0.1", "2024.1"]), slot=st.sampled_from(["A", "B"])))),
        failed=draw(st.one_of(st.none(), st.builds(FailedVersion, version=st.sampled_from(
            ["1.0.1", "1.0.2", "2024.1"]), reason=st.just("failed")))),
        channel=draw(st.sampled_from([CHANNEL, ChannelView(error="channel: InvalidURL")])),
        override=draw(st.one_of(st.none(), st.builds(Override, version=st.sampled_from(
            ["1.0.1", "2024.1", "0.9.0"]), reboot=st.sampled_from(
            ["rules", "ask", "now", "next-boot"]), paused=st.booleans()))),
        request=draw(st.sampled_from([None, "confirm", "rollback"])),
        trial_policy=draw(st.one_of(st.none(), st.builds(TrialPolicy,
                                                         automatic=st.booleans()))),
    )


POLICIES = [None, policy("1.0.1"), policy("latest"), policy("1.0.0", suspend=True),
            policy("1.0.2", allowDowngrade=True, rollout={"windows": [CLOSED]}),
            policy("1.0.1", rollback={"automatic": False})]


@settings(max_examples=500, deadline=None, database=None)
@given(obs=any_observed(), spec=st.sampled_from(POLICIES))
def test_decide_is_total_over_every_observed_state(obs: ObservedState,
                                                   spec: UpdatePolicy | None) -> None:
    action = decide(spec, obs, NOW)
    assert action.reason and isinstance(action.reason, str)
    if isinstance(action, Stage):
        assert action.slot != obs.booted, "a stage never targets the booted slot"


# ---- the trial's own policy, captured at arming, judges it -----------------------------------

def test_arming_a_trial_captures_the_specs_health_policy() -> None:
    spec = policy("1.0.1", health={"timeout": "30s", "interval": "2s",
                                   "successThreshold": 2}, rollback={"automatic": False})
    action = decide(spec, observed(other_version="1.0.1", other_mark="staged"), NOW)
    assert isinstance(action, ArmTrial)
    assert action.policy == TrialPolicy(
        "http://127.0.0.1:7800/health/ready", timedelta(seconds=2), timedelta(seconds=30), 2,
        False)


def captured(timeout: int = 8, interval: int = 1, automatic: bool = True) -> TrialPolicy:
    return TrialPolicy("http://127.0.0.1:7800/health/ready", timedelta(seconds=interval),
                       timedelta(seconds=timeout), 1, automatic)


def test_a_later_spec_cannot_stretch_the_timeout_of_a_trial() -> None:
    later = policy("1.0.1", health={"timeout": "1h"})
    trial = replace(on_trial(started(ago=timedelta(seconds=8), last_ago=timedelta(seconds=1))),
                    trial_policy=captured(timeout=8))
    action = decide(later, trial, NOW)
    assert isinstance(action, Rollback), action


def test_a_later_spec_turning_automatic_rollback_off_does_not_hold_the_rollback() -> None:
    later = policy("1.0.1", rollback={"automatic": False})
    trial = replace(on_trial(started(ago=timedelta(seconds=9))), trial_policy=captured())
    assert isinstance(decide(later, trial, NOW), Rollback)


def test_automatic_rollback_off_at_arming_waits_for_a_person_whatever_the_spec_says() -> None:
    trial = replace(on_trial(started(ago=timedelta(hours=1))),
                    trial_policy=captured(automatic=False))
    action = decide(policy("1.0.1"), trial, NOW)
    assert isinstance(action, Wait) and "by hand" in action.reason


def test_without_any_valid_spec_a_trial_is_still_judged_and_rolled_back_on_time() -> None:
    deadline = on_trial(started(ago=timedelta(seconds=8), last_ago=timedelta(seconds=1)))
    action = decide(None, replace(deadline, trial_policy=captured(timeout=8)), NOW)
    assert action == Rollback("B", "A", "1.0.1",
                              "Health check timeout — gateway failed to start")
    just_before = on_trial(started(ago=timedelta(seconds=8), last_ago=timedelta(seconds=0)))
    wait = decide(None, replace(just_before, trial_policy=captured(timeout=9, interval=5)), NOW)
    assert isinstance(wait, Wait) and wait.until == NOW + timedelta(seconds=1)


def test_probe_uses_the_captured_health_url() -> None:
    tp = replace(captured(), url="http://127.0.0.1:9999/ready")
    action = decide(policy("1.0.1"), replace(on_trial(None), trial_policy=tp), NOW)
    assert isinstance(action, ProbeHealth) and action.url == "http://127.0.0.1:9999/ready"


@pytest.mark.parametrize("spec", POLICIES, ids=lambda p: "none" if p is None else p.spec.version)
@pytest.mark.parametrize("seconds", [0, 1, 5, 7, 8, 9, 30])
def test_exact_rollback_deadline_is_first_probe_plus_timeout(spec: UpdatePolicy | None,
                                                             seconds: int) -> None:
    """Rolled back at exactly first probe + timeout, never later, whatever the spec."""
    health = started(ago=timedelta(seconds=seconds), last_ago=timedelta(seconds=0))
    action = decide(spec, replace(on_trial(health), trial_policy=captured(timeout=8)), NOW)
    if seconds >= 8:
        assert isinstance(action, Rollback), action
    else:
        assert isinstance(action, Wait) and action.until is not None
        assert action.until <= NOW - timedelta(seconds=seconds) + timedelta(seconds=8)


# ---- a damaged boot env is a named state, repaired from what is known good -------------------

def test_damaged_boot_env_is_rewritten_with_the_booted_slot_as_the_default() -> None:
    damaged = observed("A", "1.0.0", "1.0.1", "bad", default="B",
                       boot_env_problem="grub backend: boot/grubenv: not a GRUB env block")
    action = decide(policy("1.0.1"), damaged, NOW)
    assert action == RepairBootEnv("A", (("A", "good"), ("B", "staged")), action.reason)
    assert "not a GRUB env block" in action.reason


def test_damaged_boot_env_never_stages_over_a_slot_being_written() -> None:
    damaged = observed("A", "1.0.0", "1.0.1", "bad", boot_env_problem="bad CRC",
                       staging=Staging("1.0.1", "B", 10, 100))
    action = decide(policy("1.0.1"), damaged, NOW)
    assert isinstance(action, RepairBootEnv) and dict(action.marks)["B"] == "bad"


def test_damaged_boot_env_during_a_trial_keeps_the_trial_going() -> None:
    damaged = replace(observed("B", "1.0.1", "1.0.0", "bad", boot_env_problem="bad CRC"),
                      trial_policy=captured(), trial_policy_version="1.0.1")
    action = decide(policy("1.0.1"), damaged, NOW)
    assert isinstance(action, RepairBootEnv)
    assert (action.default, action.trial, dict(action.marks)) == \
        ("A", "B", {"A": "good", "B": "staged"})


def test_damaged_boot_env_with_an_empty_other_slot_marks_it_empty() -> None:
    damaged = observed(boot_env_problem="bad CRC")
    action = decide(None, damaged, NOW)
    assert isinstance(action, RepairBootEnv) and dict(action.marks) == {"A": "good",
                                                                       "B": "empty"}


# ---- the loop breaker ------------------------------------------------------------------------

def test_third_forward_reboot_in_a_row_is_the_last_one() -> None:
    staged = observed(other_version="1.0.1", other_mark="staged")
    assert isinstance(decide(policy("1.0.1"), replace(staged, forward_reboots=2), NOW), ArmTrial)
    action = decide(policy("1.0.1"), replace(staged, forward_reboots=3), NOW)
    assert isinstance(action, Blocked) and action.reason.startswith("loop breaker: 3 reboots")


def test_loop_breaker_never_holds_a_rollback() -> None:
    trial = replace(on_trial(started(ago=timedelta(minutes=3))), forward_reboots=7)
    assert isinstance(decide(policy("1.0.1"), trial, NOW), Rollback)


# ---- a person's requests, a pin's end, a block lifted: decisions like any other --------------

def request(kind: str, **fields: Any) -> Request:
    return Request(f"0001-{kind}.json", kind, by="root on tty1", **fields)  # type: ignore[arg-type]


def test_oldest_request_is_taken_first_one_per_pass() -> None:
    obs = observed(requests=(request("pin", version="1.0.2", answer="ask"), request("resume")))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, TakeRequest) and action.request.kind == "pin"
    assert action.kind == "pin" and action.spec_wanted == "1.0.1"
    assert action.reason == ("1.0.2 pinned by a person (kruxos update apply); the spec wanted "
                             "1.0.1 (by root on tty1)")


def test_pin_of_a_failed_version_retries_it_as_asked() -> None:
    obs = replace(rolled_back(), requests=(request("pin", version="1.0.2"),))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, TakeRequest) and action.retry
    assert "is tried again, as asked" in action.reason


def test_confirm_and_rollback_requests_are_bound_to_the_booted_slot_and_version() -> None:
    trial = replace(on_trial(started()), requests=(request("rollback"),))
    action = decide(policy("1.0.1"), trial, NOW)
    assert isinstance(action, TakeRequest) and action.kind == "rollback-request"
    assert (action.slot, action.version) == ("B", "1.0.1")


def test_cancel_forgets_the_slot_being_staged_and_pins_the_running_version() -> None:
    obs = observed(other_version="1.0.1", other_mark="bad", staging=Staging("1.0.1", "B", 1, 3),
                   requests=(request("cancel"),))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, TakeRequest) and action.forget == "B"
    assert action.version == "1.0.0"


def test_pin_ends_when_the_spec_wants_something_new() -> None:
    obs = observed(override=Override("1.0.2", spec_wanted="1.0.0"))
    action = decide(policy("1.0.1"), obs, NOW)
    assert action == EndOverride("1.0.2", "the pin of 1.0.2 ended: the spec now wants 1.0.1 "
                                 "(it wanted 1.0.0 when pinned)")
    kept = decide(policy("1.0.0"), obs, NOW)
    assert not isinstance(kept, EndOverride)


def test_an_overdue_trial_is_rolled_back_before_any_request_is_taken() -> None:
    overdue = replace(on_trial(started(ago=timedelta(minutes=3))),
                      requests=(request("pin", version="1.0.2"),))
    assert isinstance(decide(policy("1.0.1"), overdue, NOW), Rollback)


def test_a_trial_whose_rollback_was_decided_is_rolled_back_at_once_after_a_crash() -> None:
    # the failure was kept (the trial's record and the request went with it), then the
    # process died before the boot env was written: no new probe, no new deadline
    for reason in ("Health check timeout — gateway failed to start",
                   "manual (kruxos update rollback)"):
        crashed = replace(on_trial(None), failed=FailedVersion("1.0.1", reason))
        action = decide(policy("1.0.1"), crashed, NOW)
        assert action == Rollback("B", "A", "1.0.1", reason)
        asked = replace(crashed, requests=(request("pin", version="1.0.2"),))
        assert isinstance(decide(policy("1.0.1"), asked, NOW), Rollback)
    # confirmed: a person's rollback killed after the failure was kept is finished
    confirmed = observed("B", "1.0.1", "1.0.0", "good", default="B",
                         failed=FailedVersion("1.0.1", "manual (kruxos update rollback)"))
    assert decide(policy("1.0.1"), confirmed, NOW) == Rollback(
        "B", "A", "1.0.1", "manual (kruxos update rollback)")
    nowhere = observed("B", "1.0.1", "1.0.0", "bad", default="B",
                       failed=FailedVersion("1.0.1", "manual (kruxos update rollback)"))
    assert not isinstance(decide(policy("1.0.1"), nowhere, NOW), Rollback)
    # the boot env written, the reboot not asked yet: the reboot comes before any request
    half_done = replace(observed("B", "1.0.1", "1.0.0", "good", default="A",
                                 failed=FailedVersion("1.0.1", "timeout")),
                        requests=(request("rollback"),))
    assert isinstance(decide(policy("1.0.1"), half_done, NOW), Reboot)
    # another version recorded as failed does not roll this trial back
    other_failed = replace(on_trial(None), failed=FailedVersion("1.0.2", "timeout"))
    assert not isinstance(decide(policy("1.0.1"), other_failed, NOW), Rollback)


def test_probe_counts_consecutive_healthy_answers_and_restarts_on_an_unhealthy_one() -> None:
    first = count_probe(None, True, "200 healthy", "timeout", NOW)
    assert (first.first_probe_at, first.consecutive_ok, first.probes) == (NOW, 1, 1)
    later = NOW + timedelta(seconds=5)
    second = count_probe(first, False, "503", "timeout", later)
    assert (second.first_probe_at, second.last_probe_at, second.consecutive_ok,
            second.probes) == (NOW, later, 0, 2)


# ---- the refusals the commands show, decided here too ----------------------------------------

def test_rollback_of_a_confirmed_slot_is_refused_without_a_good_other_slot() -> None:
    from reconciler.decide import rollback_refusal

    assert rollback_refusal(observed()) == "cannot roll back: the other slot B (sda3) is empty"
    assert rollback_refusal(observed(other_version="1.0.1", other_mark="staged")) == (
        "cannot roll back: the other slot B (sda3) holds 1.0.1 marked staged, not a good "
        "slot to boot")
    assert rollback_refusal(observed(other_version="0.9.0", other_mark="good")) is None


def test_pin_lower_than_the_running_version_is_refused_unless_downgrades_are_allowed() -> None:
    from reconciler.decide import downgrade_refusal, is_newer

    assert downgrade_refusal(policy(), "1.0.1", "1.0.0") is not None
    assert downgrade_refusal(policy(allowDowngrade=True), "1.0.1", "1.0.0") is None
    assert downgrade_refusal(policy(), "2024.1", "1.0.0") is None  # cannot be ordered
    assert is_newer("1.0.1", "1.0.0") and not is_newer("1.0.0", "1.0.1")
    assert is_newer("1.0.1", "2024.1") and not is_newer("1.0.1", "1.0.1")


# ---- a lost state file: facts the audit trail gave back are written first ---------------------

def test_facts_given_back_by_the_trail_are_restored_before_a_trial_is_judged() -> None:
    trial = {"boot_id": "b-2", "slot": "B", "first_probe_at": (NOW - timedelta(hours=1))
             .isoformat(), "probes": 1, "consecutive_ok": 0}
    lost = replace(on_trial(None), recovered=(("trial", trial),
                                              ("failed", {"version": "1.0.0"})))
    action = decide(policy(), lost, NOW)
    assert isinstance(action, RestoreState)
    assert dict(action.sections) == {"trial": trial, "failed": {"version": "1.0.0"}}
    assert "1.0.0 stays blocked" in action.reason and "first health probe" in action.reason
    # once written (nothing left to restore), the same device is judged: overdue, rolled back
    restored = replace(on_trial(started(ago=timedelta(hours=1))), recovered=())
    assert isinstance(decide(policy(), restored, NOW), Rollback)


def test_nothing_recovered_is_no_restore() -> None:
    assert not isinstance(decide(policy(), observed(), NOW), RestoreState)
