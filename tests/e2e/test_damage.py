"""Damage is survivable and visible: a damaged boot env on a device confirmed on B.

The bootloader cannot read its env, so it boots slot A; the daemon must not
trust a guess (the backup says "default B") and reboot for ever: it names the
damage, rewrites the env from what is known good, and converges back to the
spec's version through an ordinary trial.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.device import SimDevice


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)  # 1 KiB that is no GRUB env block


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:600])


def _both_copies_bad(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in (0x10, 0x4010):  # inside each copy's data: both CRCs fail
        data[offset:offset + 8] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(data))


CASES: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    "grub env of 1 KiB garbage": ("grub", "boot/grubenv", _garbage),
    "grub env truncated to 600 bytes": ("grub", "boot/grubenv", _truncated),
    "both U-Boot copies bad": ("uboot", "boot/uboot.env", _both_copies_bad),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_boot_env_is_named_repaired_and_never_looped_on(
        make_device: Callable[..., SimDevice], case: str) -> None:
    backend, env_file, damage = CASES[case]
    device = make_device()
    if backend != "grub":  # a fresh device on another bootloader, same directory
        import shutil

        shutil.rmtree(device.dir)
        device.cli("sim", "init", str(device.dir), "--bootloader", backend)
    device.start()
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED", timeout=60)
    device.stop()
    damage(device.dir / env_file)
    boots_before = len(device.boots())

    device.start()
    device.wait_status("1.0.1", "CONFIRMED", timeout=60)
    assert device.status_json()["booted"] == "B"
    repairs = [r for r in device.audit_records() if r["action"] == "repair-boot-env"
               and r["kind"] == "decision"]
    assert len(repairs) == 1, repairs
    assert "cannot be read" in repairs[0]["reason"], repairs[0]
    # the damaged boot (A), the trial of B, and nothing more: no reboot loop
    assert len(device.boots()) - boots_before <= 2, device.boots()
    assert device.cli("audit", "verify").returncode == 0
