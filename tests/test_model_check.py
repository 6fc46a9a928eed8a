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
from reconciler.actions import Action, Rollback, Wait
from reconciler.executor import Executor
from tests.model_check import Bounds, Result, run

ALL_GOOD = {"1.0.0": True, "1.0.1": True, "1.0.2": True}
ONE_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": True}
TWO_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": False}


def _checked(result: Result, floor: int) -> None:
    assert not result.violations, "\n".join(result.violations[:5])
    assert result.states >= floor, f"only {result.states} states explored (floor {floor})"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("healthy", "bounds", "floor"), [
    (ONE_BAD, Bounds(edits=1, cuts=2, requests=0), 3_800),
    (ONE_BAD, Bounds(edits=1, cuts=1, requests=1), 25_000),
    (ALL_GOOD, Bounds(edits=0, cuts=1, requests=1), 2_500),
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
