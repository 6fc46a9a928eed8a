"""The formats of a container device: ``runtime: docker`` in the device layer, and a release's
signed container image (``container_image``, which ``requires`` ``container-image``).

Every refusal names the file and the field, so a person fixes the right line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from reconciler.channelwatch import ChannelWatch, Refusal, view_of
from reconciler.config import load_device
from reconciler.containers import ContainerRuntime
from reconciler.errors import ConfigError, ReleaseError
from reconciler.redact import redact
from reconciler.release.channel import add_release, init_channel, sign_channel, verify_channel
from reconciler.release.keys import generate_keypair, load_trusted_keys
from reconciler.release.metadata import verify_metadata
from reconciler.store import StateStore
from tests.httpserver import ChannelServer

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"127.0.0.1:5000/kruxos@{DIGEST}"


def _write_yaml(path: Path, doc: Any) -> Path:
    with path.open("w") as out:
        YAML(typ="safe").dump(doc, out)
    return path


def _device(tmp_path: Path, container: dict[str, Any] | None = None,
            **layer: Any) -> Path:
    """An image layer without slots, and a device layer saying ``runtime: docker``."""
    (tmp_path / "keys").mkdir(exist_ok=True)
    generate_keypair(tmp_path / "keys", "release")
    image = _write_yaml(tmp_path / "device.yaml", {
        "trustedKeys": ["keys/"], "dataDir": "data", "overlay": "layer.yaml",
        "spec": "spec.yaml"})
    doc: dict[str, Any] = {"runtime": "docker", "container": container if container is not None
                           else {"repository": "127.0.0.1:5000/kruxos",
                                 "name": "kruxos", "network": "host",
                                 "volumes": {"kruxos-data": "/data/kruxos"},
                                 "capabilities": {"add": ["ALL"], "drop": ["SYS_RESOURCE"]}}}
    doc.update(layer)
    _write_yaml(tmp_path / "layer.yaml", doc)
    return image


def test_a_docker_device_needs_no_slots_and_reads_its_container_as_data(
        tmp_path: Path) -> None:
    device = load_device(_device(tmp_path))
    assert device.runtime == "docker" and device.slot_paths == {}
    assert device.container is not None
    assert (device.container.name, device.container.network) == ("kruxos", "host")
    assert device.container.volumes == {"kruxos-data": "/data/kruxos"}
    assert device.container.capabilities is not None
    assert device.container.capabilities.drop == ["SYS_RESOURCE"]
    assert device.container.engine == "unix:///run/docker.sock"


@pytest.mark.parametrize(("container", "field"), [
    ({"repository": "r/k", "privileged": True, "capabilities": {"add": ["ALL"]}},
     "privileged: true and capabilities exclude each other"),
    ({"repository": "r/k", "network": "host", "ports": ["7800:7800"]}, "ports"),
    ({"repository": "r/k:latest"}, "container.repository"),
    ({"repository": "r/k", "ports": ["seven"]}, "container.ports.0"),
    ({"repository": "r/k", "capabilities": {"add": ["sys admin"]}},
     "container.capabilities.add.0"),
    ({"repository": "r/k", "engine": "tcp://10.0.0.1:2375"}, "engine: expected unix:///"),
    ({"name": "kruxos"}, "container.repository"),
])
def test_a_bad_container_setting_is_refused_naming_the_field_and_the_layer(
        tmp_path: Path, container: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_device(_device(tmp_path, container))
    assert str(tmp_path / "layer.yaml") in str(caught.value), caught.value
    assert field in str(caught.value), caught.value


def test_runtime_docker_without_a_container_and_a_container_without_it_are_refused(
        tmp_path: Path) -> None:
    path = _device(tmp_path)
    _write_yaml(tmp_path / "layer.yaml", {"runtime": "docker"})
    with pytest.raises(ConfigError, match="runtime: docker needs a container section"):
        load_device(path)
    _write_yaml(tmp_path / "layer.yaml", {"container": {"repository": "r/k"}})
    with pytest.raises(ConfigError, match="container: applies only with runtime: docker"):
        load_device(path)


def test_the_secrets_file_must_be_0600_and_its_values_are_masked_in_every_output(
        tmp_path: Path) -> None:
    secret = "vault-passphrase-7f3a9c"
    secrets = tmp_path / "container.env"
    secrets.write_text(f"# the vault\nKRUXOS_VAULT_PASSPHRASE={secret}\n")
    secrets.chmod(0o644)
    path = _device(tmp_path, {"repository": "r/k", "secretsFile": "container.env"})
    with pytest.raises(ConfigError) as caught:
        load_device(path)
    assert "container.secretsFile" in str(caught.value) and "0644" in str(caught.value)
    assert str(tmp_path / "layer.yaml") in str(caught.value)
    assert secret not in str(caught.value)

    secrets.chmod(0o600)
    device = load_device(path)
    assert device.container_secrets == secrets  # relative to the layer that names it
    assert secret not in redact(f"env: KRUXOS_VAULT_PASSPHRASE={secret}")

    secrets.write_text(f"KRUXOS_VAULT_PASSPHRASE {secret}\n")
    with pytest.raises(ConfigError, match="line 1: expected NAME=VALUE") as caught:
        load_device(path)
    assert secret not in str(caught.value)


def _channel(tmp_path: Path) -> Path:
    root = tmp_path / "root.img"
    root.write_bytes(b"\0" * 8192)
    channel = tmp_path / "channel"
    init_channel(channel, "stable")
    return channel


def test_a_release_with_a_container_image_requires_the_feature_and_is_signed(
        tmp_path: Path) -> None:
    channel = _channel(tmp_path)
    rel = add_release(channel, tmp_path / "root.img", "1.0.0", ["first"],
                      container_image=IMAGE)
    assert rel.requires == ("container-image",) and rel.image_digest == DIGEST
    _, pub = generate_keypair(tmp_path, "release")
    sign_channel(channel, [tmp_path / "release.key"])
    meta = verify_metadata((channel / "metadata.json").read_bytes(), load_trusted_keys([pub]),
                           frozenset(), datetime.now(UTC) + timedelta(minutes=1), None, None)
    assert meta.releases[0].container_image == IMAGE
    assert meta.format == 2


@pytest.mark.parametrize("image", ["127.0.0.1:5000/kruxos:latest",
                                   "127.0.0.1:5000/kruxos@sha256:abc",
                                   f"Kruxos@{DIGEST}"])
def test_a_container_image_not_named_by_its_full_digest_is_refused(
        tmp_path: Path, image: str) -> None:
    channel = _channel(tmp_path)
    with pytest.raises(ReleaseError, match="--container-image: .* is not REPOSITORY@sha256"):
        add_release(channel, tmp_path / "root.img", "1.0.0", ["x"], container_image=image)


def test_a_hand_edited_draft_with_an_image_but_without_the_feature_is_not_signed(
        tmp_path: Path) -> None:
    channel = _channel(tmp_path)
    add_release(channel, tmp_path / "root.img", "1.0.0", ["x"])
    draft = json.loads((channel / "draft.json").read_text())
    draft["releases"][0]["container_image"] = IMAGE
    (channel / "draft.json").write_text(json.dumps(draft))
    generate_keypair(tmp_path, "release")
    with pytest.raises(ReleaseError, match="releases\\[0\\].container_image: a release with a "
                                           "container image must require 'container-image'"):
        sign_channel(channel, [tmp_path / "release.key"])


def test_the_container_config_becomes_what_docker_run_would_be_told(tmp_path: Path) -> None:
    secrets = tmp_path / "container.env"
    secrets.write_text("KRUXOS_VAULT_PASSPHRASE=vault-passphrase-0c61ab\n")
    secrets.chmod(0o600)
    device = load_device(_device(tmp_path, {
        "repository": "r/k", "secretsFile": "container.env", "environment": {"TZ": "UTC"},
        "ports": ["7800:7800", "127.0.0.1:7701:7701/udp"], "privileged": True,
        "volumes": {"kruxos-data": "/data/kruxos"}}))
    options = ContainerRuntime(device)._run_options("1.0.1")  # no engine is contacted
    assert options["environment"] == {"TZ": "UTC",
                                      "KRUXOS_VAULT_PASSPHRASE": "vault-passphrase-0c61ab"}
    assert options["ports"] == {"7800/tcp": 7800, "7701/udp": ("127.0.0.1", 7701)}
    assert options["volumes"] == {"kruxos-data": {"bind": "/data/kruxos", "mode": "rw"}}
    assert options["privileged"] is True and "cap_add" not in options
    assert options["labels"] == {"io.kruxos.version": "1.0.1"}
    assert "network_mode" not in options


def test_sim_init_runtime_docker_writes_a_container_device_that_loads(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.cli.main import cli

    result = CliRunner().invoke(cli, ["sim", "init", str(tmp_path / "dev"), "--runtime",
                                      "docker", "--registry", "127.0.0.1:5999", "--channel",
                                      "127.0.0.1:8123", "--port", "7811"])
    assert result.exit_code == 0, result.output
    chan = tmp_path / "dev" / "channel"
    assert f"  $ kruxos release add {chan} --version 1.0.0 --changes 'first' " \
           "--container-image \"$(docker inspect --format '{{range .RepoDigests}}" \
           "{{println .}}{{end}}' 127.0.0.1:5999/kruxos:1.0.0 | grep -m1 " \
           "'^127.0.0.1:5999/kruxos@')\"\n" in result.output  # no root image to name
    assert f"  $ python3 -m http.server --bind 127.0.0.1 --directory {chan} 8123\n" \
        in result.output
    assert not (tmp_path / "dev" / "root.img").exists()
    spec = (tmp_path / "dev" / "spec.yaml").read_text()
    assert "url: http://127.0.0.1:8123/" in spec and "127.0.0.1:7811/health/ready" in spec
    slots = CliRunner().invoke(cli, ["sim", "init", str(tmp_path / "s"), "--port", "7811"])
    assert slots.exit_code == 2 and "apply with --runtime docker only" in slots.output
    device = load_device(tmp_path / "dev" / "device.yaml")
    assert device.runtime == "docker" and device.slot_paths == {}
    assert device.container is not None and device.container.repository == \
        "127.0.0.1:5999/kruxos"
    assert device.container.environment == {"KRUXOS_PORT": "7811"}
    assert device.container_secrets is not None
    assert device.container_secrets.stat().st_mode & 0o777 == 0o600
    passphrase = device.container_secrets.read_text().split("=", 1)[1].strip()
    assert passphrase not in result.output
    assert (tmp_path / "dev" / "channel" / "metadata.json").is_file()


# ---- tampered metadata: a container image edited after signing -----------------------------

OTHER = f"127.0.0.1:5000/kruxos@sha256:{'cd' * 32}"


@pytest.mark.parametrize("root_image", [True, False], ids=["with-root-image", "container-only"])
def test_a_container_image_edited_after_signing_is_refused_by_the_signature(
        tmp_path: Path, root_image: bool) -> None:
    channel = _channel(tmp_path)
    add_release(channel, tmp_path / "root.img" if root_image else None, "1.0.0", ["first"],
                container_image=IMAGE)
    _, pub = generate_keypair(tmp_path, "release")
    sign_channel(channel, [tmp_path / "release.key"])
    doc = json.loads((channel / "metadata.json").read_text())
    doc["signed"]["releases"][0]["container_image"] = OTHER  # well formed, another digest
    raw = json.dumps(doc).encode()
    with pytest.raises(ReleaseError, match="no valid signature from a trusted key: bad "
                                           "signature by key"):
        verify_metadata(raw, load_trusted_keys([pub]), frozenset(), datetime.now(UTC), None,
                        None)
    (channel / "metadata.json").write_bytes(raw)
    report = verify_channel(channel, [pub], datetime.now(UTC))
    assert not report.accepted and "bad signature" in report.problems[0]


def test_a_container_device_refuses_an_edited_channel_once_and_takes_nothing_from_it(
        tmp_path: Path) -> None:
    path = _device(tmp_path)
    channel = _channel(tmp_path)
    add_release(channel, None, "1.0.0", ["first"], container_image=IMAGE)
    sign_channel(channel, [tmp_path / "keys" / "release.key"])
    doc = json.loads((channel / "metadata.json").read_text())
    doc["signed"]["releases"][0]["container_image"] = OTHER
    (channel / "metadata.json").write_text(json.dumps(doc))
    device = load_device(path)
    refused: list[Refusal] = []
    now = datetime.now(UTC)
    watch = ChannelWatch(device, StateStore(device.data_dir), lambda: now,
                         on_refused=refused.append)
    server = ChannelServer(channel)
    try:
        for _ in range(2):
            with pytest.raises(ReleaseError, match="bad signature"):
                watch.fetch(server.url + "/", now)
    finally:
        server.stop()
    assert [r.action for r in refused] == ["channel-refused"]  # recorded once per file
    assert watch.verified is None  # nothing of it is believed: no digest to pull


def test_a_release_signed_under_another_repository_is_pulled_by_its_digest_alone(
        tmp_path: Path) -> None:
    """Trust is in the digest: the signed reference may name the publisher's repository; the
    device pulls that digest from its own (a mirror), where a different content fails the
    engine's digest check (tests/containers/test_sim_docker.py, on a real engine)."""
    channel = _channel(tmp_path)
    elsewhere = f"registry.example.com/altvale/kruxos@{DIGEST}"
    add_release(channel, None, "1.0.0", ["first"], container_image=elsewhere)
    _, pub = generate_keypair(tmp_path, "release")
    sign_channel(channel, [tmp_path / "release.key"])
    meta = verify_metadata((channel / "metadata.json").read_bytes(), load_trusted_keys([pub]),
                           frozenset(), datetime.now(UTC), None, None)
    view = view_of(meta, runtime="docker")
    assert view.latest == "1.0.0" and view.images == {"1.0.0": elsewhere}
    assert meta.releases[0].image_digest == DIGEST
