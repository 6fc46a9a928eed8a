"""The decision table of a service update: stage, switch, restart, probe, confirm, or restore
and block; and when a move is a slot update instead.

Axes: what the move needs (root image differs / only services differ / the
booted release unknown / no components known) x the service update's step
(none / staged / switched / restarted) x health (not started / healthy /
unhealthy / timed out) x restart gate (window open / closed, serviceRestarts)
x suspend x the policy captured at the switch.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.actions import (
    Blocked,
    ConfirmServices,
    KeepServices,
    Nothing,
    ProbeServices,
    RefuseRequest,
    RestartServices,
    RestoreServices,
    Rollback,
    RollbackServices,
    Stage,
    StageServices,
    SwitchServices,
    Wait,
)
from reconciler.components import Components, ServicePart
from reconciler.decide import decide, service_rollback_plan
from reconciler.observed import (
    ChannelView,
    FailedVersion,
    HealthProgress,
    ObservedState,
    ServiceLast,
    ServiceUpdate,
    TrialPolicy,
)
from tests.test_decide import CLOSED, NOW, OPEN, observed, policy

ROOT_1, ROOT_2 = "1" * 64, "2" * 64
GW = {v: ServicePart(v, str(i) * 64, 100) for i, v in enumerate(["1.0.0", "1.0.1", "1.0.2"])}
DB = ServicePart("2.0.0", "d" * 64, 50)
COMPONENTS = {
    "1.0.0": Components("1.0.0", ROOT_1, 4096, {"gateway": GW["1.0.0"]}),
    "1.0.1": Components("1.0.1", ROOT_1, 4096, {"gateway": GW["1.0.1"]}),
    "1.0.2": Components("1.0.2", ROOT_1, 4096, {"gateway": GW["1.0.1"], "db": DB}),
    "1.0.3": Components("1.0.3", ROOT_1, 4096, {"gateway": GW["1.0.1"], "db": DB}),
    "1.1.0": Components("1.1.0", ROOT_2, 4096, {"gateway": GW["1.0.2"]}),
}
CHANNEL = ChannelView(versions=frozenset(COMPONENTS), latest="1.1.0", components=COMPONENTS)
CAPTURED = TrialPolicy(timeout=timedelta(minutes=2))


def device(**fields: Any) -> ObservedState:
    """Booted A with 1.0.0 (gateway 1.0.0 on root 1), B empty."""
    fields.setdefault("channel", CHANNEL)
    return observed("A", "1.0.0", **fields)


def update(step: str, version: str = "1.0.1", services: tuple[str, ...] = ("gateway",),
           health: HealthProgress | None = None,
           captured: TrialPolicy = CAPTURED) -> ServiceUpdate:
    return ServiceUpdate(version, "1.0.0", services, step,  # type: ignore[arg-type]
                         health=health, policy=captured)


def probed(ok: int = 0, ago: timedelta = timedelta(seconds=10),
           last_ago: timedelta = timedelta(seconds=5)) -> HealthProgress:
    return HealthProgress(first_probe_at=NOW - ago, last_probe_at=NOW - last_ago,
                          consecutive_ok=ok, probes=2, last_summary="gateway: failed to start",
                          timeout_reason="Health check timeout — gateway: failed to start")


# ---- what the move needs --------------------------------------------------------------------

def test_same_root_different_service_stages_the_services_not_a_slot() -> None:
    action = decide(policy("1.0.1"), device(), NOW)
    assert action == StageServices("1.0.1", ("gateway",), action.reason)
    assert "a service update, no reboot" in action.reason


def test_a_service_added_is_staged_with_the_update() -> None:
    action = decide(policy("1.0.2"), device(), NOW)
    assert isinstance(action, StageServices) and action.services == ("db", "gateway")


def test_a_service_removed_is_part_of_the_update() -> None:
    running = device(service_release="1.0.2")
    action = decide(policy("1.0.1", allowDowngrade=True), running, NOW)
    assert isinstance(action, StageServices) and action.services == ("db",)
    assert "db removed" in action.reason


def test_different_root_is_a_slot_update_whatever_the_services() -> None:
    action = decide(policy("1.1.0"), device(), NOW)
    assert action == Stage("1.1.0", "B", action.reason)


def test_the_booted_release_unknown_to_the_channel_is_a_slot_update() -> None:
    known = {v: c for v, c in COMPONENTS.items() if v != "1.0.0"}
    action = decide(policy("1.0.1"), device(channel=replace(CHANNEL, components=known)), NOW)
    assert action == Stage("1.0.1", "B", action.reason)


def test_without_components_the_device_stages_a_slot_as_before() -> None:
    action = decide(policy("1.0.1"), device(channel=replace(CHANNEL, components={})), NOW)
    assert action == Stage("1.0.1", "B", action.reason)


def test_the_same_components_under_a_new_version_are_adopted_without_a_restart() -> None:
    running = device(service_release="1.0.2")
    action = decide(policy("1.0.3"), running, NOW)
    assert action == StageServices("1.0.3", (), action.reason)
    switched = device(service_release="1.0.2",
                      service_update=ServiceUpdate("1.0.3", "1.0.2", (), "switched",
                                                   policy=CAPTURED))
    assert isinstance(decide(policy("1.0.3"), switched, NOW), ConfirmServices)


def test_a_committed_service_update_is_what_the_device_runs() -> None:
    action = decide(policy("1.0.1"), device(service_release="1.0.1"), NOW)
    assert isinstance(action, Nothing) and "runs 1.0.1" in action.reason


def test_from_a_service_release_a_new_root_is_still_a_slot_update() -> None:
    action = decide(policy("1.1.0"), device(service_release="1.0.1"), NOW)
    assert action == Stage("1.1.0", "B", action.reason)


def test_a_lower_service_release_needs_allow_downgrade() -> None:
    action = decide(policy("1.0.0"), device(service_release="1.0.1"), NOW)
    assert isinstance(action, Blocked) and "lower than the running 1.0.1" in action.reason


def test_a_service_release_that_failed_is_blocked_until_the_desired_version_changes() -> None:
    failed = FailedVersion("1.0.1", "Health check timeout — gateway: failed to start")
    action = decide(policy("1.0.1"), device(failed=failed), NOW)
    assert isinstance(action, Blocked) and "1.0.1 was rolled back" in action.reason


def test_suspend_starts_no_service_update() -> None:
    action = decide(policy("1.0.1", suspend=True), device(), NOW)
    assert isinstance(action, Wait) and "suspended" in action.reason


# ---- staged: the switch, gated like a reboot ------------------------------------------------

def test_staged_services_are_switched_with_the_health_policy_captured_now() -> None:
    spec = policy("1.0.1", health={"timeout": "45s"}, rollback={"automatic": False})
    action = decide(spec, device(service_update=update("staged")), NOW)
    assert isinstance(action, SwitchServices)
    assert (action.version, action.services) == ("1.0.1", ("gateway",))
    assert action.policy.timeout == timedelta(seconds=45) and not action.policy.automatic


def test_a_switch_waits_for_the_maintenance_window_by_default() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED]})
    action = decide(spec, device(service_update=update("staged")), NOW)
    assert isinstance(action, Wait) and action.until is not None
    assert "restart of gateway waits for the maintenance window" in action.reason
    spec = policy("1.0.1", rollout={"windows": [OPEN]})
    assert isinstance(decide(spec, device(service_update=update("staged")), NOW),
                      SwitchServices)


def test_service_restarts_any_time_does_not_wait_for_a_window() -> None:
    spec = policy("1.0.1", rollout={"windows": [CLOSED], "serviceRestarts": "any-time"})
    assert isinstance(decide(spec, device(service_update=update("staged")), NOW),
                      SwitchServices)


def test_suspend_holds_a_staged_switch() -> None:
    spec = policy("1.0.1", suspend=True)
    action = decide(spec, device(service_update=update("staged")), NOW)
    assert isinstance(action, Wait) and "suspended" in action.reason


def test_a_staged_update_no_longer_wanted_is_replaced_by_the_new_one() -> None:
    action = decide(policy("1.0.2"), device(service_update=update("staged")), NOW)
    assert action == StageServices("1.0.2", ("db", "gateway"), action.reason)


# ---- switched: restart; restarted: probe, confirm or restore --------------------------------

@pytest.mark.parametrize("spec", [
    policy("1.0.1"), policy("1.0.1", suspend=True), policy("1.0.1", rollout={"windows": [CLOSED]}),
    policy("1.0.2"),
])
def test_switched_services_are_restarted_whatever_the_spec_says_now(spec: Any) -> None:
    action = decide(spec, device(service_update=update("switched")), NOW)
    assert action == RestartServices("1.0.1", ("gateway",), action.reason)


def test_restarted_services_are_probed_first_for_the_affected_services_only() -> None:
    action = decide(policy("1.0.1"), device(service_update=update("restarted")), NOW)
    assert isinstance(action, ProbeServices) and action.services == ("gateway",)
    assert action.url == CAPTURED.url


def test_healthy_restarted_services_are_confirmed() -> None:
    obs = device(service_update=update("restarted", health=probed(ok=1)))
    action = decide(policy("1.0.1"), obs, NOW)
    assert action == ConfirmServices("1.0.1", ("gateway",), action.reason)


def test_unhealthy_before_the_deadline_waits_for_the_next_probe_then_probes() -> None:
    soon = device(service_update=update("restarted", health=probed(last_ago=timedelta(0))))
    action = decide(policy("1.0.1"), soon, NOW)
    assert isinstance(action, Wait) and action.until == NOW + CAPTURED.interval
    due = device(service_update=update("restarted", health=probed()))
    assert isinstance(decide(policy("1.0.1"), due, NOW), ProbeServices)


def test_past_the_deadline_the_previous_artifacts_are_restored_and_the_version_blocked() -> None:
    obs = device(service_update=update("restarted", health=probed(ago=timedelta(minutes=2))))
    action = decide(policy("1.0.1"), obs, NOW)
    assert action == RestoreServices("1.0.1", "1.0.0", ("gateway",),
                                     "Health check timeout — gateway: failed to start")


@pytest.mark.parametrize("spec", [
    policy("1.0.1", suspend=True), policy("1.0.1", rollout={"windows": [CLOSED]}),
    policy("1.0.2"), None,
])
def test_nothing_holds_a_service_restore(spec: Any) -> None:
    obs = device(service_update=update("restarted", health=probed(ago=timedelta(minutes=3))))
    assert isinstance(decide(spec, obs, NOW), RestoreServices)


# ---- a service that migrates data with no copy to put back ---------------------------------

def test_a_failed_service_that_migrated_data_irreversibly_is_kept_with_the_reason() -> None:
    kept = replace(update("restarted", health=probed(ago=timedelta(minutes=2))),
                   irreversible=("gateway",))
    action = decide(policy("1.0.1"), device(service_update=kept), NOW)
    assert isinstance(action, KeepServices), action
    assert (action.version, action.from_version, action.services) == \
        ("1.0.1", "1.0.0", ("gateway",))
    assert action.reason.startswith("Health check timeout — gateway: failed to start; but "
                                     "1.0.1 says gateway migrates data irreversibly"), action
    assert "it stays, not rolled back" in action.reason


@pytest.mark.parametrize("spec", [policy("1.0.1", suspend=True), policy("1.0.2"), None])
def test_a_service_that_migrated_irreversibly_is_kept_whatever_the_spec(spec: Any) -> None:
    kept = replace(update("restarted", health=probed(ago=timedelta(minutes=3))),
                   irreversible=("gateway",))
    assert isinstance(decide(spec, device(service_update=kept), NOW), KeepServices)


def test_an_irreversible_update_is_still_judged_by_health_before_its_deadline() -> None:
    healthy = replace(update("restarted", health=probed(ok=1)), irreversible=("gateway",))
    assert isinstance(decide(policy("1.0.1"), device(service_update=healthy), NOW),
                      ConfirmServices)
    early = replace(update("restarted", health=probed()), irreversible=("gateway",))
    assert isinstance(decide(policy("1.0.1"), device(service_update=early), NOW),
                      ProbeServices | Wait)
    switched = replace(update("switched"), irreversible=("gateway",))  # not started yet
    assert isinstance(decide(policy("1.0.1"), device(service_update=switched), NOW),
                      RestartServices)


# ---- a person's rollback: the last change a service update, or a slot update ----------------

LAST = ServiceLast("1.0.1", "1.0.0", ("gateway",))


def rolled(**fields: Any) -> ObservedState:
    """1.0.1's gateway committed on the booted root over 1.0.0; B holds 0.9.0 good."""
    fields.setdefault("service_release", "1.0.1")
    fields.setdefault("service_last", LAST)
    fields.setdefault("channel", CHANNEL)
    return observed("A", "1.0.0", "0.9.0", "good", **fields)


