"""Damage is survivable and visible: a damaged boot env on a device confirmed on B.

GRUB and U-Boot cannot read their env, so they boot slot A; the daemon must not
trust a guess (the backup says "default B") and reboot for ever: it names the
damage, rewrites the env from what is known good, and converges back to the
spec's version through an ordinary trial. systemd-boot boots what its damaged
ESP still offers (B, or A when B's entry is gone); the daemon repairs the ESP
from the booted slot the same way, rebuilding a lost entry from the other's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.device import SimDevice


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)  # 1 KiB that is no GRUB env block


def _truncated(path: Path) -> None:
    """Cut inside the signature line: no GRUB reads it (cut at 600 bytes, GRUB still
    would, and so does the backend: tests/test_grubenv.py)."""
    path.write_bytes(path.read_bytes()[:20])


def _both_copies_bad(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in (0x10, 0x4010):  # inside each copy's data: both CRCs fail
        data[offset:offset + 8] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(data))


def _loader_conf_garbage(esp: Path) -> None:
    _garbage(esp / "loader" / "loader.conf")


def _entry_of_b_gone(esp: Path) -> None:
    (esp / "loader" / "entries" / "kruxos-b.conf").unlink()


#: case -> (backend, env path in the device dir, damage, what the repair's outcome says)
CASES: dict[str, tuple[str, str, Callable[[Path], None], str]] = {
    "grub env of 1 KiB garbage": ("grub", "boot/grubenv", _garbage, "default A"),
    "grub env cut to 20 bytes": ("grub", "boot/grubenv", _truncated, "default A"),
    "both U-Boot copies bad": ("uboot", "boot/uboot.env", _both_copies_bad, "default A"),
    "bls loader.conf of 1 KiB garbage": ("bls", "boot/esp", _loader_conf_garbage,
                                         "default B, marks B good, A staged; loader.conf "
                                         "written with the shipped settings"),
    "bls entry of B gone": ("bls", "boot/esp", _entry_of_b_gone,
                            "default A, marks A good, B staged; slot B's entry rebuilt "
                            "from kruxos-a.conf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_boot_env_is_named_repaired_and_never_looped_on(
        make_device: Callable[..., SimDevice], case: str) -> None:
    backend, env_file, damage, said = CASES[case]
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
    outcomes = [r for r in device.audit_records() if r.get("decision") == repairs[0]["seq"]]
    assert len(outcomes) == 1 and outcomes[0]["outcome"].startswith("ok: boot env rewritten: ")
    assert said in outcomes[0]["outcome"], outcomes[0]
    # the damaged boot (A), the trial of B, and nothing more: no reboot loop
    assert len(device.boots()) - boots_before <= 2, device.boots()
    assert device.cli("audit", "verify").returncode == 0


def test_bls_damage_that_needs_a_guess_is_named_once_and_nothing_reboots(
        make_device: Callable[..., SimDevice]) -> None:
    """Slot A's entry adapted (root= by device name), B's lost: B's cannot be rebuilt from
    A's without a guess, so the repair is refused with the reason, the trail says it once
    (later passes only count repeats), the ESP is left as it is and the device stays up."""
    import shutil

    device = make_device()
    shutil.rmtree(device.dir)
    device.cli("sim", "init", str(device.dir), "--bootloader", "bls")
    entries = device.dir / "boot" / "esp" / "loader" / "entries"
    a = entries / "kruxos-a.conf"
    a.write_text(a.read_text().replace("root=PARTLABEL=root-a", "root=/dev/sda2"))
    (entries / "kruxos-b+0.conf").unlink()
    device.start()

    def repair_records() -> list[dict[str, Any]]:
        return [r for r in device.audit_records() if r["action"] == "repair-boot-env"]

    records = device.wait_for(lambda: repair_records() if len(repair_records()) == 2 else None,
                              30, "the repair's decision and outcome")
    assert records[1]["outcome"].startswith("failed: bls backend: cannot repair "), records
    assert "option 'root=/dev/sda2' is not root=PARTLABEL=root-a; write kruxos-b+0.conf by " \
        "hand" in records[1]["outcome"]
    repeats = device.audit_head().get("repeats", 0)
    device.edit_spec(version="1.0.1")  # more passes: no update starts over a broken ESP
    device.wait_for(lambda: device.audit_head().get("repeats", 0) > repeats, 30,
                    "a pass after the spec edit to repeat the decision")
    assert repair_records() == records
    assert [r["action"] for r in device.audit_records() if r["kind"] == "decision"] == \
        ["repair-boot-env"]
    assert sorted(p.name for p in entries.iterdir()) == ["kruxos-a.conf"]
    assert len(device.boots()) == 1, device.boots()
