"""The model check of the core (``tests/model_check.py``): every reachable state, no sample.

The bounds of ``make test`` explore about 33,000 states in well under a minute;
the deeper bound (two spec edits, two kills or cuts, one request, every
oracle) runs in ``make torture``. Each run prints its states, events and
depth, and asserts a floor on the states so the check cannot silently
shrink. Two planted bugs prove the checker catches what it claims to.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler import reconcile
from reconciler.actions import Action, Reboot, Rollback, Wait
from reconciler.executor import Executor
from tests.model_check import Bounds, Model, Result, model_device, replay, run

ALL_GOOD = {"1.0.0": True, "1.0.1": True, "1.0.2": True}
ONE_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": True}
TWO_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": False}


def _checked(result: Result, floor: int) -> None:
    assert not result.violations, "\n".join(result.violations[:5])
    assert result.states >= floor, f"only {result.states} states explored (floor {floor})"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("healthy", "bounds", "floor"), [
    (ONE_BAD, Bounds(edits=1, cuts=2, requests=0), 3_800),
    (ONE_BAD, Bounds(edits=1, cuts=1, requests=1), 24_000),
    (ALL_GOOD, Bounds(edits=0, cuts=1, requests=1), 2_300),
], ids=["bad-release-edits-and-cuts", "bad-release-requests", "good-releases-requests"])
def test_every_reachable_state_of_the_core_keeps_the_invariants(
        tmp_path: Path, healthy: dict[str, bool], bounds: Bounds, floor: int) -> None:
    _checked(run(tmp_path / "dev", healthy, bounds), floor)


@pytest.mark.torture
@pytest.mark.parametrize("healthy", [ALL_GOOD, ONE_BAD, TWO_BAD],
                         ids=["all-good", "1.0.1-bad", "1.0.1-and-1.0.2-bad"])
def test_the_deeper_bound_keeps_the_invariants(tmp_path: Path, healthy: dict[str, bool]) -> None:
    _checked(run(tmp_path / "dev", healthy, Bounds(edits=2, cuts=2, requests=1)), 20_000)


def test_a_decide_that_never_rolls_back_leaves_a_trial_that_never_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = reconcile.decide  # type: ignore[attr-defined]

    def never_rolls_back(policy: Any, observed: Any, now: Any) -> Action:
        action = real(policy, observed, now)
        return Wait("planted: no rollback") if isinstance(action, Rollback) else action

    monkeypatch.setattr(reconcile, "decide", never_rolls_back)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=0, cuts=0, requests=0))
    assert any(v.startswith("a trial that never ends") for v in result.violations), \
        result.violations


def test_a_decide_that_forgets_failed_trials_is_caught_in_a_reboot_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = reconcile.decide  # type: ignore[attr-defined]

    def forgets(policy: Any, observed: Any, now: Any) -> Action:
        blind = replace(observed, failed=None, fallback_trace=None, forward_reboots=0)
        return real(policy, blind, now)

    monkeypatch.setattr(reconcile, "decide", forgets)
    monkeypatch.setattr(Executor, "_count_forward_reboot", lambda self: None)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=0, cuts=0, requests=0))
    loops = [v for v in result.violations if v.startswith("a cycle of reboots")]
    assert loops and "boot" in loops[0], result.violations


# ---- the paths of what the model check found, replayed through the real reconciler ---------

def test_a_rollback_killed_once_the_failure_is_kept_goes_on_at_the_next_pass(
        tmp_path: Path) -> None:
    model = Model(model_device(tmp_path / "dev"), ONE_BAD, Bounds(cuts=1))
    # stage, reboot into the trial, first probe, the deadline, rollback killed at write 3
    world = replay(model, "pass → pass → boot → pass → tick → tick → kill@3")
    assert world.env["KRUXOS_TRIAL"] == "B" and world.doc["failed"]["version"] == "1.0.1"
    assert "trial" not in world.doc  # the first probe went with the failure's write
    _, _, action = model.run_pass(world)
    assert isinstance(action, Rollback), action


def test_a_persons_rollback_of_a_confirmed_release_killed_midway_is_finished(
        tmp_path: Path) -> None:
    model = Model(model_device(tmp_path / "dev"), ALL_GOOD, Bounds(cuts=1, requests=1))
    world = replay(model, "pass → pass → boot → pass → pass → ask:rollback → pass → kill@3")
    assert world.env["KRUXOS_DEFAULT"] == "B" and world.doc["failed"]["version"] == "1.0.1"
    _, _, action = model.run_pass(world)
    assert isinstance(action, Rollback) and action.to_slot == "A", action


def test_a_rollback_half_done_reboots_before_a_persons_request_is_taken(
        tmp_path: Path) -> None:
    model = Model(model_device(tmp_path / "dev"), ONE_BAD, Bounds(cuts=1, requests=1))
    # killed after the boot env write (4), before the reboot was asked (5)
    world = replay(model, "pass → pass → boot → pass → tick → tick → kill@4 → ask:rollback")
    assert world.env["KRUXOS_DEFAULT"] == "A" and world.booted == "B"
    assert not world.reboot_due and world.inbox
    after, _, action = model.run_pass(world)
    assert isinstance(action, Reboot) and after.reboot_due, action
    assert after.inbox, "the request waits for the reboot"