def test_a_rollback_after_a_committed_service_update_undoes_it_without_a_reboot() -> None:
    action = decide(policy("1.0.1"), rolled(request="rollback"), NOW)
    assert action == RollbackServices("1.0.1", "1.0.0", ("gateway",), action.reason)
    assert action.reason == ("manual (kruxos update rollback): the last change was the "
                             "service update 1.0.0 → 1.0.1")
    plan = service_rollback_plan(rolled())
    assert plan is not None and (plan.version, plan.to_version, plan.action,
                                 plan.refusal) == ("1.0.1", "1.0.0", "rollback-services", None)


def test_a_rollback_when_a_slot_update_changed_last_rolls_the_slot_back_as_before() -> None:
    slot_last = rolled(request="rollback", service_release=None, service_last=None)
    assert decide(policy("1.0.1"), slot_last, NOW) == Rollback("A", "B", "1.0.0",
                                                               "manual (kruxos update rollback)")
    assert service_rollback_plan(slot_last) is None


@pytest.mark.parametrize("spec", [
    policy("1.0.1", suspend=True), policy("1.0.1", rollout={"windows": [CLOSED]}),
    policy("1.0.1", rollout={"windows": [OPEN]}), None,
])
def test_nothing_holds_a_persons_service_rollback(spec: Any) -> None:
    assert isinstance(decide(spec, rolled(request="rollback"), NOW), RollbackServices)


