"""The QEMU device updates itself: a spec edit in the guest, a real reboot, GRUB's trial, health.

The second slice of "the whole device in QEMU" (docs/system-test.md). The
factory disk boots 1.0.0 on slot A; the signed channel (1.0.0, 1.0.1 healthy,
1.0.2 gateway-fails) is on a read-only second disk, served in the guest on
127.0.0.1:8080 by ``kruxos-channel.service``; ``kruxos-os.service`` answers
the health probe on 127.0.0.1:7800 as the booted image's release file says.
Nothing is driven from the host but the console: the spec is written inside
the guest, the daemon stages into ``/dev/sda3`` and runs ``systemctl reboot``,
the reset ends QEMU (``-no-reboot``) and the harness powers it on again on the
same disk, and GRUB's script picks the trial slot.

The tests of this module run in order on one device: first the checks that
the factory disk boots right (GRUB picks A, a real kernel mounts it
read-only, systemd runs the daemon, whose sandbox can write what an update
writes; the first slice's ``test_boot.py``, now on this module's first boot
so the suite boots once less), then 1.0.1 confirmed on B, then 1.0.2 staged
into A, failing its health check, rolled back to B, then 1.0.3, a release that
hangs, staged into A: each of its trial boots stops the kernel after PID 1
armed the machine's watchdog, the watchdog resets it, and when GRUB's tries
are used up its script marks A bad and boots B again (until the fourth slice,
``test_watchdog.py`` on a device of its own: sharing this one saves its
factory boot).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.guest import CHANNEL, TOOLS, Guest, GuestError, wait_for_daemon
from tests.waiting import wait_for

pytestmark = [pytest.mark.needs_tool(*TOOLS), pytest.mark.timeout(2400)]

#: The image's trialTries (deploy/image/rootfs/etc/kruxos/device.yaml).
TRIES = 3
#: A hung boot's reset: ~20-40 s to PID 1, then RuntimeWatchdogSec=30s (a limit).
HANG_RESET = 300.0
HANG_LINE = b"KruxOS: this release hangs: stopping the kernel"

#: Deadlines under TCG on a loaded two-core machine (limits, not expectations).
BOOT = 300.0
SETTLE = 180.0
STAGE_AND_REBOOT = 900.0
VERDICT = 420.0

SPEC = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: qemu-device
spec:
  version: {version}
  channel:
    url: http://127.0.0.1:8080/
  health:
    url: http://127.0.0.1:7800/health/ready
    interval: 5s
    timeout: 45s
    successThreshold: 2
"""

UNITS = ("kruxos-daemon", "kruxos-os", "kruxos-channel")


class Device:
    """The one guest of this module, with a log of what each step saw."""

    def __init__(self, guest: Guest, log: Path) -> None:
        self.guest = guest
        self.log = log
        self.started = time.monotonic()

    def note(self, title: str, text: str = "") -> None:
        stamp = time.monotonic() - self.started
        with open(self.log, "a") as out:
            out.write(f"--- {stamp:7.1f} s  {title}\n{text.rstrip()}\n" if text
                      else f"--- {stamp:7.1f} s  {title}\n")

    def boot(self, slot: str) -> None:
        """Wait for GRUB to pick ``slot``, the shell, and the product's units."""
        self.guest.expect(f"KruxOS: booting slot {slot}".encode(), BOOT,
                          f"GRUB's boot script choosing slot {slot}")
        self.note(f"GRUB: booting slot {slot} (QEMU start {self.guest.boots})")
        self.guest.wait_for_shell(BOOT)
        # The slots are kernel names (sda2/sda3): they hold only while the
        # device's disk is the one SCSI disk, so every boot checks it.
        root = self.guest.run("findmnt -n -o SOURCE /").check().output.strip()
        assert root == f"/dev/sda{2 if slot == 'A' else 3}", root

        def settled() -> str | None:
            states = self.guest.run("systemctl is-active " + " ".join(UNITS)).output.split()
            return " ".join(states) if all(s in ("active", "failed") for s in states) \
                and len(states) == len(UNITS) else None

        states = wait_for(settled, SETTLE, "the product's units to settle", every=2.0,
                          context=self.guest.tail)
        self.note("units up", states)
        assert states == "active active active", self.journal()
        wait_for_daemon(self.guest, SETTLE)
        self.note("daemon holds its data dir")

    def status(self) -> str:
        return self.guest.run("kruxos update status").output

    def write_spec(self, version: str) -> None:
        """An atomic write inside the guest, as a person or an agent on the device would."""
        text = SPEC.format(version=version)
        self.guest.run(
            "set -e; cd /device/kruxos/spec; "
            f"printf '%s' '{text}' > .update.yaml.new; sync .update.yaml.new; "
            "mv .update.yaml.new update.yaml; sync .").check()
        self.note(f"spec written: version {version}", text)

    def wait_status(self, what: str, done: str, timeout: float) -> str:
        def seen() -> str | None:
            status = self.status()
            return status if done in status else None

        status = wait_for(seen, timeout, what, every=5.0,
                          context=lambda: self.status() + self.journal())
        self.note(what, status)
        return status

    def journal(self) -> str:
        return "\n--- daemon journal ---\n" + self.guest.run(
            "journalctl -b -u kruxos-daemon --no-pager -n 60").output


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    if not CHANNEL.exists():
        pytest.fail(f"no channel disk at {CHANNEL}: build it with `make image`")
    workdir = tmp_path_factory.mktemp("update")
    log = Path(__file__).resolve().parents[2] / "build" / "system-update.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"test log of tests/system/test_update.py; console in {workdir}\n")
    with Guest(workdir) as guest:
        dev = Device(guest, log)
        dev.boot("A")
        dev.note("factory status", dev.status())
        yield dev
        dev.note("audit list", guest.run("kruxos audit list").output)


