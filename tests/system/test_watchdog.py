"""A release that hangs: the watchdog resets it and GRUB's tries counter brings the device back.

Release 1.0.3's behaviour is ``hangs`` (``kruxos-hang.service`` in the
image): early in each boot, after PID 1 armed the machine's watchdog
(``i6300esb``, systemd's ``RuntimeWatchdogSec=30s`` from
``deploy/systemd/watchdog.conf``), the kernel stops. No daemon runs on it, so
nothing in the guest can roll back: the watchdog resets the machine
(``-action watchdog=reset``; ``-no-reboot`` makes that QEMU exiting, and the
harness powers it on again), GRUB counts a try on each boot, and when the
tries are used up its script marks B bad, leaves ``B: trial tries exhausted``
in the env and boots A. The daemon on A then reports the rollback with that
reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.guest import CHANNEL, TOOLS, Guest
from tests.system.test_update import BOOT, STAGE_AND_REBOOT, VERDICT, Device

pytestmark = [pytest.mark.needs_tool(*TOOLS), pytest.mark.timeout(2400)]

#: The image's trialTries (deploy/image/rootfs/etc/kruxos/device.yaml).
TRIES = 3
#: A hung boot's reset: ~20-40 s to PID 1, then RuntimeWatchdogSec=30s (a limit).
HANG_RESET = 300.0
HANG_LINE = b"KruxOS: this release hangs: stopping the kernel"


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    if not CHANNEL.exists():
        pytest.fail(f"no channel disk at {CHANNEL}: build it with `make image`")
    workdir = tmp_path_factory.mktemp("watchdog")
    log = Path(__file__).resolve().parents[2] / "build" / "system-watchdog.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"test log of tests/system/test_watchdog.py; console in {workdir}\n")
    with Guest(workdir) as guest:
        dev = Device(guest, log)
        dev.boot("A")
        yield dev
        dev.note("audit list", guest.run("kruxos audit list").output)


def test_a_hung_release_is_reset_by_the_watchdog_until_grub_falls_back(device: Device) -> None:
    guest = device.guest
    watchdog = guest.run("cat /sys/class/watchdog/watchdog0/identity; "
                         "systemctl show -p RuntimeWatchdogUSec --value").check().output
    device.note("the watchdog PID 1 armed", watchdog)
    assert watchdog.splitlines()[:2] == ["i6300ESB timer", "30s"], watchdog

    device.write_spec("1.0.3")
    guest.restart_after_reset(STAGE_AND_REBOOT)  # staged into B, armed, systemctl reboot
    for attempt in range(1, TRIES + 1):
        guest.expect(b"KruxOS: booting slot B", BOOT, f"GRUB's trial boot {attempt} of B")
        guest.expect(HANG_LINE, BOOT, f"1.0.3 stopping the kernel (trial boot {attempt})")
        hung = time.monotonic()
        guest.restart_after_reset(HANG_RESET)  # nothing but the watchdog ends this boot
        device.note(f"trial boot {attempt} of B hung; the watchdog reset the machine "
                    f"{time.monotonic() - hung:.0f} s after the kernel stopped")

    device.boot("A")  # tries used up: GRUB's script gave up on B
    env = guest.run("grep ^KRUXOS_ /boot/grub/grubenv").check().output
    device.note("env after the fallback", env)
    assert "KRUXOS_B=bad" in env.splitlines() and "KRUXOS_TRIAL=" in env.splitlines(), env
    assert "KRUXOS_FALLBACK=B: trial tries exhausted" in env.splitlines(), env


def test_the_daemon_reports_the_rollback_with_the_reason(device: Device) -> None:
    status = device.wait_status("the rollback from 1.0.3 reported", "rolled back from 1.0.3",
                                VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: A (sda2)", "Version: 1.0.0",
                         "Boot status: CONFIRMED (rolled back from 1.0.3)"], status
    assert any(line.startswith("Rollback reason: ") and "trial tries exhausted" in line
               for line in lines), status
    verify = device.guest.run("kruxos audit verify")
    device.note("audit verify", verify.output)
    assert verify.status == 0, verify.output
