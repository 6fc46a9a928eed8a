"""The whole device boots: GRUB picks slot A, a real kernel mounts it, systemd runs the daemon.

The first slice of "the whole device in QEMU" (docs/system-test.md): the disk
``make image`` builds boots release 1.0.0 from slot A (``sda2``) with the
product's own GRUB script and systemd unit, and the product, asked inside the
guest, names the slot and the release its own bytes record. One boot serves
every test of this module (a boot is ~20 s of TCG).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system.guest import TOOLS, Guest, wait_for_daemon
from tests.waiting import wait_for

pytestmark = [pytest.mark.needs_tool(*TOOLS), pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """The factory disk booted to its shell, with the daemon's unit settled."""
    with Guest(tmp_path_factory.mktemp("guest")) as guest:
        guest.expect(rb"KruxOS: booting slot A", 120, "GRUB's boot script choosing slot A")
        guest.wait_for_shell()

        def settled() -> str | None:
            state = guest.run("systemctl is-active kruxos-daemon").output.strip()
            return state if state in ("active", "failed") else None

        wait_for(settled, 120, "kruxos-daemon to become active or fail", every=1.0,
                 context=guest.tail)
        if settled() == "active":
            wait_for_daemon(guest, 120)
        yield guest


def daemon_journal(guest: Guest) -> str:
    return guest.run("journalctl -b -u kruxos-daemon --no-pager -n 40").output


def test_grub_boots_slot_a_read_only(booted: Guest) -> None:
    assert "kruxos.slot=A" in booted.run("cat /proc/cmdline").check().output
    root = booted.run("findmnt -n -o SOURCE,OPTIONS /").check().output
    assert root.startswith("/dev/sda2 ro"), root


def test_the_daemon_runs_as_a_systemd_service(booted: Guest) -> None:
    state = booted.run("systemctl is-active kruxos-daemon").output.strip()
    assert state == "active", daemon_journal(booted)
    restarts = booted.run("systemctl show -p NRestarts --value kruxos-daemon").check().output
    assert restarts.strip() == "0", daemon_journal(booted)


def test_update_status_names_slot_a_and_its_release(booted: Guest) -> None:
    status = booted.run("kruxos update status")
    assert status.status == 0, status.output
    lines = status.output.splitlines()
    assert lines[0] == "Boot slot: A (sda2)", status.output
    assert lines[1] == "Version: 1.0.0", status.output
    assert "Other slot: B (sda3) empty" in lines, status.output


def test_the_daemon_can_write_what_an_update_writes(booted: Guest) -> None:
    """Inside the unit's sandbox: the boot env, the data dir and the other slot are writable.

    Checked in the daemon's own mount namespace, so a unit setting such as
    ``ProtectSystem=`` that hides them shows here, not at the first update.
    """
    pid = booted.run("systemctl show -p MainPID --value kruxos-daemon").check().output.strip()
    assert pid.isdigit() and pid != "0", daemon_journal(booted)
    probe = booted.run(
        f"nsenter --target {pid} --mount -- sh -c '"
        "for dir in /boot/grub /data/kruxos; do "
        "touch $dir/.kruxos-probe && rm $dir/.kruxos-probe || exit 1; done; "
        ": 1<>/dev/sda3'")
    assert probe.status == 0, probe.output
