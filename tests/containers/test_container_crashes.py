"""A kill at every step of a container update or rollback, on a real engine: the next
daemon finishes it from what the engine reports and the state file recorded.

Each run installs 1.0.0, edits the spec, starts a daemon armed to be killed
(``SIGKILL``) at one failpoint of :mod:`reconciler.containers`, starts a second
daemon and waits for the device to settle: the expected release running (1.0.1
confirmed, or 1.0.0 again after the broken 1.0.2), exactly one container of the
configured name and no kept one, no update left in the state file, the named
volume's starts in order, and the audit trail's chain whole. Marked ``torture``
(each run is 8-15 s); ``make test`` runs the two kills of ``test_docker_device.py``.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.container_rig import ENGINE, ENGINE_TOOLS
from tests.containers.test_docker_device import (  # noqa: F401  (fixtures)
    _installed,
    _runs,
    images,
    make,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.torture, pytest.mark.needs_tool(*ENGINE_TOOLS[ENGINE])]

#: (failpoint, release the spec wants, release that runs at the end, starts in the volume)
CUTS = [
    ("container.pulled", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.recorded", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.stopped", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.renamed", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.created", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.started", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.confirmed", "1.0.1", "1.0.1", ["1.0.0", "1.0.1"]),
    ("container.rolling-back", "1.0.2", "1.0.0", ["1.0.0", "1.0.2", "1.0.0"]),
    ("container.new-removed", "1.0.2", "1.0.0", ["1.0.0", "1.0.2", "1.0.0"]),
]


@pytest.mark.parametrize(("point", "wanted", "ends", "starts"), CUTS,
                         ids=[c[0].split(".")[1] for c in CUTS])
def test_a_kill_at_each_step_is_finished_by_the_next_daemon(
        make: Any, point: str, wanted: str, ends: str,  # noqa: F811 (the fixture)
        starts: list[str]) -> None:
    device = make(f"kx-cut-{point.split('.')[1]}")
    device.publish("1.0.0", wanted)
    _installed(device)
    device.stop()
    device.spec(wanted, timeout="3s")
    device.start(KRUXOS_FAILPOINTS=f"{point}=kill")
    proc = device.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, 90, f"the daemon killed at {point}",
             context=device.tail)
    assert proc.returncode == -signal.SIGKILL, device.tail()

    device.start()

    def settled() -> bool:
        state = device.state()
        names = sorted(c.name for c in device.engine.client.containers.list(all=True)
                       if c.name.startswith(device.name))
        return "container_update" not in state and names == [device.name] \
            and _runs(device, ends)

    wait_for(settled, 90, f"the device to settle on {ends} after a kill at {point}",
             context=device.tail)
    if wanted != ends:
        assert device.state()["failed"]["version"] == wanted
    log = device.volume_file("starts.log").split("\n")
    assert [line for line in log if line] == [f"{v} started" for v in starts], log
    assert device.cli("audit", "verify").returncode == 0
