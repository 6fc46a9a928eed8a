"""A phased rollout end to end: a real signed channel, ``kruxos daemon`` (``sim run``).

The channel of a fresh simulated device offers 1.0.0 and 1.0.1. The publisher
gives 1.0.1 a rollout with ``kruxos release rollout`` and signs: its start is
chosen so that this device's place is crossed a few seconds later. The daemon
(its resync set to ten minutes, so only the hold's own time can wake it) stays
on 1.0.0 following ``latest``, saying why; meanwhile ``update check`` and
``spec plan`` say 1.0.1 is held back and when this device is offered it, and a
spec naming 1.0.1 exactly would stage it at once. The daemon installs 1.0.1
once the rollout reaches it, not before.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from reconciler.config import load_device, rollout_id
from reconciler.release.rollout import wariness_of
from tests.device import SimDevice

#: Seconds from signing until the rollout reaches the device: time for the checks below.
LEAD = 15
DURATION = timedelta(hours=1)


def _stages(device: SimDevice) -> list[dict[str, object]]:
    return [r for r in device.audit_file_records()
            if r["kind"] == "decision" and r["action"] == "stage"]


def test_a_held_back_release_is_offered_once_its_rollout_reaches_the_device(
    make_device: object,
) -> None:
    device: SimDevice = make_device(resync="10m")  # type: ignore[operator]
    ident = rollout_id(load_device(device.config))
    assert ident is not None and ident.startswith("sim-")
    place = wariness_of(ident)
    # Start the ramp so that 0 % + 100 % * (t - start) / 1h passes the place at now + LEAD.
    offer = datetime.now(UTC) + timedelta(seconds=LEAD)
    start = offer - DURATION * float(place)
    start = start.replace(microsecond=0) + timedelta(seconds=1)  # whole seconds, not earlier
    channel = str(device.dir / "channel")
    changed = device.cli("release", "rollout", channel, "1.0.1", "--start",
                         start.strftime("%Y-%m-%dT%H:%M:%SZ"), "--percentage", "0",
                         "--duration", "1h")
    assert "rollout: from 0 % at" in changed.stdout
    device.cli("release", "sign", channel, "--key", str(device.dir / "keys" / "release.key"))
    signed = json.loads((device.dir / "channel" / "metadata.json").read_text())["signed"]
    assert signed["format"] == 2
    assert signed["releases"][1]["requires"] == ["phased-rollout"]
    device.edit_spec(version="latest")
    device.start()  # it serves the channel too

    check = device.cli("update", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr  # nothing offered yet
    lines = check.stdout.splitlines()
    assert lines[:2] == ["Current version: 1.0.0", "Latest version: 1.0.0"], lines
    held = [line for line in lines if line.startswith("Held back: 1.0.1 is being rolled out: "
                                                      "this device is offered it at ")]
    assert held and f"(its place {math.floor(place * 100)} %)" in held[0], lines
    doc = json.loads(device.cli("update", "check", "--json", check=False).stdout)
    assert doc["latest"] == "1.0.0" and doc["update_available"] is False
    when = datetime.fromisoformat(doc["held"][0]["offered_at"])
    assert start < when <= offer + timedelta(seconds=1)

    status = device.status_json()["channel"]
    assert status["latest"] == "1.0.0" and list(status["held"]) == ["1.0.1"]
    assert status["held_until"] == when.isoformat()

    plan = json.loads(device.cli("spec", "plan", "--json", check=False).stdout)
    assert plan["action"]["kind"] == "nothing"
    assert "1.0.1 is being rolled out: this device is offered it at" in \
        plan["action"]["reason"]
    exact = device.dir / "exact.yaml"
    exact.write_text(device.spec.read_text().replace("version: latest", "version: 1.0.1"))
    chosen = json.loads(device.cli("spec", "plan", str(exact), "--json", check=False).stdout)
    assert chosen["action"]["kind"] == "stage", chosen  # a person's choice is not held back
    assert "rolled out" not in chosen["action"]["reason"]

    device.wait_status("1.0.1", "CONFIRMED", timeout=LEAD + 40)
    stages = _stages(device)
    assert stages and all("1.0.1" in str(r["reason"]) for r in stages)
    first = datetime.fromisoformat(str(stages[0]["time"]).replace("Z", "+00:00"))
    # Not before the rollout reached the device (audit times are whole seconds).
    assert first >= when.replace(microsecond=0), (first, when)
    waits = [r for r in device.audit_file_records() if r["kind"] == "decision"
             and "1.0.1 is being rolled out" in str(r["reason"])]
    assert waits, "the daemon said why it stayed on 1.0.0"
