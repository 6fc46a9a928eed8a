"""A maintenance window opening while a real daemon waits, on a fake wall clock.

The whole ``kruxos sim run`` process tree runs under ``faketime`` started
``LEAD`` before the window opens; the clock runs (never frozen), so the daemon
stages at once, waits for the window, and reboots when its trigger fires. The
lead is long enough for a loaded machine to boot the device and stage before
the window opens (a few seconds when idle); these tests are ``slow`` for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.device import SimDevice

pytestmark = [pytest.mark.needs_tool("faketime"), pytest.mark.slow]

#: How long before the window the fake clock starts: boot and staging must fit in it.
LEAD = timedelta(seconds=45)


def _window_spec(device: SimDevice, version: str, day: str, start: str, zone: str) -> None:
    text = device.spec.read_text().replace("version: 1.0.0", f"version: {version}")
    text = text.rstrip("\n") + (f"\n  rollout:\n    windows:\n      - days: [{day}]\n"
                                f"        start: \"{start}\"\n        duration: 1h\n"
                                f"        timezone: {zone}\n")
    device.edit_spec(text=text)
    device.cli("spec", "validate", str(device.spec))


def _clock_before(opens: datetime) -> str:
    """The ``faketime`` start, ``LEAD`` before ``opens`` (UTC, as the device's TZ)."""
    return (opens - LEAD).strftime("%Y-%m-%d %H:%M:%S")


def _at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["time"].replace("Z", "+00:00"))


def _reboot_waits_then_happens_at(device: SimDevice, opens: datetime, shown: str) -> None:
    """Stage now, wait for ``opens`` (shown as ``shown``), then reboot, probe, confirm."""
    waits = device.wait_for(lambda: [r for r in device.audit_records()
                                     if r["kind"] == "decision" and r["action"] == "wait"],
                            LEAD.total_seconds(), "the reboot to wait for the window")
    assert f"maintenance window opening {shown}" in waits[0]["reason"], waits[0]
    assert _at(waits[0]) < opens, waits[0]
    assert "Staged: 1.0.1 in B (sda3)" in device.status_lines()
    stages = device.decisions("stage")
    assert len(stages) == 1 and _at(stages[0]) < opens, stages
    assert not device.decisions("reboot")

    device.wait_status("1.0.1", "CONFIRMED", timeout=LEAD.total_seconds() + 60)
    reboots = device.decisions("reboot")
    assert len(reboots) == 1, reboots
    assert _at(reboots[0]) >= opens, reboots[0]
    assert reboots[0]["actor"] == "schedule", reboots[0]
    assert [r["actor"] for r in device.decisions("stage")] != ["schedule"]
    assert device.cli("audit", "verify").returncode == 0


def test_reboot_waits_for_the_window_and_happens_when_it_opens(device: SimDevice) -> None:
    _window_spec(device, "1.0.1", "tue", "02:00", "UTC")  # 2027-03-02 is a Tuesday
    device.env["TZ"] = "UTC"
    device.resign("1000d")  # the fake clock runs months ahead
    opens = datetime(2027, 3, 2, 2, 0, tzinfo=UTC)
    device.start(faketime=_clock_before(opens))
    _reboot_waits_then_happens_at(device, opens, "2027-03-02 02:00 UTC")


def test_window_starting_in_the_skipped_hour_opens_at_the_jump(device: SimDevice) -> None:
    # Berlin skips 02:00-03:00 on Sunday 2027-03-28; the jump is at 01:00 UTC.
    _window_spec(device, "1.0.1", "sun", "02:30", "Europe/Berlin")
    device.env["TZ"] = "UTC"
    device.resign("1000d")  # the fake clock runs months ahead
    opens = datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    device.start(faketime=_clock_before(opens))
    _reboot_waits_then_happens_at(device, opens, "2027-03-28 01:00 UTC")