def test_no_request_no_rollback_the_committed_update_simply_runs() -> None:
    assert isinstance(decide(policy("1.0.1"), rolled(), NOW), Nothing)


def test_a_rollback_during_a_service_update_restores_it_by_hand() -> None:
    for step in ("switched", "restarted"):
        obs = rolled(request="rollback", service_release=None, service_last=None,
                     service_update=update(step, health=probed()))
        action = decide(policy("1.0.1"), obs, NOW)
        assert action == RestoreServices("1.0.1", "1.0.0", ("gateway",),
                                         "manual (kruxos update rollback)"), step


def test_a_rollback_past_an_irreversible_migration_is_refused_naming_the_release() -> None:
    obs = rolled(request="rollback", service_last=replace(LAST, irreversible=("gateway",)))
    action = decide(policy("1.0.1"), obs, NOW)
    assert action == RefuseRequest("rollback", "cannot roll back 1.0.1: its release says "
                                   "gateway migrates data irreversibly (no data copy), and it "
                                   "has run; publish a fixed release instead")
    plan = service_rollback_plan(obs)
    assert plan is not None and plan.refusal == action.reason
    started = rolled(request="rollback", service_last=None, service_update=replace(
        update("restarted", health=probed()), irreversible=("gateway",)))
    assert isinstance(decide(policy("1.0.1"), started, NOW), RefuseRequest)
    not_yet = rolled(request="rollback", service_last=None, service_update=replace(
        update("switched"), irreversible=("gateway",)))  # switched, never started: undone
    assert isinstance(decide(policy("1.0.1"), not_yet, NOW), RestoreServices)


