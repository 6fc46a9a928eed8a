"""Service artifacts in the signed channel: the format, its bounds, the publisher's tools.

A release may list service artifacts beside its root image (name, version,
file, size, SHA-256, block hashes); such a release requires the feature
``service-artifacts``, which this version does not implement yet, so a device
parses the list and still refuses to install the release.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nacl.signing import SigningKey

from reconciler.cli.release import release_group
from reconciler.errors import ReleaseError
from reconciler.release import features
from reconciler.release.channel import (
    ServiceSource,
    add_release,
    init_channel,
    service_file_name,
    sign_channel,
    verify_channel,
)
from reconciler.release.keys import keyid_of, load_public_key
from reconciler.release.metadata import (
    MAX_SERVICES,
    SERVICE_DATA_FEATURE,
    SERVICE_FEATURE,
    ChannelMetadata,
    canonical_json,
    verify_metadata,
)
from reconciler.sim.image import build_sim_image

KEY = SigningKey(bytes(range(32)))
KEYID = keyid_of(KEY.verify_key)
NOW = datetime(2030, 5, 10, tzinfo=UTC)
BLOCK = 1024


def _service(name: Any = "gateway", **changes: Any) -> dict[str, Any]:
    service = {"name": name, "version": "1.0.2", "file": f"{name}-1.0.2.svc",
               "size": 3 * BLOCK - 5, "sha256": "d" * 64, "block_size": BLOCK,
               "blocks": ["e" * 64, "f" * 64, "0" * 64]}
    service.update(changes)
    return service


def _release(version: str = "1.0.2", **changes: Any) -> dict[str, Any]:
    release = {"version": version, "date": "2030-05-01", "changes": ["first"],
               "image": f"kruxos-{version}.img", "size": 2 * BLOCK, "sha256": "a" * 64,
               "block_size": BLOCK, "blocks": ["b" * 64, "c" * 64],
               "requires": [SERVICE_FEATURE], "services": [_service()]}
    release.update(changes)
    return release


def _document(*releases: dict[str, Any]) -> bytes:
    signed = {"format": 2, "channel": "stable", "serial": 5, "issued": "2030-05-01T12:00:00Z",
              "expires": "2030-05-31T12:00:00Z", "releases": list(releases)}
    sig = base64.b64encode(KEY.sign(canonical_json(signed)).signature).decode()
    return json.dumps({"signed": signed, "signatures": [{"keyid": KEYID, "sig": sig}]}).encode()


def _verify(raw: bytes) -> ChannelMetadata:
    return verify_metadata(raw, {KEYID: KEY.verify_key}, frozenset(), NOW, None, None)


def _refusal(raw: bytes) -> str:
    with pytest.raises(ReleaseError) as caught:
        _verify(raw)
    return str(caught.value)


# ---- the format -----------------------------------------------------------------------------

def test_a_release_lists_its_service_artifacts_and_writes_them_back_unchanged() -> None:
    release = _release(services=[_service("gateway"), _service("db", file="db-1.0.2.svc")])
    parsed = _verify(_document(release)).releases[0]
    assert [(s.name, s.version, s.file, s.size) for s in parsed.services] == [
        ("gateway", "1.0.2", "gateway-1.0.2.svc", 3 * BLOCK - 5),
        ("db", "1.0.2", "db-1.0.2.svc", 3 * BLOCK - 5)]
    assert parsed.services[0].block_range(2) == (2 * BLOCK, 3 * BLOCK - 5)
    assert parsed.to_json() == release


def test_a_release_without_services_writes_no_services_field() -> None:
    release = _release(requires=[])
    del release["services"]
    parsed = _verify(_document(release)).releases[0]
    assert parsed.services == () and "services" not in parsed.to_json()


def test_this_device_implements_service_artifacts_and_an_older_one_refuses_such_a_release(
        ) -> None:
    assert SERVICE_FEATURE in features.FEATURES
    plain = _release("1.0.1", requires=[])
    del plain["services"]
    meta = _verify(_document(plain, _release("1.0.2")))
    newer = meta.find("1.0.2")
    assert newer is not None and newer.services
    assert features.why_not(newer) is None
    latest = features.newest_installable(meta)
    assert latest is not None and latest.version == "1.0.2"
    older = frozenset[str]()  # a device from before service updates
    assert features.why_not(newer, older) == ("requires service-artifacts, which this device "
                                              "does not implement")
    assert [(r.version, why) for r, why in features.skipped(meta, older)] == [
        ("1.0.2", "requires service-artifacts, which this device does not implement")]


def test_services_without_requiring_the_feature_are_refused_so_no_device_ignores_them() -> None:
    message = _refusal(_document(_release(requires=[])))
    assert message == ("channel metadata: releases[0].services: a release with service "
                       "artifacts must require 'service-artifacts' (devices that cannot update "
                       "services skip it)")


# ---- what a service says of its data --------------------------------------------------------

def test_a_service_declares_its_data_dir_or_an_irreversible_migration_signed() -> None:
    release = _release(requires=[SERVICE_FEATURE, SERVICE_DATA_FEATURE], services=[
        _service("gateway", data_dir="gateway", migrates_data=True),
        _service("db", file="db-1.0.2.svc", migrates_data=True)])
    parsed = _verify(_document(release)).releases[0]
    gateway, db = parsed.services
    assert (gateway.data_dir, gateway.migrates_data, gateway.irreversible) == \
        ("gateway", True, False)  # a copy can give it back
    assert (db.data_dir, db.migrates_data, db.irreversible) == (None, True, True)
    assert parsed.to_json() == release
    assert "data_dir" not in _verify(_document(_release())).releases[0].services[0].to_json()


def test_data_fields_without_requiring_service_data_are_refused_so_no_device_ignores_them(
        ) -> None:
    message = _refusal(_document(_release(services=[_service(migrates_data=True)])))
    assert message == ("channel metadata: releases[0].services: a release whose services "
                       "declare data_dir or migrates_data must require 'service-data' "
                       "(devices that would ignore them skip it)")
    older = frozenset({SERVICE_FEATURE})  # a device with service updates, no data copies
    meta = _verify(_document(_release(requires=[SERVICE_FEATURE, SERVICE_DATA_FEATURE],
                                      services=[_service(data_dir="gw")])))
    assert features.why_not(meta.releases[0], older) == ("requires service-data, which this "
                                                         "device does not implement")


@pytest.mark.parametrize("field, value", [
    ("data_dir", "/var/lib/gateway"), ("data_dir", "../data"), ("data_dir", "gw/../../x"),
    ("data_dir", ""), ("data_dir", 7), ("data_dir", ".hidden"), ("data_dir", "a/b/c/d/e"),
    ("migrates_data", "yes"), ("migrates_data", 1),
])
def test_a_hostile_data_field_is_refused(field: str, value: Any) -> None:
    release = _release(requires=[SERVICE_FEATURE, SERVICE_DATA_FEATURE],
                       services=[_service(**{field: value})])
    assert f"releases[0].services[0].{field}: " in _refusal(_document(release))


@pytest.mark.parametrize("services, reason", [
    ("gateway", "releases[0].services: expected a list of service artifacts, got 'gateway'"),
    ({"gateway": {}}, "releases[0].services: expected a list of service artifacts, got an "
                      "object of 1 fields"),
    ([_service(f"s{i}", file=f"s{i}.svc") for i in range(MAX_SERVICES + 1)],
     f"releases[0].services: {MAX_SERVICES + 1} services, more than the {MAX_SERVICES} accepted"),
    ([_service(), _service(file="other.svc")], "releases[0].services: a service is listed twice"),
    ([_service(), _service("db", file="gateway-1.0.2.svc")],
     "releases[0].services: two services name the same file"),
    (["gateway"], "releases[0].services[0]: expected an object"),
    ([_service("Gateway")], "releases[0].services[0].name: 'Gateway' is not a service name"),
    ([_service("../etc")], "releases[0].services[0].name: '../etc' is not a service name"),
    ([_service("")], "releases[0].services[0].name: '' is not a service name"),
    ([_service("a-")], "releases[0].services[0].name: 'a-' is not a service name"),
    ([_service("a" * 65)], "releases[0].services[0].name: 'aaaa"),
    ([_service(name=7)], "releases[0].services[0].name: expected a string, got 7"),
    ([_service(version="1.0")], "releases[0].services[0].version '1.0' is not "
                                "major.minor.patch"),
    ([_service(file="../gateway.svc")], "releases[0].services[0].file: '../gateway.svc' must "
                                        "be a plain file name"),
    ([_service(file=".hidden")], "releases[0].services[0].file: '.hidden' must be a plain"),
    ([_service(size=0)], "releases[0].services[0].size: 0 is out of range"),
    ([_service(size=2**63)], "releases[0].services[0].size: 9223372036854775808 is out of range"),
    ([_service(size=True)], "releases[0].services[0].size: expected an integer, got true"),
    ([_service(block_size=(64 << 20) + 1)], "releases[0].services[0].block_size: 67108865 is "
                                            "out of range"),
    ([_service(blocks=["e" * 64])], "releases[0].services[0].blocks: 1 hashes for 3067 bytes "
                                    "in blocks of 1024"),
    ([_service(sha256="D" * 64)], "releases[0].services[0].sha256 and blocks must be lowercase"),
    ([{k: v for k, v in _service().items() if k != "sha256"}],
     "releases[0].services[0].sha256: expected a string, got nothing"),
])
def test_a_hostile_service_list_is_refused_with_a_short_reason(services: Any,
                                                                reason: str) -> None:
    message = _refusal(_document(_release(services=services)))
    assert message.startswith(f"channel metadata: {reason}"), message
    assert len(message) < 400


# ---- the publisher --------------------------------------------------------------------------

@pytest.fixture()
def channel(tmp_path: Path) -> Path:
    init_channel(tmp_path / "channel", "stable")
    return tmp_path / "channel"


def _artifact(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _image(channel: Path, version: str) -> Path:
    return build_sim_image(channel.parent / f"{version}.img", version, size=8 * BLOCK)


def _sign(channel: Path, tmp_path: Path) -> ChannelMetadata:
    key = tmp_path / "release.key"
    if not key.exists():
        CliRunner().invoke(release_group, ["keygen", "--dir", str(tmp_path)])
    document = sign_channel(channel, [key], now=NOW)
    pub = load_public_key(tmp_path / "release.pub")
    return verify_metadata(json.dumps(document).encode(), {keyid_of(pub): pub}, frozenset(),
                           NOW, None, None)


def test_add_copies_each_artifact_hashes_it_and_requires_the_feature(
    channel: Path, tmp_path: Path,
) -> None:
    body = bytes(range(256)) * 10  # 2560 bytes: three blocks of 1 KiB, the last short
    gateway = _artifact(tmp_path, "gw.bin", body)
    release = add_release(channel, _image(channel, "1.0.2"), "1.0.2", ["gateway 1.0.2"],
                          block_size=BLOCK, services=[ServiceSource("gateway", "1.0.2", gateway)])
    assert release.requires == (SERVICE_FEATURE,)
    (svc,) = release.services
    assert svc.file == service_file_name("gateway", "1.0.2") == "gateway-1.0.2.svc"
    assert (channel / svc.file).read_bytes() == body
    assert (svc.size, svc.sha256) == (2560, hashlib.sha256(body).hexdigest())
    assert svc.blocks == tuple(hashlib.sha256(body[i:i + BLOCK]).hexdigest()
                               for i in range(0, 2560, BLOCK))
    assert (channel / svc.file).stat().st_mode & 0o777 == 0o644


def test_signing_a_release_with_services_writes_format_2_and_a_device_parses_them(
    channel: Path, tmp_path: Path,
) -> None:
    add_release(channel, _image(channel, "1.0.1"), "1.0.1", [], block_size=BLOCK)
    gateway = _artifact(tmp_path, "gw.bin", b"gateway 1.0.2\n" * 100)
    add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                services=[ServiceSource("gateway", "1.0.2", gateway)])
    meta = _sign(channel, tmp_path)
    assert meta.format == 2
    release = meta.find("1.0.2")
    assert release is not None and release.requires == (SERVICE_FEATURE,)
    assert release.services[0].sha256 == hashlib.sha256(gateway.read_bytes()).hexdigest()
    report = verify_channel(channel, [tmp_path / "release.pub"], NOW)
    assert report.accepted, report.problems


def test_verify_names_a_service_artifact_whose_bytes_changed(channel: Path,
                                                             tmp_path: Path) -> None:
    gateway = _artifact(tmp_path, "gw.bin", b"g" * 3000)
    add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                services=[ServiceSource("gateway", "1.0.2", gateway)])
    _sign(channel, tmp_path)
    served = channel / "gateway-1.0.2.svc"
    served.write_bytes(b"g" * 1024 + b"X" + b"g" * 1975)
    report = verify_channel(channel, [tmp_path / "release.pub"], NOW)
    assert not report.accepted
    assert report.problems == [f"1.0.2 service gateway: {served} block 1 does not match its "
                               "signed hash"]
    served.write_bytes(b"g" * 2999)
    report = verify_channel(channel, [tmp_path / "release.pub"], NOW)
    assert report.problems == [f"1.0.2 service gateway: {served} is 2999 bytes, signed size "
                               "3000"]


def test_releases_share_an_unchanged_artifact_and_a_changed_one_needs_a_new_version(
    channel: Path, tmp_path: Path,
) -> None:
    gateway = _artifact(tmp_path, "gw.bin", b"gateway 1.0.1\n" * 50)
    first = add_release(channel, _image(channel, "1.0.1"), "1.0.1", [], block_size=BLOCK,
                        services=[ServiceSource("gateway", "1.0.1", gateway)])
    second = add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                         services=[ServiceSource("gateway", "1.0.1", gateway)])
    assert first.services == second.services
    gateway.write_bytes(b"gateway rebuilt\n" * 50)
    with pytest.raises(ReleaseError, match=r"gateway-1.0.1.svc: service gateway 1.0.1 is "
                                           r"already in the channel with other bytes"):
        add_release(channel, _image(channel, "1.0.3"), "1.0.3", [], block_size=BLOCK,
                    services=[ServiceSource("gateway", "1.0.1", gateway)])
    assert (channel / "gateway-1.0.1.svc").read_bytes() == b"gateway 1.0.1\n" * 50
    assert [r["version"] for r in json.loads((channel / "draft.json").read_text())["releases"]
            ] == ["1.0.1", "1.0.2"]


@pytest.mark.parametrize("name, version, reason", [
    ("Gateway", "1.0.2", "--service 'Gateway': not a service name"),
    ("gateway", "1.0", "version '1.0' is not major.minor.patch"),
])
def test_add_refuses_a_service_a_device_would_refuse_before_copying_anything(
    channel: Path, tmp_path: Path, name: str, version: str, reason: str,
) -> None:
    gateway = _artifact(tmp_path, "gw.bin", b"x" * 10)
    with pytest.raises(ReleaseError) as caught:
        add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                    services=[ServiceSource(name, version, gateway)])
    assert str(caught.value).startswith(reason)
    assert sorted(p.name for p in channel.iterdir()) == ["draft.json"]


def test_add_refuses_the_same_service_twice_in_one_release(channel: Path, tmp_path: Path) -> None:
    one, two = _artifact(tmp_path, "1", b"one"), _artifact(tmp_path, "2", b"two")
    with pytest.raises(ReleaseError, match=r"--service: a service is listed twice"):
        add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                    services=[ServiceSource("gateway", "1.0.2", one),
                              ServiceSource("gateway", "1.0.3", two)])
    assert json.loads((channel / "draft.json").read_text())["releases"] == []


def test_signing_refuses_a_hand_edited_draft_whose_services_lost_their_requirement(
    channel: Path, tmp_path: Path,
) -> None:
    gateway = _artifact(tmp_path, "gw.bin", b"g" * 100)
    add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                services=[ServiceSource("gateway", "1.0.2", gateway)])
    draft = json.loads((channel / "draft.json").read_text())
    del draft["releases"][0]["requires"]
    (channel / "draft.json").write_text(json.dumps(draft))
    with pytest.raises(ReleaseError, match=r"draft.json: releases\[0\].services: a release with "
                                           r"service artifacts must require"):
        _sign(channel, tmp_path)
    assert not (channel / "metadata.json").exists()


def test_signing_refuses_a_draft_whose_service_file_is_missing(channel: Path,
                                                               tmp_path: Path) -> None:
    gateway = _artifact(tmp_path, "gw.bin", b"g" * 100)
    add_release(channel, _image(channel, "1.0.2"), "1.0.2", [], block_size=BLOCK,
                services=[ServiceSource("gateway", "1.0.2", gateway)])
    (channel / "gateway-1.0.2.svc").unlink()
    with pytest.raises(ReleaseError, match=r"gateway-1.0.2.svc: missing or not 100 bytes"):
        _sign(channel, tmp_path)


def test_cli_add_takes_services_and_verify_lists_them(tmp_path: Path) -> None:
    run = CliRunner().invoke
    run(release_group, ["keygen", "--dir", str(tmp_path)])
    chan = str(tmp_path / "stable")
    image = build_sim_image(tmp_path / "img", "1.2.3", size=50_000)
    _artifact(tmp_path, "gw", b"gw" * 1000)
    _artifact(tmp_path, "db", b"db" * 10)
    added = run(release_group, ["add", chan, str(image), "--version", "1.2.3",
                                "--service", f"gateway={tmp_path / 'gw'}",
                                "--service", f"db@2.0.0={tmp_path / 'db'}"])
    assert added.exit_code == 0, added.output
    assert f"service gateway 1.2.3: {chan}/gateway-1.2.3.svc, 2000 bytes, 1 blocks" \
        in added.output
    assert f"service db 2.0.0: {chan}/db-2.0.0.svc, 20 bytes" in added.output
    assert "does not implement" not in added.output
    assert "check the spelling" not in added.output
    run(release_group, ["sign", chan, "--key", str(tmp_path / "release.key")])
    verified = run(release_group, ["verify", chan, "--key", str(tmp_path / "release.pub")])
    assert verified.exit_code == 0, verified.output
    assert "requires service-artifacts" in verified.output
    assert "service gateway 1.2.3: gateway-1.2.3.svc, 2000 bytes" in verified.output
    assert "service db 2.0.0: db-2.0.0.svc, 20 bytes" in verified.output
    bad = run(release_group, ["add", chan, str(image), "--version", "1.2.4",
                              "--service", "gateway"])
    assert bad.exit_code == 2 and "write NAME=PATH or NAME@VERSION=PATH" in bad.output


def test_cli_add_signs_a_data_dir_and_an_irreversible_migration(tmp_path: Path) -> None:
    run = CliRunner().invoke
    chan = str(tmp_path / "stable")
    image = build_sim_image(tmp_path / "img", "1.2.3", size=50_000)
    _artifact(tmp_path, "gw", b"gw" * 1000)
    _artifact(tmp_path, "db", b"db" * 10)
    added = run(release_group, ["add", chan, str(image), "--version", "1.2.3",
                                "--service", f"gateway={tmp_path / 'gw'}",
                                "--service", f"db={tmp_path / 'db'}",
                                "--data-dir", "gateway=gateway", "--migrates-data", "db"])
    assert added.exit_code == 0, added.output
    assert "    data: gateway (copied before the switch, put back on a rollback)" \
        in added.output
    assert "    migrates data irreversibly: no rollback past this version once it has " \
        "started" in added.output
    assert "requires service-artifacts, service-data" in added.output
    draft = json.loads((tmp_path / "stable" / "draft.json").read_text())
    gateway, db = draft["releases"][0]["services"]
    assert gateway["data_dir"] == "gateway" and "migrates_data" not in gateway
    assert db["migrates_data"] is True and "data_dir" not in db
    bad = run(release_group, ["add", chan, str(image), "--version", "1.2.4",
                              "--service", f"gateway={tmp_path / 'gw'}",
                              "--migrates-data", "gatway"])
    assert bad.exit_code == 2 and "'gatway' is not a --service of this release" in bad.output
