"""Key rotation through images: the trust root is the booted image's keys.

A release built for a new publisher key is signed with the old key and carries
the new key in its image; once that slot boots, its keys are the trust root. A
trial that is rolled back boots the old image, which trusts the old key again.
A device never learns a key from channel metadata.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.release.keys import generate_keypair, keyid_of, load_public_key
from tests.device import SimDevice


def _refused_since(device: SimDevice, seq: int) -> list[dict[str, object]]:
    return [r for r in device.audit_file_records()
            if r["action"] == "channel-refused" and int(r["seq"]) > seq]


def _last_seq(device: SimDevice) -> int:
    return max(int(r["seq"]) for r in device.audit_file_records())


def _publish(device: SimDevice, version: str, *, image: list[Path], sign: list[Path],
             behaviour: str = "healthy") -> None:
    args = ["sim", "publish", str(device.dir), version, "--behaviour", behaviour,
            "--size-mb", "1"]
    args += [a for key in image for a in ("--image-key", str(key))]
    args += [a for key in sign for a in ("--sign-key", str(key))]
    device.cli(*args)


def test_a_rotation_arrives_with_an_image_and_leaves_with_a_rollback(
        device: SimDevice) -> None:
    keys = device.dir / "keys"
    old_key = keys / "release.key"
    generate_keypair(keys, "next")
    new_pub, new_key = keys / "next.pub", keys / "next.key"
    new_id = keyid_of(load_public_key(new_pub))
    device.spec.write_text(device.spec.read_text().replace("timeout: 8s", "timeout: 4s"))
    device.start()
    device.wait_status("1.0.0", "CONFIRMED")

    # 1. The first image with the new key fails its trial: rolled back to 1.0.0,
    #    which trusts only the old key again.
    _publish(device, "1.1.0", image=[new_pub], sign=[old_key], behaviour="gateway-fails")
    device.edit_spec(version="1.1.0")
    device.wait_status("1.0.0", "CONFIRMED (rolled back from 1.1.0)", timeout=90)
    root_keys = device.dir / "run" / "root" / "etc" / "kruxos" / "keys"
    assert sorted(p.name for p in root_keys.iterdir()) == ["release.pub"]
    mark = _last_seq(device)
    _publish(device, "1.1.1", image=[new_pub], sign=[new_key])  # signed by the new key only
    device.edit_spec(version="1.1.1")
    refused = device.wait_for(lambda: _refused_since(device, mark), 30,
                              "the refusal of metadata signed by a key 1.0.0 does not carry")
    assert "signature" in str(refused[0]["reason"]), refused
    assert device.status_json()["slots"]["A"]["version"] == "1.0.0"
    assert device.status_json()["booted"] == "A"

    # 2. Signed by both keys, the release carrying the new key boots and is confirmed:
    #    from then on the new key is the trust root, the old one is not.
    _publish(device, "1.1.2", image=[new_pub], sign=[old_key, new_key])
    device.edit_spec(version="1.1.2")
    device.wait_status("1.1.2", "CONFIRMED", timeout=90)
    assert sorted(p.name for p in root_keys.iterdir()) == ["next.pub"]
    mark = _last_seq(device)
    _publish(device, "1.1.3", image=[new_pub], sign=[old_key])  # the old key alone
    device.edit_spec(version="1.1.3")
    refused = device.wait_for(lambda: _refused_since(device, mark), 30,
                              "the refusal of metadata signed by the old key only")
    assert "signature" in str(refused[0]["reason"]), refused
    _publish(device, "1.1.4", image=[new_pub], sign=[new_key])
    device.edit_spec(version="1.1.4")
    device.wait_status("1.1.4", "CONFIRMED", timeout=90)
    assert new_id in {s["keyid"] for s in _signatures(device)}


def _signatures(device: SimDevice) -> list[dict[str, str]]:
    import json

    doc = json.loads((device.dir / "channel" / "metadata.json").read_text())
    found: list[dict[str, str]] = doc["signatures"]
    return found
