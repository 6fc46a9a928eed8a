"""The channel pin and the secrets, end to end through ``kruxos sim run``.

Real processes: the simulated device serves its channel over loopback (behind
HTTP basic auth for the secrets test) and runs ``kruxos daemon``; the tests
read the device through the CLI and its files.
"""

from __future__ import annotations

import base64
import json
import re
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.device import SimDevice
from tests.waiting import holds_for

PASSWORD = "Pl4nted-Secret-e2e-7Qx"
USER = "device-17"
BETA_REFUSAL = "channel metadata: is for channel 'beta', this device follows 'stable'"


def _sign_as(device: SimDevice, name: str) -> None:
    """Sign the device's channel under the channel name ``name`` with the trusted key."""
    draft_path = device.dir / "channel" / "draft.json"
    draft = json.loads(draft_path.read_text())
    draft["channel"] = name
    draft_path.write_text(json.dumps(draft))
    device.cli("release", "sign", str(device.dir / "channel"), "--key",
               str(device.dir / "keys" / "release.key"))


def _refusals(device: SimDevice) -> list[dict[str, Any]]:
    return [r for r in device.audit_file_records() if r["action"] == "channel-refused"]


def test_beta_metadata_at_the_stable_url_is_refused_once_and_nothing_is_staged(
    device: SimDevice,
) -> None:
    device.publish("2.0.0-beta.1")
    _sign_as(device, "beta")  # what a mistaken or hostile server could serve at stable's URL
    device.start()
    device.wait_for(lambda: _refusals(device), 30, "the channel-refused record")
    device.edit_spec(version="latest")  # a new revision: the channel is fetched again

    def waiting_on_the_refusal() -> bool:
        waits = device.decisions("wait")
        return bool(waits) and waits[-1]["reason"] == (
            f"cannot resolve 'latest': channel refused: {BETA_REFUSAL}")
    device.wait_for(waiting_on_the_refusal, 30, "a wait naming the channel pin")
    holds_for(lambda: not device.decisions("stage"), 2, "no stage of the beta release")

    refusals = _refusals(device)
    assert [r["reason"] for r in refusals] == [BETA_REFUSAL]  # same file: recorded once
    assert len(refusals[0]["details"]["metadata_sha256"]) == 64
    status = device.status_json()
    assert status["slots"][status["booted"]]["version"] == "1.0.0"
    assert status["boot_status"] == "CONFIRMED"
    assert status["channel"]["error"] == f"channel refused: {BETA_REFUSAL}"
    assert len(device.boots()) == 1


def _protect_channel(device: SimDevice) -> Path:
    """Credentials in the device config (0600 file); the same pair opens the sim channel."""
    secret = device.dir / "channel.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    served = device.dir.parent / "served-auth"
    served.write_text(f"{USER}:{PASSWORD}\n")
    with device.config.open("a") as f:
        f.write(f"channel:\n  name: stable\n  credentials:\n    url: http://127.0.0.1:8080/\n"
                f"    user: {USER}\n    passwordFile: channel.password\n")
    return served


def _every_output(device: SimDevice) -> dict[str, str]:
    """Everything the product wrote or printed about this device."""
    data = device.dir / "data"
    # The last good spec is the spec file's own bytes, not an output: only root reads it.
    kept = data / "spec.last-good.yaml"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    outputs = {str(p): p.read_text(errors="replace")
               for p in sorted(data.rglob("*")) if p.is_file() and p != kept}
    outputs["daemon.log"] = (device.dir / "run" / "daemon.log").read_text(errors="replace")
    outputs["console"] = device.console_text()
    for args in (("update", "status"), ("update", "status", "--json"),
                 ("audit", "list"), ("audit", "list", "--json"), ("audit", "verify"),
                 ("spec", "plan"), ("update", "check"), ("update", "check", "--json")):
        result = device.cli(*args, check=False)
        outputs[" ".join(args)] = result.stdout + result.stderr
    masked = [r["seq"] for r in device.audit_records() if "***" in json.dumps(r)]
    assert masked, "no record shows a masked secret"
    for seq in masked[:2] + masked[-1:]:  # records whose text held the password
        outputs[f"audit show {seq}"] = device.cli("audit", "show", str(seq)).stdout
    return outputs


def test_a_planted_password_appears_in_no_output_of_a_full_flow_and_a_failing_fetch(
    device: SimDevice,
) -> None:
    served = _protect_channel(device)
    device.start("--channel-auth", str(served))
    port = json.loads((device.dir / "run" / "ports.json").read_text())["127.0.0.1:8080"]
    with pytest.raises(urllib.error.HTTPError, match="401"):  # the channel needs credentials
        urllib.request.urlopen(f"http://{port}/metadata.json", timeout=30)
    # The old way, credentials in the spec's URL, is refused: they belong in the device
    # config. The refusal names the URL with its password masked.
    good = device.spec.read_text()
    device.edit_spec(text=good.replace(
        "url: http://127.0.0.1:8080/", f"url: http://{USER}:{PASSWORD}@127.0.0.1:8080/"))
    device.wait_for(lambda: [r for r in device.audit_file_records()
                             if r["action"] == "spec-rejected"
                             and "carries credentials" in r["reason"]],
                    30, "the spec with credentials in its URL refused")
    device.edit_spec(text=good)
    device.edit_spec(version="1.0.1")
    device.wait_status("1.0.1", "CONFIRMED", timeout=60)

    # A failing fetch whose error text carries the URL: nothing listens on port 9.
    device.edit_spec(text=re.sub(r"url: \S+", "url: http://127.0.0.1:9/",
                                 device.spec.read_text().replace("1.0.1", "1.0.2")))
    device.wait_for(lambda: any("127.0.0.1:9" in r["reason"]
                                for r in device.decisions("wait")),
                    30, "a wait naming the unreachable channel")
    check = device.cli("update", "check", check=False)
    assert check.returncode != 0 and "127.0.0.1:9" in check.stderr

    outputs = _every_output(device)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    leaks = [name for name, text in outputs.items() if PASSWORD in text or basic in text]
    assert leaks == [], f"the password appears in: {leaks}"
    audit = "".join(t for n, t in outputs.items() if "/audit/" in n)
    assert f"http://{USER}:***@127.0.0.1:8080/" in audit  # the refused URL, masked
    assert device.cli("audit", "verify").returncode == 0