# -- the factory boot (one boot for these checks and the update: a boot is ~60-100 s
# under TCG, so the checks that a fresh device boots right share the update's first).


def test_grub_boots_slot_a_read_only(device: Device) -> None:
    assert "KruxOS: booting slot A" in device.guest.console()
    assert "kruxos.slot=A" in device.guest.run("cat /proc/cmdline").check().output
    root = device.guest.run("findmnt -n -o SOURCE,OPTIONS /").check().output
    assert root.startswith("/dev/sda2 ro"), root


def test_the_daemon_runs_as_a_systemd_service(device: Device) -> None:
    state = device.guest.run("systemctl is-active kruxos-daemon").output.strip()
    assert state == "active", device.journal()
    restarts = device.guest.run("systemctl show -p NRestarts --value kruxos-daemon").check()
    assert restarts.output.strip() == "0", device.journal()


def test_update_status_names_slot_a_and_its_release(device: Device) -> None:
    status = device.guest.run("kruxos update status")
    assert status.status == 0, status.output
    lines = status.output.splitlines()
    assert lines[0] == "Boot slot: A (sda2)", status.output
    assert lines[1] == "Version: 1.0.0", status.output
    assert "Other slot: B (sda3) empty" in lines, status.output


def test_pid_1_armed_the_machine_watchdog(device: Device) -> None:
    """systemd pets the i6300esb from the image's RuntimeWatchdogSec=30s: a hung
    kernel is reset (the last test of this module)."""
    watchdog = device.guest.run("cat /sys/class/watchdog/watchdog0/identity; "
                                "systemctl show -p RuntimeWatchdogUSec --value").check().output
    device.note("the watchdog PID 1 armed", watchdog)
    assert watchdog.splitlines()[:2] == ["i6300ESB timer", "30s"], watchdog


def test_the_daemon_can_write_what_an_update_writes(device: Device) -> None:
    """Inside the unit's sandbox: the boot env, the data dir and the other slot are writable.

    Checked in the daemon's own mount namespace, so a unit setting such as
    ``ProtectSystem=`` that hides them shows here, not at the first update.
    """
    guest = device.guest
    pid = guest.run("systemctl show -p MainPID --value kruxos-daemon").check().output.strip()
    assert pid.isdigit() and pid != "0", device.journal()
    probe = guest.run(
        f"nsenter --target {pid} --mount -- sh -c '"
        "for dir in /boot/grub /data/kruxos; do "
        "touch $dir/.kruxos-probe && rm $dir/.kruxos-probe || exit 1; done; "
        ": 1<>/dev/sda3'")
    assert probe.status == 0, probe.output


# -- the update and the rollback


