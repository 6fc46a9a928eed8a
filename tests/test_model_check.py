"""The model check of the core (``tests/model_check.py``): every reachable state, no sample.

Under both kinds of boot state the product writes: GRUB's and U-Boot's
``KRUXOS_*`` variables, and systemd-boot's entry names and loader.conf (the
real ``bls`` backend on a real ESP directory, booted by the simulated
systemd-boot). The bounds of ``make test`` explore about 40,000 states in
about a minute; the deeper bounds (two spec edits, two kills or cuts, every
oracle; one request with GRUB's rules) run in ``make torture``. Each run prints
its states, events and depth, and asserts a floor on the states so the check
cannot silently shrink. Planted bugs prove the checker catches what it claims to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler import reconcile
from reconciler.actions import Action, Reboot, Rollback, Stage, Wait
from reconciler.executor import Executor
from tests.model_check import Bounds, Model, Result, model_device, replay, run

LOADERS = ["grub/u-boot", "bls"]

ALL_GOOD = {"1.0.0": True, "1.0.1": True, "1.0.2": True}
ONE_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": True}
TWO_BAD = {"1.0.0": True, "1.0.1": False, "1.0.2": False}


def _checked(result: Result, floor: int) -> None:
    assert not result.violations, "\n".join(result.violations[:5])
    assert result.states >= floor, f"only {result.states} states explored (floor {floor})"


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("loader", "healthy", "bounds", "floor"), [
    ("grub/u-boot", ONE_BAD, Bounds(edits=1, cuts=2, requests=0), 3_800),
    ("grub/u-boot", ONE_BAD, Bounds(edits=1, cuts=1, requests=1), 24_000),
    ("grub/u-boot", ALL_GOOD, Bounds(edits=0, cuts=1, requests=1), 2_300),
    ("bls", ONE_BAD, Bounds(edits=1, cuts=2, requests=0), 4_300),
    ("bls", ALL_GOOD, Bounds(edits=0, cuts=1, requests=1), 2_900),
], ids=["bad-release-edits-and-cuts", "bad-release-requests", "good-releases-requests",
        "bls-bad-release-edits-and-cuts", "bls-good-releases-requests"])
def test_every_reachable_state_of_the_core_keeps_the_invariants(
        tmp_path: Path, loader: str, healthy: dict[str, bool], bounds: Bounds,
        floor: int) -> None:
    _checked(run(tmp_path / "dev", healthy, bounds, loader=loader), floor)


ORACLES = pytest.mark.parametrize("healthy", [ALL_GOOD, ONE_BAD, TWO_BAD],
                                  ids=["all-good", "1.0.1-bad", "1.0.1-and-1.0.2-bad"])


@pytest.mark.torture
@ORACLES
def test_the_deeper_bound_keeps_the_invariants(tmp_path: Path, healthy: dict[str, bool]) -> None:
    _checked(run(tmp_path / "dev", healthy, Bounds(edits=2, cuts=2, requests=1)), 200_000)


@pytest.mark.torture
@ORACLES
def test_the_bls_rules_with_two_edits_and_two_cuts_keep_the_invariants(
        tmp_path: Path, healthy: dict[str, bool]) -> None:
    """A systemd-boot state costs about four GRUB ones (the real backend reads the ESP's
    files): two edits and two cuts here, a request with one of each below."""
    _checked(run(tmp_path / "dev", healthy, Bounds(edits=2, cuts=2, requests=0),
                 loader="bls"), 10_000)


@pytest.mark.torture
def test_the_bls_rules_with_a_request_keep_the_invariants(tmp_path: Path) -> None:
    _checked(run(tmp_path / "dev", ONE_BAD, Bounds(edits=1, cuts=1, requests=1),
                 loader="bls"), 26_000)


def _plant(monkeypatch: pytest.MonkeyPatch, change: Callable[[Action], Action]) -> None:
    """The reconciler's ``decide`` with a bug: each action it decides passed through
    ``change``."""
    real = reconcile.decide  # type: ignore[attr-defined]
    monkeypatch.setattr(reconcile, "decide",
                        lambda policy, observed, now: change(real(policy, observed, now)))


@pytest.mark.parametrize("loader", LOADERS)
def test_a_decide_that_never_rolls_back_leaves_a_trial_that_never_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str) -> None:
    _plant(monkeypatch, lambda action: Wait("planted: no rollback")
           if isinstance(action, Rollback) else action)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=0, cuts=0, requests=0), loader=loader)
    assert any(v.startswith("a trial that never ends") for v in result.violations), \
        result.violations


@pytest.mark.parametrize("loader", LOADERS)
def test_a_decide_that_forgets_failed_trials_is_caught_in_a_reboot_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str) -> None:
    real = reconcile.decide  # type: ignore[attr-defined]

    def forgets(policy: Any, observed: Any, now: Any) -> Action:
        blind = replace(observed, failed=None, fallback_trace=None, forward_reboots=0)
        return real(policy, blind, now)

    monkeypatch.setattr(reconcile, "decide", forgets)
    monkeypatch.setattr(Executor, "_count_forward_reboot", lambda self: None)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=0, cuts=0, requests=0), loader=loader)
    loops = [v for v in result.violations if v.startswith("a cycle of reboots")]
    assert loops and "boot" in loops[0], result.violations


@pytest.mark.parametrize("loader", LOADERS)
def test_a_decide_that_stops_staging_after_a_spec_edit_never_converges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str) -> None:
    _plant(monkeypatch, lambda action: Wait("planted: staging of 1.0.2 waits for ever")
           if isinstance(action, Stage) and action.version == "1.0.2" else action)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=1, cuts=0, requests=0), loader=loader)
    stuck = [v for v in result.violations if v.startswith("the device never converges")]
    assert stuck and "the spec wants 1.0.2" in stuck[0], result.violations


def test_the_bls_model_catches_a_trial_armed_before_its_entry_is_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial armed on an entry with no boot counter: systemd-boot boots it as a good
    entry, and a release that fails its probes becomes the default with no trial."""
    from reconciler.boot import bls

    def arm_first_target(self: Any, slot: Any, tries: int) -> None:
        view, _ = self._load()
        self._write_conf(replace(view, target=slot, fallback=None))
        self._rename(view, slot, bls.entry_name(slot))  # planted: the counter forgotten

    monkeypatch.setattr(bls.BlsBackend, "arm_trial", arm_first_target)
    result = run(tmp_path / "dev", ONE_BAD, Bounds(edits=0, cuts=0, requests=0), loader="bls")
    assert any(v.startswith("1.0.1, not healthy, is the default slot B") for v in
               result.violations), result.violations


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
