"""A staging killed mid-image, end to end: the slot claims nothing until the resumed staging ends.

``kruxos sim run`` on a slow channel; the daemon is SIGKILLed (no cleanup, as a
crash) while it writes slot B; ``sim run`` restarts it, as systemd would. The
slot's own bytes are read directly and through the CLI throughout.
"""

from __future__ import annotations

import os
import re
import signal

from reconciler.release.identity import read_identity, verify_slot
from tests.device import SimDevice

MIB = 1 << 20


def test_a_daemon_killed_mid_staging_leaves_a_slot_that_claims_no_release(
        device: SimDevice) -> None:
    # 23 MiB at 4 MB/s: a resume point is written every second (4 blocks) or so.
    device.cli("sim", "publish", str(device.dir), "1.0.1-big", "--size-mb", "24")
    slot_b = device.dir / "slots" / "sda3"
    device.start("--channel-rate", "4000")
    device.edit_spec(version="1.0.1-big")

    def past_the_resume_point() -> bool:
        staging = device.state().get("staging") or {}
        return int(staging.get("done", 0)) >= 17 * MIB
    device.wait_for(past_the_resume_point, 60, "17 MiB of 1.0.1-big written", every=0.05)
    pid = device.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    assert read_identity(slot_b) == (None, None)
    doc = device.status_json()
    assert (doc["slots"]["B"]["version"], doc["slots"]["B"]["mark"]) == (None, "bad"), doc
    line = device.cli("slot", "verify", "B").stdout
    assert line.startswith("slot B (sda3): no release: "), line

    claimed: list[str] = []  # every look at slot B: nothing, or a release it fully holds

    def looked_at_b_then_done() -> dict[str, object] | None:
        check = verify_slot(slot_b)
        claimed.append(check.state)
        status = device.status_json()
        booted = status["slots"][status["booted"]]
        done = booted["version"] == "1.0.1-big" and status["boot_status"] == "CONFIRMED"
        return status if done else None
    device.wait_for(looked_at_b_then_done, 120, "1.0.1-big confirmed in slot B", every=0.2)
    assert set(claimed) <= {"empty", "ok"} and claimed[0] == "empty", claimed

    stages = [r for r in device.audit_records() if r["action"] == "stage"]
    outcomes = [r["outcome"] for r in stages if r["kind"] == "outcome"]
    assert len([r for r in stages if r["kind"] == "decision"]) == 2, stages  # one killed
    resumed = re.search(r"resumed at block (\d+) of 23, byte \d+; (\d+) bytes fetched",
                        outcomes[-1])
    assert resumed is not None and int(resumed.group(2)) <= 8 * MIB, outcomes
    # status showed 17 MiB done before the kill: the durable progress, so all of it was kept
    assert int(resumed.group(1)) >= 17, outcomes
    out = device.cli("slot", "verify").stdout.splitlines()
    assert out[1].startswith("slot B (sda3): verified: ") and "1.0.1-big" in out[1], out
