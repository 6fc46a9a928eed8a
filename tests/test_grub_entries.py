"""GRUB's menu entries find a slot by partition, so one release image boots from either slot.

The real boot through these entries is in ``tests/system/`` (QEMU, both slots);
these checks are the fast half: each entry takes its own slot's partition
variable and falls back to the label only when it is unset, and the QEMU
device's platform config names the same partitions as its image layer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRUB_CFG = REPO / "deploy" / "grub" / "grub.cfg"
PLATFORM_CFG = REPO / "deploy" / "image" / "grub-serial.cfg"
IMAGE_LAYER = REPO / "deploy" / "image" / "rootfs" / "etc" / "kruxos" / "device.yaml"


def entries() -> dict[str, str]:
    """Menu entry id -> body."""
    found = re.findall(r'^menuentry "[^"]*" --id (kruxos-[AB]) \{\n(.*?)^\}', GRUB_CFG.read_text(),
                       re.MULTILINE | re.DOTALL)
    return dict(found)


@pytest.mark.parametrize("slot", ["A", "B"])
def test_an_entry_boots_its_slot_by_partition_and_by_label_only_as_a_fallback(slot: str) -> None:
    body = entries()[f"kruxos-{slot}"]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    assert lines[:5] == [
        f'if [ -n "${{kruxos_part_{slot}}}" ]; then',
        f'set root="${{kruxos_part_{slot}}}"',
        "else",
        f"search --no-floppy --set=root --label KRUXOS_ROOT_{slot}",
        "fi",
    ], body
    other = "B" if slot == "A" else "A"
    assert f"kruxos_part_{other}" not in body and f"ROOT_{other}" not in body
    assert f"root=PARTLABEL=root_{slot.lower()} ro kruxos.slot={slot}" in body


def test_the_qemu_platform_exports_the_partitions_of_its_image_layers_slots() -> None:
    text = PLATFORM_CFG.read_text()
    parts = dict(re.findall(r"^set kruxos_part_([AB])=\(hd0,gpt(\d+)\)$", text, re.MULTILINE))
    assert re.search(r"^export kruxos_part_A kruxos_part_B$", text, re.MULTILINE), text
    slots = dict(re.findall(r"^  ([AB]): \{device: (/dev/\w+)\}$", IMAGE_LAYER.read_text(),
                            re.MULTILINE))
    assert {slot: f"/dev/sda{number}" for slot, number in parts.items()} == slots


@pytest.mark.needs_tool("grub-script-check")
def test_the_platform_part_and_the_product_script_parse_as_one_grub_cfg(tmp_path: Path) -> None:
    joined = tmp_path / "grub.cfg"
    joined.write_text(PLATFORM_CFG.read_text() + GRUB_CFG.read_text())
    check = subprocess.run(["grub-script-check", str(joined)], capture_output=True, text=True,
                           check=False, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