def test_the_policy_captured_at_the_switch_judges_not_the_spec_of_now() -> None:
    manual = update("restarted", health=probed(ago=timedelta(minutes=3)),
                    captured=TrialPolicy(automatic=False))
    action = decide(policy("1.0.1", rollback={"automatic": True}), device(service_update=manual),
                    NOW)
    assert isinstance(action, Wait) and "a person decides" in action.reason
    short = update("restarted", health=probed(ago=timedelta(seconds=40)),
                   captured=TrialPolicy(timeout=timedelta(seconds=30)))
    assert isinstance(decide(policy("1.0.1", health={"timeout": "10m"}),
                             device(service_update=short), NOW), RestoreServices)


def test_a_service_update_on_its_way_is_judged_even_without_a_valid_spec() -> None:
    obs = device(service_update=update("restarted", health=probed(ok=1)))
    assert isinstance(decide(None, obs, NOW), ConfirmServices)
    assert isinstance(decide(None, device(service_update=update("switched")), NOW),
                      RestartServices)


# ---- over every step and spec ---------------------------------------------------------------

STEPS = st.sampled_from(["staged", "switched", "restarted"])
HEALTH = st.sampled_from([None, probed(), probed(ok=1), probed(ago=timedelta(minutes=5))])
SPECS = st.sampled_from([None, policy("1.0.1"), policy("1.0.2"), policy("1.1.0"),
                         policy("1.0.1", suspend=True),
                         policy("1.0.1", rollout={"windows": [CLOSED]}),
                         policy("latest", rollout={"serviceRestarts": "any-time"})])


@settings(max_examples=300, deadline=None, database=None)
@given(step=STEPS, health=HEALTH, spec=SPECS, automatic=st.booleans())
def test_a_switched_service_update_is_never_left_for_a_slot_update(
    step: str, health: HealthProgress | None, spec: Any, automatic: bool,
) -> None:
    obs = device(service_update=update(step, health=health,
                                       captured=TrialPolicy(automatic=automatic)))
    action = decide(spec, obs, NOW)
    assert action.reason
    if step != "staged":  # switched: the service update finishes before anything else
        assert isinstance(action, RestartServices | ProbeServices | ConfirmServices
                          | RestoreServices | KeepServices | Wait), action
    timed_out = health is not None and health.first_probe_at is not None \
        and health.consecutive_ok == 0 and NOW - health.first_probe_at >= timedelta(minutes=2)
    if step == "restarted" and timed_out and automatic:
        assert isinstance(action, RestoreServices), action
