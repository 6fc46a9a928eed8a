"""``kruxos slot``: what each slot's own bytes say, checked against themselves (read only).

    kruxos slot verify [A|B]

Reads the slot identity in the last 4 KiB of each slot (or the one named)
and re-hashes the image bytes it names, from the device, against the SHA-256
the channel signed. Exit 0 when every slot is verified or claims nothing (or
holds an old-layout header, which has nothing to check against); exit 1 when
a slot's bytes do not match its identity or the identity cannot be read.
``--json``: one object, ``ok`` the verdict, each slot's ``state``, ``message``
and ``identity`` (``specs/cli/slot-verify.schema.json``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import cast

import click

from reconciler.config import Device
from reconciler.observed import SLOTS, SlotName
from reconciler.release.identity import SlotCheck, verify_slot

_STATES = {"ok": "verified", "mismatch": "MISMATCH", "empty": "no release",
           "unverifiable": "old layout", "problem": "PROBLEM"}


def _device(ctx: click.Context) -> Device:
    from reconciler.cli.main import device_of

    return device_of(ctx)


def _line(slot: SlotName, device: Device, check: SlotCheck) -> str:
    label = f"slot {slot} ({device.slot_device(slot)})"
    found = check.identity
    origin = ""
    if found is not None and not found.legacy:
        origin = f" [channel {found.channel}, serial {found.serial}, written {found.written}]"
    return f"{label}: {_STATES[check.state]}: {check.message}{origin}"


@click.group("slot")
def slot_group() -> None:
    """The slots' own identity records."""


@slot_group.command("verify")
@click.argument("slot", required=False, type=click.Choice(["A", "B"]))
@click.option("--json", "as_json", is_flag=True, help="Each slot's verdict in one JSON object.")
@click.pass_context
def verify(ctx: click.Context, slot: str | None, as_json: bool) -> None:
    """Re-hash each slot's image against the SHA-256 its identity names."""
    device = _device(ctx)
    failed = False
    names: tuple[SlotName, ...] = SLOTS if slot is None else (cast(SlotName, slot),)
    found: dict[str, dict[str, object]] = {}
    for name in names:
        check = verify_slot(device.slot_paths[name])
        if not as_json:
            click.echo(_line(name, device, check))
        found[name] = {"device": device.slot_device(name), "state": check.state,
                       "message": check.message,
                       "identity": None if check.identity is None else asdict(check.identity)}
        failed = failed or check.failed
    if as_json:
        click.echo(json.dumps({"ok": not failed, "slots": found}, ensure_ascii=False))
    sys.exit(1 if failed else 0)
