"""The whole device boots: GRUB picks slot A, a real kernel mounts it, systemd runs the daemon.

The first slice of "the whole device in QEMU" (docs/system-test.md): the disk
``make image`` builds boots release 1.0.0 from slot A (``sda2``) with the
product's own GRUB script and systemd unit, and the product, asked inside the
guest, names the slot and the release its own bytes record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.guest import TOOLS, Guest
from tests.waiting import wait_for

pytestmark = pytest.mark.needs_tool(*TOOLS)


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[Guest]:
    with Guest(tmp_path) as running:
        yield running


@pytest.mark.timeout(600)
def test_factory_disk_boots_slot_a_and_the_daemon_runs(guest: Guest) -> None:
    guest.expect(rb"KruxOS: booting slot A", 120, "GRUB's boot script choosing slot A")
    guest.wait_for_shell()

    assert "kruxos.slot=A" in guest.run("cat /proc/cmdline").check().output
    root = guest.run("findmnt -n -o SOURCE,OPTIONS /").check().output
    assert root.startswith("/dev/sda2 ro"), root

    # The unit starts after local-fs and /data: wait for systemd to settle it.
    def daemon_state() -> str | None:
        state = guest.run("systemctl is-active kruxos-daemon").output.strip()
        return state if state in ("active", "failed") else None

    state = wait_for(daemon_state, 120, "kruxos-daemon to become active or fail",
                     every=1.0, context=guest.tail)
    journal = guest.run("journalctl -b -u kruxos-daemon --no-pager -n 40").output
    assert state == "active", journal

    status = guest.run("kruxos update status")
    assert status.status == 0, status.output
    lines = status.output.splitlines()
    assert lines[0] == "Boot slot: A (sda2)", status.output
    assert lines[1] == "Version: 1.0.0", status.output
