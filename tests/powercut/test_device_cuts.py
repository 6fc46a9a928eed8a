"""Power cuts during updates of a simulated device whose disk is the power-cut filesystem.

In ``make torture`` each device first updates once without a cut, which
counts the changing operations an update takes (its span); the fixed set in
``make test`` takes the span measured so (``SPAN`` in ``conftest.py``, about 310 with GRUB)
and saves that update. Then, per seed: a new version is asked
for, the power is cut at a seeded operation of that span (staging, the trial
reboot, the probe or the confirmation, wherever it falls), every process of
the device ends, and the device boots from what was durable. The invariants,
checked on every cut (``tests/powercut/device.py``):

- the bootloader picks a slot holding a complete image of a release, marked
  good or on trial with tries left, and boots the slot predicted;
- the state file parses, or its copy does;
- a staging resume point names a block whose predecessors are in the slot;
- ``kruxos audit verify`` passes, or fails only on a torn last record, which the
  next start repairs (verify passes after the recovery);
- the device converges on the new version, confirmed.

A fixed set of seeds runs in ``make test``; ``make torture`` runs at least 100
cuts per bootloader and records their figures in ``docs/torture-results.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.powercut.device import Cut, CutDevice
from tests.powercut.mount import TOOLS

pytestmark = pytest.mark.needs_tool(*TOOLS)

#: A cut aimed at an audit record picks one of the first this many records of the update.
AUDIT_RECORDS = 6
#: Cuts per bootloader in make torture (KRUXOS_POWERCUT_CUTS overrides it).
TORTURE_CUTS = int(os.environ.get("KRUXOS_POWERCUT_CUTS", "100"))


def run_cuts(rig: CutDevice, span: int, plan: list[tuple[int, bool]]) -> list[Cut]:
    """Update once per ``(seed, at_audit)`` with a cut in it; return the cuts.

    A cut ``at_audit`` comes right after the write of one of the first few audit
    records of the update (where a record can be torn), the others at an operation
    of ``span``. Violations are collected in each cut; a device that does not
    recover fails at once."""
    cuts = []
    for seed, at_audit in plan:
        version = rig.new_version()
        cut = rig.update_and_cut(version, seed, span,
                                 audit_records=AUDIT_RECORDS if at_audit else 0)
        rig.power_cut(cut)
        rig.check_at_rest(cut)
        try:
            rig.recover(version, cut)
        except AssertionError as exc:
            raise AssertionError(f"{cut.describe()}: no recovery: {exc}") from None
        print(cut.describe(), *cut.violations, sep="\n  ", flush=True)
        cuts.append(cut)
    return cuts


def _report(cuts: list[Cut]) -> str:
    return "\n".join(f"{c.describe()}\n  " + "\n  ".join(c.violations)
                     for c in cuts if c.violations)


@pytest.mark.parametrize(("bootloader", "plan"), [
    ("grub", [(1, False), (6, True)]),  # seed 6 tears the audit record it cuts
    ("uboot", [(3, False)]),
    ("bls", [(10, True)]),
])
def test_cuts_during_an_update_leave_a_device_that_boots_converges_and_verifies(
        cut_device: Callable[..., tuple[CutDevice, int]], bootloader: str,
        plan: list[tuple[int, bool]]) -> None:
    rig, span = cut_device(bootloader, count=False)
    cuts = run_cuts(rig, span, plan)
    assert not any(c.violations for c in cuts), _report(cuts)


@pytest.mark.torture
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("bootloader", ["grub", "uboot", "bls"])
def test_torture_cuts_during_updates(cut_device: Callable[..., tuple[CutDevice, int]],
                                     bootloader: str) -> None:
    rig, span = cut_device(bootloader, count=True)
    plan = [(seed, seed % 5 == 0) for seed in range(1000, 1000 + TORTURE_CUTS)]
    cuts = run_cuts(rig, span, plan)
    phases: dict[str, int] = {}
    for cut in cuts:
        phases[cut.phase] = phases.get(cut.phase, 0) + 1
    print(f"{bootloader}: {len(cuts)} cuts over an update of {span} changing operations; "
          f"last decision before the cut: {phases}; torn audit tails: "
          f"{sum(c.torn_audit for c in cuts)}; at rest: {sum(c.at_rest for c in cuts)}")
    assert not any(c.violations for c in cuts), _report(cuts)