def test_a_spec_edit_updates_the_device_to_1_0_1_confirmed_on_slot_b(device: Device) -> None:
    guest = device.guest
    status = device.status()
    assert "Version: 1.0.0" in status and "Boot slot: A (sda2)" in status, status
    guest.run("mountpoint -q /channel && test -f /channel/metadata.json").check()

    device.write_spec("1.0.1")
    staged_at = time.monotonic()
    guest.restart_after_reset(STAGE_AND_REBOOT)
    device.note(f"reset after staging: {time.monotonic() - staged_at:.0f} s from the spec edit")

    device.boot("B")
    assert "kruxos.slot=B" in guest.run("cat /proc/cmdline").check().output
    root = guest.run("findmnt -n -o SOURCE,FSTYPE,OPTIONS /").check().output
    assert root.startswith("/dev/sda3 squashfs ro"), root
    status = device.wait_status("1.0.1 confirmed on B", "Boot status: CONFIRMED", VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1", "Boot status: CONFIRMED"], status
    assert "Previous: 1.0.0 (sda2, available for rollback)" in lines, status
    version = guest.run("python3 -c \"import urllib.request as u; "
                        "print(u.urlopen('http://127.0.0.1:7800/version').read().decode())\"")
    assert '"version": "1.0.1"' in version.output, version.output


def test_a_broken_release_fails_its_trial_and_the_device_rolls_back(device: Device) -> None:
    guest = device.guest
    status = device.status()
    if "Version: 1.0.1" not in status or "Boot slot: B" not in status:
        pytest.fail(f"needs the device confirmed on 1.0.1 in B first:\n{status}")

    device.write_spec("1.0.2")
    staged_at = time.monotonic()
    guest.restart_after_reset(STAGE_AND_REBOOT)
    device.note(f"reset after staging 1.0.2: {time.monotonic() - staged_at:.0f} s")
    device.boot("A")
    try:  # the verdict may come at any moment: the reboot can cut this short
        device.note("on trial", device.status())
    except GuestError as exc:
        device.note("on trial: status cut short", str(exc)[:200])

    # The health check fails (gateway: failed to start), the daemon rolls back
    # and reboots: GRUB then boots the good slot B again.
    guest.restart_after_reset(VERDICT)
    device.note("reset after the failed trial")
    device.boot("B")
    status = device.wait_status("rolled back to B", "rolled back from 1.0.2", VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1",
                         "Boot status: CONFIRMED (rolled back from 1.0.2)"], status
    assert any(line.startswith("Rollback reason: ") and "gateway" in line for line in lines), \
        status


def test_a_hung_release_is_reset_by_the_watchdog_until_grub_falls_back(device: Device) -> None:
    """Release 1.0.3 hangs (``kruxos-hang.service``): the kernel stops early in each
    boot, after PID 1 armed the watchdog. No daemon runs on it, so nothing in the
    guest can roll back: the watchdog resets the machine (``-action
    watchdog=reset``; ``-no-reboot`` makes that QEMU exiting, and the harness
    powers it on again), GRUB counts a try on each boot, and when the tries are
    used up its script marks A bad, leaves ``A: trial tries exhausted`` in the env
    and boots B."""
    guest = device.guest
    status = device.status()
    if "rolled back from 1.0.2" not in status or "Boot slot: B" not in status:
        pytest.fail(f"needs the device rolled back to 1.0.1 on B first:\n{status}")
    device.write_spec("1.0.3")
    guest.restart_after_reset(STAGE_AND_REBOOT)  # staged into A, armed, systemctl reboot
    for attempt in range(1, TRIES + 1):
        guest.expect(b"KruxOS: booting slot A", BOOT, f"GRUB's trial boot {attempt} of A")
        guest.expect(HANG_LINE, BOOT, f"1.0.3 stopping the kernel (trial boot {attempt})")
        hung = time.monotonic()
        guest.restart_after_reset(HANG_RESET)  # nothing but the watchdog ends this boot
        device.note(f"trial boot {attempt} of A hung; the watchdog reset the machine "
                    f"{time.monotonic() - hung:.0f} s after the kernel stopped")

    device.boot("B")  # tries used up: GRUB's script gave up on A
    env = guest.run("grep ^KRUXOS_ /boot/grub/grubenv").check().output
    device.note("env after the fallback", env)
    assert "KRUXOS_A=bad" in env.splitlines() and "KRUXOS_TRIAL=" in env.splitlines(), env
    assert "KRUXOS_FALLBACK=A: trial tries exhausted" in env.splitlines(), env


def test_the_daemon_reports_the_hung_release_rolled_back_with_the_reason(
        device: Device) -> None:
    status = device.wait_status("the rollback from 1.0.3 reported", "rolled back from 1.0.3",
                                VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1",
                         "Boot status: CONFIRMED (rolled back from 1.0.3)"], status
    assert any(line.startswith("Rollback reason: ") and "trial tries exhausted" in line
               for line in lines), status


def test_the_audit_trail_verifies_in_the_guest(device: Device) -> None:
    verify = device.guest.run("kruxos audit verify")
    device.note("audit verify", verify.output)
    assert verify.status == 0, verify.output
