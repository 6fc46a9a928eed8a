"""A release requiring a feature the device does not implement, end to end (``kruxos sim run``).

The channel of a fresh simulated device offers 1.0.0 and 1.0.1; the publisher
adds 1.1.0 with ``kruxos release add --requires block-index-64k`` and signs
(the metadata becomes format 2). Following ``latest``, the device installs
1.0.1, the newest release it can install, and says everywhere why it skipped
1.1.0; a pin to 1.1.0 is refused with the reason, and nothing stages it.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.sim.image import build_sim_image
from tests.device import SimDevice
from tests.waiting import holds_for

WHY = "requires block-index-64k, which this device does not implement"


def _publish_requiring(device: SimDevice, version: str, feature: str) -> None:
    """Publish ``version`` with the release tools, requiring ``feature``, signed."""
    image = device.dir.parent / f"{device.dir.name}-kruxos-{version}.img"
    build_sim_image(image, version, size=256 << 10)
    channel = str(device.dir / "channel")
    added = device.cli("release", "add", channel, str(image), "--version", version,
                       "--requires", feature)
    assert f"requires {feature}" in added.stdout
    device.cli("release", "sign", channel, "--key", str(device.dir / "keys" / "release.key"))
    signed = json.loads((device.dir / "channel" / "metadata.json").read_text())["signed"]
    assert signed["format"] == 2


def _release_refusals(device: SimDevice) -> list[dict[str, Any]]:
    return [r for r in device.audit_file_records() if r["action"] == "release-refused"]


def _stages_of(device: SimDevice, version: str) -> list[dict[str, Any]]:
    return [r for r in device.audit_file_records()
            if r["kind"] == "decision" and r["action"] == "stage"
            and f" {version} into slot " in r["reason"]]


def test_latest_installs_the_newest_release_the_device_can_and_says_what_it_skipped(
    device: SimDevice,
) -> None:
    _publish_requiring(device, "1.1.0", "block-index-64k")
    device.edit_spec(version="latest")
    device.start()
    device.wait_status("1.0.1", "CONFIRMED", timeout=90)

    refusals = _release_refusals(device)
    assert [r["reason"] for r in refusals] == [
        f"releases this device cannot install: 1.1.0 {WHY}"]
    assert refusals[0]["details"]["releases"] == [
        {"version": "1.1.0", "requires": ["block-index-64k"], "missing": ["block-index-64k"]}]
    stage = _stages_of(device, "1.0.1")
    assert stage and stage[0]["reason"].endswith(f"; skipped 1.1.0 ({WHY})")

    lines = device.status_lines()
    assert f"Not installable: 1.1.0 ({WHY})" in lines
    assert any(line.startswith("Next: slot B (sda3) runs 1.0.1, the latest release on the "
                               f"channel; skipped 1.1.0 ({WHY})") for line in lines), lines
    status = device.status_json()
    assert status["channel"]["latest"] == "1.0.1"
    assert status["channel"]["refused"] == {"1.1.0": WHY}

    check = device.cli("update", "check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr  # up to date: nothing to install
    assert check.stdout.splitlines() == [
        "Current version: 1.0.1", "Latest version: 1.0.1", f"Skipped 1.1.0: it {WHY}.",
        "KruxOS is up to date."]
    as_json = json.loads(device.cli("update", "check", "--json", check=False).stdout)
    assert as_json["skipped"] == [{"version": "1.1.0", "requires": ["block-index-64k"],
                                   "reason": WHY}]

    apply = device.cli("update", "apply", "1.1.0", "--json", check=False)
    assert apply.returncode == 1
    assert json.loads(apply.stdout)["error"] == {"code": "refused", "message": (
        f"update refused: 1.1.0 cannot be installed on this device: it {WHY}")}
    assert _stages_of(device, "1.1.0") == []
    assert len(_release_refusals(device)) == 1  # status, check and apply record nothing


def test_a_spec_pinned_to_a_release_the_device_cannot_install_is_refused_with_the_reason(
    device: SimDevice,
) -> None:
    _publish_requiring(device, "1.1.0", "block-index-64k")
    device.start()
    device.wait_for(lambda: _release_refusals(device), 30, "the release-refused record")
    device.edit_spec(version="1.1.0")
    expected = f"1.1.0 cannot be installed on this device: it {WHY} (spec wants 1.1.0)"
    device.wait_for(lambda: any(r["reason"] == expected for r in device.decisions("blocked")),
                    30, "the blocked decision naming the feature")
    holds_for(lambda: not _stages_of(device, "1.1.0"), 2, "no stage of 1.1.0")

    plan = device.cli("spec", "plan", check=False)
    assert f"plan: blocked: {expected}" in plan.stdout
    status = device.status_json()
    assert status["slots"][status["booted"]]["version"] == "1.0.0"
    assert status["next"] == {"action": "blocked", "reason": expected}
    assert len(_release_refusals(device)) == 1  # the spec edit refetched the same channel
    assert len(device.boots()) == 1
    assert device.cli("audit", "verify").returncode == 0
