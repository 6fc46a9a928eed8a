"""What must hold of a simulated device's files after a crash or a power cut, at rest.

Shared by the power-cut tests (``tests/powercut/``) and the crash matrix
(``tests/crash/``): each check reads the device directory while nothing of the
device runs and returns what it found wrong, as sentences (empty: all holds).

- the bootloader picks a slot (the trial slot while tries are left, else the
  default, which must be marked good) holding a complete image of a published
  release;
- ``state.json`` parses, or ``state.copy.json`` does;
- a staging resume point names a block whose predecessors are all in the slot;
- ``kruxos audit verify`` passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reconciler.boot import BootState, open_backend
from reconciler.config import load_device
from reconciler.release.identity import read_identity
from tests.device import SimDevice


def pick(state: BootState) -> tuple[str, str]:
    """The slot the bootloader boots from ``state``, and what is wrong with it (or '')."""
    if state.trial is not None and state.tries_left > 0:
        return state.trial, ""
    slot = state.default
    mark = state.marks.get(slot)
    return slot, "" if mark == "good" else f"the default slot is marked {mark!r}, not good"


def check_boot(device: SimDevice) -> tuple[str, list[str]]:
    """The slot the bootloader will pick, and what is wrong: it must hold a complete
    image of a published release, and be marked good or on trial with tries left."""
    config = load_device(device.config)
    try:
        state = open_backend(config.bootloader, config.boot_env).read()
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return "", [f"the boot env cannot be read: {exc}"]
    slot, why = pick(state)
    if why:
        return slot, [f"the bootloader would boot slot {slot}: {why} ({state})"]
    if version_in(device, slot) is None:
        return slot, [f"the bootloader would boot slot {slot}, which holds no complete image "
                      f"({state})"]
    return slot, []


def version_in(device: SimDevice, slot: str) -> str | None:
    """The release the slot's identity names, if the slot holds that whole image."""
    path = load_device(device.config).slot_paths[slot]  # type: ignore[index]
    identity, _ = read_identity(path)
    if identity is None:
        return None
    image = device.dir / "channel" / f"kruxos-{identity.version}.img"
    if not image.exists():
        return None
    with open(path, "rb") as f:
        return identity.version if _same_prefix(f, image) else None


def check_state(device: SimDevice) -> list[str]:
    """The state file parses, or its copy does (the store restores from it)."""
    data = device.dir / "data"
    problems = []
    for name in ("state.json", "state.copy.json"):
        try:
            json.loads((data / name).read_bytes())
            return []
        except FileNotFoundError:
            problems.append(f"{name} is missing")
        except ValueError as exc:
            problems.append(f"{name} does not parse ({exc})")
    if problems == ["state.json is missing", "state.copy.json is missing"]:
        return []  # never written yet: the first pass writes none
    return [f"no state file parses: {'; '.join(problems)}"]


def check_resume(device: SimDevice) -> list[str]:
    """A staging resumes from a block whose predecessors are all in the slot."""
    path = device.dir / "data" / "staging.resume.json"
    try:
        resume = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return []  # no resume point: a staging starts again from block 0
    image = device.dir / "channel" / f"kruxos-{resume['version']}.img"
    length = resume["next_block"] * resume["block_size"]
    # the installer names the slot by its real path (a symlink's target, e.g. a mount)
    slots = {os.path.realpath(p): p for p in load_device(device.config).slot_paths.values()}
    if resume["slot"] not in slots:
        return [f"staging.resume.json names {resume['slot']!r}, which is no slot"]
    with open(slots[resume["slot"]], "rb") as slot, open(image, "rb") as img:
        if slot.read(length) != img.read(length):
            return [f"staging.resume.json says resume at block {resume['next_block']} of "
                    f"{resume['version']} in slot {resume['slot']}, but the blocks before "
                    "it are not all in the slot"]
    return []


def check_audit(device: SimDevice) -> list[str]:
    """``kruxos audit verify`` passes."""
    verify = device.cli("audit", "verify", check=False)
    if verify.returncode != 0:
        return [f"audit verify: {verify.stdout}{verify.stderr}".strip()]
    return []


def _same_prefix(f: Any, image: Path) -> bool:
    with open(image, "rb") as img:
        while chunk := img.read(1 << 20):
            if f.read(len(chunk)) != chunk:
                return False
    return True
