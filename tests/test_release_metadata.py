"""Signed channel metadata: which documents a device believes, and the reason it gives."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ReleaseError
from reconciler.release.channel import add_release, init_channel, sign_channel
from reconciler.release.keys import (
    generate_keypair,
    keyid_of,
    load_public_key,
    load_revoked,
    load_signing_key,
    load_trusted_keys,
)
from reconciler.release.metadata import ChannelMetadata, canonical_json, semver_key, verify_metadata
from reconciler.sim.image import build_sim_image

SIGNED_AT = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
BLOCK = 64 * 1024
Keys = dict[str, tuple[Path, Path]]


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: generate_keypair(tmp_path / "keys", name) for name in ("old", "new", "other")}


@pytest.fixture()
def channel(tmp_path: Path) -> Path:
    chan = tmp_path / "channel"
    init_channel(chan, "stable")
    for version in ("1.0.0", "1.2.0", "1.10.0-rc.1"):
        image = build_sim_image(tmp_path / f"{version}.img", version, size=200_000)
        add_release(chan, image, version, [f"release {version}"], block_size=BLOCK)
    return chan


def _sign(channel: Path, *key_files: Path, days: int = 30) -> bytes:
    sign_channel(channel, list(key_files), timedelta(days=days), now=SIGNED_AT)
    return (channel / "metadata.json").read_bytes()


def _verify(raw: bytes, *pubs: Path, revoked: tuple[str | Path, ...] = (),
            now: datetime = SIGNED_AT + timedelta(days=1), min_serial: int | None = None,
            trusted_time: datetime | None = None) -> ChannelMetadata:
    return verify_metadata(raw, load_trusted_keys(pubs), load_revoked(revoked), now,
                           min_serial, trusted_time)


def test_generated_private_key_is_readable_only_by_its_owner(keys: Keys) -> None:
    key_file, pub_file = keys["old"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(keyid_of(load_public_key(pub_file))) == 16


def test_keygen_refuses_to_overwrite_an_existing_key(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="already exists"):
        generate_keypair(tmp_path / "keys", "old")


def test_signed_metadata_round_trips_with_every_release(channel: Path, keys: Keys) -> None:
    meta = _verify(_sign(channel, keys["old"][0]), keys["old"][1])
    assert meta.channel == "stable" and meta.serial == 1
    assert [r.version for r in meta.releases] == ["1.0.0", "1.2.0", "1.10.0-rc.1"]
    assert meta.find("1.2.0") is not None and meta.find("9.9.9") is None
    rel = meta.find("1.0.0")
    assert rel is not None and rel.size == 200_000 and len(rel.blocks) == 4


def test_latest_is_the_highest_semver_and_a_prerelease_ranks_below_its_release(
    channel: Path, keys: Keys
) -> None:
    meta = _verify(_sign(channel, keys["old"][0]), keys["old"][1])
    latest = meta.latest()
    assert latest is not None and latest.version == "1.10.0-rc.1"
    assert semver_key("1.10.0-rc.1") < semver_key("1.10.0")
    assert semver_key("1.2.0") < semver_key("1.10.0-rc.1")
    assert semver_key("1.0.0-alpha") < semver_key("1.0.0-alpha.1") < semver_key("1.0.0-beta")


def test_each_signing_bumps_the_serial(channel: Path, keys: Keys) -> None:
    _sign(channel, keys["old"][0])
    assert _verify(_sign(channel, keys["old"][0]), keys["old"][1]).serial == 2


def test_dual_signed_metadata_is_accepted_by_a_device_trusting_either_key(
    channel: Path, keys: Keys
) -> None:
    raw = _sign(channel, keys["old"][0], keys["new"][0])
    assert _verify(raw, keys["old"][1]).signed_by == (keyid_of(load_public_key(keys["old"][1])),)
    assert _verify(raw, keys["new"][1]).signed_by == (keyid_of(load_public_key(keys["new"][1])),)


def test_metadata_signed_by_an_unknown_key_is_refused(channel: Path, keys: Keys) -> None:
    with pytest.raises(ReleaseError, match="unknown"):
        _verify(_sign(channel, keys["other"][0]), keys["old"][1])


def test_a_revoked_key_is_refused_even_when_also_trusted(channel: Path, keys: Keys) -> None:
    raw = _sign(channel, keys["old"][0])
    with pytest.raises(ReleaseError, match="revoked"):
        _verify(raw, keys["old"][1], revoked=(keys["old"][1],))
    keyid = keyid_of(load_public_key(keys["old"][1]))
    with pytest.raises(ReleaseError, match=f"key {keyid} is revoked"):
        _verify(raw, keys["old"][1], revoked=(keyid,))


def test_dual_signed_metadata_stays_valid_when_one_of_its_keys_is_revoked(
    channel: Path, keys: Keys
) -> None:
    raw = _sign(channel, keys["old"][0], keys["new"][0])
    meta = _verify(raw, keys["old"][1], keys["new"][1], revoked=(keys["old"][1],))
    assert meta.signed_by == (keyid_of(load_public_key(keys["new"][1])),)


def test_a_changed_byte_of_the_signed_content_is_a_bad_signature(channel: Path, keys: Keys) -> None:
    doc = json.loads(_sign(channel, keys["old"][0]))
    doc["signed"]["releases"][0]["changes"] = ["something else"]
    with pytest.raises(ReleaseError, match="bad signature"):
        _verify(json.dumps(doc).encode(), keys["old"][1])


def test_a_signature_that_is_not_base64_is_a_bad_signature(channel: Path, keys: Keys) -> None:
    doc = json.loads(_sign(channel, keys["old"][0]))
    doc["signatures"][0]["sig"] = "not base64!"
    with pytest.raises(ReleaseError, match="bad signature"):
        _verify(json.dumps(doc).encode(), keys["old"][1])


def test_a_signature_by_another_key_under_a_trusted_keyid_is_a_bad_signature(
    channel: Path, keys: Keys
) -> None:
    doc = json.loads(_sign(channel, keys["other"][0]))
    doc["signatures"][0]["keyid"] = keyid_of(load_public_key(keys["old"][1]))
    with pytest.raises(ReleaseError, match="bad signature"):
        _verify(json.dumps(doc).encode(), keys["old"][1])


def test_unsigned_metadata_is_refused_as_missing_a_signature(channel: Path, keys: Keys) -> None:
    doc = json.loads(_sign(channel, keys["old"][0]))
    doc["signatures"] = []
    with pytest.raises(ReleaseError, match="missing signature"):
        _verify(json.dumps(doc).encode(), keys["old"][1])


def test_expired_metadata_is_refused(channel: Path, keys: Keys) -> None:
    raw = _sign(channel, keys["old"][0], days=1)
    with pytest.raises(ReleaseError, match="expired at 2030-05-02T12:00:00Z"):
        _verify(raw, keys["old"][1], now=SIGNED_AT + timedelta(days=2))


def test_lower_serial_than_the_last_accepted_is_refused_as_rollback(
    channel: Path, keys: Keys
) -> None:
    raw = _sign(channel, keys["old"][0])
    assert _verify(raw, keys["old"][1], min_serial=1).serial == 1
    with pytest.raises(ReleaseError, match="serial 1 is lower than 2.*rollback"):
        _verify(raw, keys["old"][1], min_serial=2)


def test_a_clock_behind_the_trusted_time_is_not_believed_and_fresh_metadata_passes(
    channel: Path, keys: Keys
) -> None:
    raw = _sign(channel, keys["old"][0])
    meta = _verify(raw, keys["old"][1], now=datetime(1970, 1, 1, tzinfo=UTC),
                   trusted_time=SIGNED_AT)
    assert "device clock (1970-01-01T00:00:00Z) is behind the last trusted time " \
        "(2030-05-01T12:00:00Z)" in meta.clock_note


def test_a_clock_behind_the_trusted_time_cannot_revive_expired_metadata(
    channel: Path, keys: Keys
) -> None:
    raw = _sign(channel, keys["old"][0], days=1)
    with pytest.raises(ReleaseError, match=r"expired .*device clock \(1970-01-01T00:00:00Z\) "
                                           r"is behind the last trusted time"):
        _verify(raw, keys["old"][1], now=datetime(1970, 1, 1, tzinfo=UTC),
                trusted_time=SIGNED_AT + timedelta(days=5))


def test_a_signed_image_name_with_a_path_is_refused(
    channel: Path, keys: Keys, tmp_path: Path
) -> None:
    draft = json.loads((channel / "draft.json").read_text())
    draft["releases"][0]["image"] = "../../etc/passwd"
    doc: dict[str, Any] = {"signed": {"format": 1, "channel": "stable", "serial": 1,
                      "issued": "2030-05-01T12:00:00Z", "expires": "2030-06-01T12:00:00Z",
                      "releases": draft["releases"]}}
    key = load_signing_key(keys["old"][0])
    sig = base64.b64encode(key.sign(canonical_json(doc["signed"])).signature).decode()
    doc["signatures"] = [{"keyid": keyid_of(key.verify_key), "sig": sig}]
    with pytest.raises(ReleaseError, match="plain file name"):
        _verify(json.dumps(doc).encode(), keys["old"][1])
