"""The decision table of a container update: pull by signed digest, swap, probe, confirm, or
roll back and block; and what a crash at any step is resolved to.

Axes: the image (not pulled / pulled) x the update's recorded step (none / swapping /
started / start-failed) x what the engine reports (new container running / exited /
gone; engine not answering) x health (none / healthy / unhealthy / timed out) x a failure
already kept x the restart gate (window open / closed, serviceRestarts) x suspend and no
spec. A slot device's decisions do not change (``tests/test_decide.py``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from reconciler.actions import (
    Blocked,
    ConfirmContainer,
    LiftBlock,
    Nothing,
    ProbeContainer,
    PullImage,
    RefuseRequest,
    RollbackContainer,
    SwapContainer,
    TakeRequest,
    Wait,
)
from reconciler.container_rules import MANUAL, container_rollback, container_state
from reconciler.decide import decide
from reconciler.observed import (
    ChannelView,
    ContainerUpdate,
    ContainerView,
    EngineContainer,
    FailedVersion,
    HealthProgress,
    ObservedState,
    Override,
    Request,
    TrialPolicy,
)
from tests.test_decide import CLOSED, NOW, OPEN, policy

D = {v: f"sha256:{c * 64}" for v, c in (("1.0.0", "a"), ("1.0.1", "b"), ("1.0.2", "c"))}
REPO = "127.0.0.1:5000/kruxos"
CHANNEL = ChannelView(versions=frozenset(D), latest="1.0.2",
                      images={v: f"{REPO}@{d}" for v, d in D.items()})
OLD = EngineContainer("kruxos", "sha256:old", "running")
NEW = EngineContainer("kruxos", "sha256:new", "running")
CAPTURED = TrialPolicy(interval=timedelta(seconds=5), timeout=timedelta(minutes=2))


def device(version: str | None = "1.0.0", current: EngineContainer | None = OLD,
           **view: Any) -> ObservedState:
    fields = {k: view.pop(k) for k in ("failed", "channel", "override", "request", "requests")
              if k in view}
    fields.setdefault("channel", CHANNEL)
    return container_state(ContainerView("kruxos", current=current, version=version, **view),
                           **fields)


def updating(step: str = "started", health: HealthProgress | None = None,
             current: EngineContainer | None = NEW, **more: Any) -> ObservedState:
    update = ContainerUpdate("1.0.1", "1.0.0", D["1.0.1"], step,  # type: ignore[arg-type]
                             "sha256:old", health, CAPTURED, more.pop("problem", None))
    return device("1.0.1" if current is NEW else "1.0.0", current,
                  previous=EngineContainer("kruxos-previous", "sha256:old", "exited"),
                  update=update, **more)


def test_running_the_desired_version_is_nothing_to_do_and_says_the_container() -> None:
    action = decide(policy("1.0.0"), device(), NOW)
    assert isinstance(action, Nothing)
    assert action.reason == "container kruxos runs 1.0.0, as the spec wants"


def test_an_image_not_pulled_is_pulled_by_its_signed_digest_never_a_tag() -> None:
    action = decide(policy("1.0.1"), device(), NOW)
    assert isinstance(action, PullImage)
    assert (action.version, action.digest) == ("1.0.1", D["1.0.1"])


def test_a_pulled_image_is_swapped_in_with_the_spec_health_policy_captured() -> None:
    spec = policy("1.0.1", health={"timeout": "45s", "interval": "2s"})
    action = decide(spec, device(pulled=frozenset({D["1.0.1"]})), NOW)
    assert isinstance(action, SwapContainer)
    assert (action.version, action.digest, action.from_version) == ("1.0.1", D["1.0.1"],
                                                                    "1.0.0")
    assert action.policy.timeout == timedelta(seconds=45)


def test_the_swap_waits_for_a_window_unless_restarts_may_happen_any_time() -> None:
    pulled = device(pulled=frozenset({D["1.0.1"]}))
    closed = decide(policy("1.0.1", rollout={"windows": [CLOSED]}), pulled, NOW)
    assert isinstance(closed, Wait) and "waits for the maintenance window" in closed.reason
    assert isinstance(decide(policy("1.0.1", rollout={"windows": [OPEN]}), pulled, NOW),
                      SwapContainer)
    any_time = policy("1.0.1", rollout={"windows": [CLOSED], "serviceRestarts": "any-time"})
    assert isinstance(decide(any_time, pulled, NOW), SwapContainer)
    # a first install has nothing to restart: no window needed
    fresh = device(None, None, pulled=frozenset({D["1.0.1"]}))
    assert isinstance(decide(policy("1.0.1", rollout={"windows": [CLOSED]}), fresh, NOW),
                      SwapContainer)


@pytest.mark.parametrize(("reboot", "swaps"), [("now", True), ("rules", False)])
def test_a_person_who_asked_for_now_is_not_held_by_a_window_for_the_pull_or_the_swap(
        reboot: str, swaps: bool) -> None:
    pin = Override("1.0.1", reboot=reboot, spec_wanted="1.0.0")  # type: ignore[arg-type]
    rollout = {"windows": [CLOSED], "stage": "in-window"}
    pulled = device(pulled=frozenset({D["1.0.1"]}), override=pin)
    swap = decide(policy("1.0.0", rollout=rollout), pulled, NOW)
    assert isinstance(swap, SwapContainer if swaps else Wait), swap
    pull = decide(policy("1.0.0", rollout=rollout), device(override=pin), NOW)
    assert isinstance(pull, PullImage if swaps else Wait), pull


def test_a_release_without_a_signed_image_is_blocked_and_the_container_kept() -> None:
    channel = ChannelView(versions=frozenset({"1.0.0", "1.0.3"}), latest="1.0.3",
                          images={"1.0.0": f"{REPO}@{D['1.0.0']}"})
    action = decide(policy("1.0.3"), device(channel=channel), NOW)
    assert isinstance(action, Blocked) and "no signed container image" in action.reason


def test_an_engine_that_does_not_answer_is_waited_for() -> None:
    action = decide(policy("1.0.1"), device(engine_error="connection refused"), NOW)
    assert isinstance(action, Wait) and "connection refused" in action.reason
    assert action.until is not None and action.until > NOW


def test_suspend_starts_no_pull_but_a_started_update_is_still_judged() -> None:
    assert isinstance(decide(policy("1.0.1", suspend=True), device(), NOW), Wait)
    assert isinstance(decide(policy("1.0.1", suspend=True), updating(), NOW), ProbeContainer)


@pytest.mark.parametrize("spec", [policy("1.0.1"), policy("1.0.0"), None])
def test_an_interrupted_swap_is_finished_whatever_the_spec_says(spec: Any) -> None:
    action = decide(spec, updating("swapping", current=None), NOW)
    assert isinstance(action, SwapContainer)
    assert action.version == "1.0.1" and action.policy == CAPTURED
    assert "interrupted" in action.reason


def test_a_failed_start_is_rolled_back_with_the_engine_reason() -> None:
    created = EngineContainer("kruxos", "sha256:new", "created")
    action = decide(policy("1.0.1"), updating("start-failed", current=created,
                                              problem="exec: /missing: not found"), NOW)
    assert isinstance(action, RollbackContainer)
    assert "did not start (exec: /missing: not found)" in action.reason


@pytest.mark.parametrize("current", [None, EngineContainer("kruxos", "sha256:new", "exited")])
def test_a_started_container_that_is_gone_or_exited_is_rolled_back_at_once(
        current: EngineContainer | None) -> None:
    action = decide(policy("1.0.1"), updating(current=current), NOW)
    assert isinstance(action, RollbackContainer) and "is not running" in action.reason


def test_started_probe_then_confirm_when_healthy() -> None:
    first = decide(policy("1.0.1"), updating(), NOW)
    assert isinstance(first, ProbeContainer) and "first health probe" in first.reason
    healthy = HealthProgress(NOW, NOW, 1, 1, "200")
    assert isinstance(decide(policy("1.0.1"), updating(health=healthy), NOW), ConfirmContainer)


def test_unhealthy_waits_then_probes_then_rolls_back_at_the_captured_deadline() -> None:
    failing = HealthProgress(NOW, NOW, 0, 1, "404")
    wait = decide(policy("1.0.1"), updating(health=failing), NOW + timedelta(seconds=1))
    assert isinstance(wait, Wait) and wait.until == NOW + CAPTURED.interval
    probe = decide(policy("1.0.1"), updating(health=failing), NOW + timedelta(seconds=6))
    assert isinstance(probe, ProbeContainer)
    # the spec now says 1 h: the policy captured at the swap still rules
    late = decide(policy("1.0.1", health={"timeout": "1h"}), updating(health=failing),
                  NOW + CAPTURED.timeout)
    assert isinstance(late, RollbackContainer) and late.from_version == "1.0.0"


def test_a_rollback_already_decided_is_finished_before_anything_else() -> None:
    failed = FailedVersion("1.0.1", "Health check timeout — 404")
    healthy = HealthProgress(NOW, NOW, 5, 5, "200")
    for spec in (policy("1.0.1"), policy("1.0.2"), None):
        action = decide(spec, updating(health=healthy, failed=failed), NOW)
        assert isinstance(action, RollbackContainer), action
        assert action.reason == "Health check timeout — 404"


def test_a_rolled_back_version_is_blocked_until_the_desired_version_changes() -> None:
    failed = FailedVersion("1.0.1", "Health check timeout — 404")
    blocked = decide(policy("1.0.1"), device(failed=failed, pulled=frozenset(D.values())), NOW)
    assert isinstance(blocked, Blocked) and "1.0.1 was rolled back" in blocked.reason
    lifted = decide(policy("1.0.2"), device(failed=failed), NOW)
    assert isinstance(lifted, LiftBlock)


def test_automatic_rollback_off_at_the_swap_leaves_it_to_a_person() -> None:
    manual = ContainerUpdate("1.0.1", "1.0.0", D["1.0.1"], "started", "sha256:old",
                             HealthProgress(NOW, NOW, 0, 1, "404"),
                             TrialPolicy(automatic=False))
    obs = device("1.0.1", NEW, update=manual)
    action = decide(policy("1.0.1"), obs, NOW + timedelta(hours=1))
    assert isinstance(action, Wait) and "a person decides" in action.reason


def test_a_started_update_waits_for_an_engine_that_does_not_answer() -> None:
    action = decide(policy("1.0.1"), updating(engine_error="connection refused"), NOW)
    assert isinstance(action, Wait) and "under way" in action.reason


# ---- a person's confirm and rollback (kruxos update confirm / rollback) ---------------------

ASKED = Request("0001-confirm.json", "confirm", by="root on tty1")
WAITING = HealthProgress(first_probe_at=NOW - timedelta(seconds=3), last_probe_at=NOW,
                         probes=1, consecutive_ok=0, last_summary="503")


def test_a_request_is_taken_while_the_trial_only_waits_for_its_next_probe() -> None:
    action = decide(policy("1.0.1"), updating(health=WAITING, requests=(ASKED,)), NOW)
    assert isinstance(action, TakeRequest)
    assert action.version == "1.0.1", "bound to the update on trial, not to a slot"
    assert "confirm the container update on trial" in action.reason


def test_a_decided_rollback_goes_on_before_any_request_is_taken() -> None:
    failed = FailedVersion("1.0.1", "Health check timeout")
    action = decide(policy("1.0.1"), updating(health=WAITING, requests=(ASKED,),
                                              failed=failed), NOW)
    assert isinstance(action, RollbackContainer)


@pytest.mark.parametrize("automatic", [True, False])
def test_a_confirm_asked_for_confirms_the_trial_at_once(automatic: bool) -> None:
    obs = updating(health=WAITING, request="confirm")
    assert obs.container is not None and obs.container.update is not None
    obs = replace(obs, container=replace(obs.container, update=replace(
        obs.container.update, policy=replace(CAPTURED, automatic=automatic))))
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, ConfirmContainer)
    assert action.reason == "1.0.1 confirmed by a person (kruxos update confirm)"


def test_a_confirm_of_a_container_that_is_not_running_is_a_rollback() -> None:
    stopped = EngineContainer("kruxos", "sha256:new", "exited")
    action = decide(policy("1.0.1"), updating(current=stopped, request="confirm"), NOW)
    assert isinstance(action, RollbackContainer)


@pytest.mark.parametrize("step", ["swapping", "started", "start-failed"])
def test_a_rollback_asked_for_on_trial_goes_back_to_the_kept_container(step: str) -> None:
    action = decide(None, updating(step, health=WAITING, request="rollback"), NOW)
    assert isinstance(action, RollbackContainer)
    assert (action.version, action.from_version, action.image) == ("1.0.1", "1.0.0", None)
    if step != "start-failed":
        assert action.reason == MANUAL


def test_a_confirmed_update_is_undone_from_the_image_kept_since_the_confirm() -> None:
    obs = device("1.0.1", NEW, kept_image="sha256:old", kept_version="1.0.0",
                 request="rollback")
    action = decide(policy("1.0.1"), obs, NOW)
    assert isinstance(action, RollbackContainer)
    assert (action.version, action.from_version, action.image) == \
        ("1.0.1", "1.0.0", "sha256:old")
    assert action.reason == f"{MANUAL}: the last change was the update 1.0.0 → 1.0.1"


def test_with_no_image_kept_a_rollback_is_refused_and_forgotten_with_why() -> None:
    action = decide(policy("1.0.1"), device("1.0.1", NEW, request="rollback"), NOW)
    assert isinstance(action, RefuseRequest)
    assert action.request == "rollback"
    assert "keeps no image it ran before" in action.reason
    plan = container_rollback(device("1.0.1", NEW))
    assert plan is not None and plan.refusal == action.reason


def test_a_confirm_with_nothing_on_trial_is_forgotten_not_kept_for_a_later_update() -> None:
    action = decide(policy("1.0.1"), device("1.0.1", NEW, request="confirm"), NOW)
    assert isinstance(action, RefuseRequest)
    assert (action.request, action.reason) == (
        "confirm", "nothing to confirm: container kruxos runs 1.0.1, no update is on trial")


def test_the_plan_of_a_rollback_names_the_versions_both_ways() -> None:
    plan = container_rollback(updating(health=WAITING))
    assert plan is not None and (plan.version, plan.to_version, plan.refusal) == \
        ("1.0.1", "1.0.0", None)
    kept = container_rollback(device("1.0.1", NEW, kept_image="sha256:old",
                                     kept_version="1.0.0"))
    assert kept is not None and (kept.version, kept.to_version, kept.refusal) == \
        ("1.0.1", "1.0.0", None)


def test_a_first_install_says_it_starts_the_container_not_a_swap_from_an_unknown_release(
        ) -> None:
    pull = decide(policy("1.0.1"), device(None, None), NOW)
    assert isinstance(pull, PullImage)
    assert pull.reason.endswith("(container kruxos: no container yet)"), pull.reason
    start = decide(policy("1.0.1"), device(None, None, pulled=frozenset({D["1.0.1"]})), NOW)
    assert isinstance(start, SwapContainer)
    assert start.reason.endswith(": start container kruxos"), start.reason
    unknown = decide(policy("1.0.1"), device(None, OLD, pulled=frozenset({D["1.0.1"]})), NOW)
    assert unknown.reason.endswith("swap container kruxos from an unknown release"), unknown
