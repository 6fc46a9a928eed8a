"""The crash matrix: the daemon of a simulated device killed at each failpoint on each flow.

How a run goes and what it checks: ``tests/crash/matrix.py``. ``make test`` runs
the slice (every point once, on one flow, with GRUB; every point on the way of a
boot env write on all three backends); ``make torture`` runs every point on
every flow it lies on, with every backend it is in. Results and the table of
points: ``docs/reliability.md`` (the crash matrix).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.crash.matrix import FLOWS, Crash, CrashRig, Point, matrix, slice_
from tests.device import SimDevice


def _id(run: tuple[Point, str, str]) -> str:
    point, flow, backend = run
    return f"{backend}-{flow}-{point.name}"


def _run(crash_device: Callable[[str, str], SimDevice], point: Point, flow: str,
         backend: str) -> Crash:
    dev = crash_device(backend, "dev")
    crash = CrashRig(dev, FLOWS[flow], Crash(point.name, point.hit, flow, backend,
                                             downloaded=point.downloaded)).run()
    print(crash.describe(), *crash.violations, sep="\n  ", flush=True)
    return crash


@pytest.mark.timeout(600)  # a loaded machine: a flow with a first update takes minutes
@pytest.mark.parametrize("run", slice_(), ids=_id)
def test_a_kill_at_the_point_leaves_a_device_that_boots_and_finishes_the_flow(
        crash_device: Callable[[str, str], SimDevice], run: tuple[Point, str, str]) -> None:
    crash = _run(crash_device, *run)
    assert crash.killed and not crash.violations, crash.describe() + "\n" + "\n".join(
        crash.violations)


@pytest.mark.torture
@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", [r for r in matrix() if r not in slice_()], ids=_id)
def test_torture_a_kill_at_every_point_of_every_flow_on_every_backend(
        crash_device: Callable[[str, str], SimDevice], run: tuple[Point, str, str]) -> None:
    crash = _run(crash_device, *run)
    assert crash.killed and not crash.violations, crash.describe() + "\n" + "\n".join(
        crash.violations)
