"""The device config in two layers: the image's (trust, slots, bootloader) and the device's
own (id, channel, credentials, group, retention, spec), which may narrow trust, never widen it."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config import OVERLAY_KEYS, load_device
from reconciler.errors import ConfigError, SpecError
from reconciler.specfile import parse_spec

IMAGE = """\
slots:
  A: {device: slots/a}
  B: {device: slots/b}
trustedKeys: [keys/release.pub]
revokedKeys: [0123456789abcdef]
dataDir: data
"""


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "device.yaml"
    path.write_text(IMAGE)
    return path


def _layer(image: Path, text: str) -> Path:
    path = image.parent / "data" / "device.yaml"
    path.write_text(text)
    return path


def test_the_device_layer_in_the_data_dir_adds_what_is_this_devices_own(image: Path) -> None:
    secret = image.parent / "data" / "channel.password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    layer = _layer(image, "deviceId: kiosk-0042\nresync: 2m\naudit: {keepDays: 30}\n"
                          "spec: spec/update.yaml\nchannel:\n  name: beta\n  credentials:\n"
                          "    url: https://updates.example.com/\n    user: kiosk\n"
                          "    passwordFile: channel.password\n")
    device = load_device(image)
    assert device.layers == (image.resolve(), layer.resolve())
    assert device.device_id == "kiosk-0042" and device.channel_name == "beta"
    assert device.resync.total_seconds() == 120 and device.audit_keep_days == 30
    assert device.spec_path == image.parent / "data" / "spec" / "update.yaml"
    assert device.credentials is not None
    assert device.credentials.secret_file == secret.resolve()
    assert device.trusted_keys == (image.parent / "keys" / "release.pub",)


@pytest.mark.parametrize("key, value", [
    ("trustedKeys", "[mine.pub]"), ("slots", "{A: {device: x}, B: {device: y}}"),
    ("bootloader", "{backend: uboot}"), ("dataDir", "/tmp/elsewhere"),
    ("rebootCommand", "[/bin/true]"), ("overlay", "other.yaml"), ("trialTries", "9"),
    ("cmdline", "/tmp/cmdline"),
])
def test_the_device_layer_cannot_set_what_belongs_to_the_image(
        image: Path, key: str, value: str) -> None:
    layer = _layer(image, f"{key}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_device(image)
    message = str(caught.value)
    assert message.startswith(f"{layer}: {key}: cannot be set in the device layer"), message
    assert str(image) in message
    if key == "trustedKeys":
        assert "trust comes from the image" in message


def test_revoked_keys_of_the_device_layer_add_to_the_images(image: Path) -> None:
    _layer(image, "revokedKeys: [fedcba9876543210, old.pub]\n")
    device = load_device(image)
    assert device.revoked_keys == ("0123456789abcdef", "fedcba9876543210",
                                   image.parent / "data" / "old.pub")


def test_a_bad_value_in_the_device_layer_names_that_layer(image: Path) -> None:
    layer = _layer(image, "channel: {name: 'no spaces allowed'}\n")
    with pytest.raises(ConfigError, match=rf"^{layer}: channel\.name: "):
        load_device(image)


def test_overlay_null_reads_no_device_layer_and_an_absent_one_is_fine(image: Path) -> None:
    assert load_device(image).layers == (image.resolve(),)
    _layer(image, "deviceId: ignored\n")
    image.write_text(IMAGE + "overlay: null\n")
    assert load_device(image).device_id is None


def test_the_image_may_name_where_the_device_layer_lives(image: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "persist" / "kruxos.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("deviceId: gw-7\n")
    image.write_text(IMAGE + f"overlay: {elsewhere}\n")
    assert load_device(image).device_id == "gw-7"


def test_every_key_the_device_layer_may_set_is_a_config_key() -> None:
    from reconciler.config import DeviceConfig

    aliases = {f.alias or name for name, f in DeviceConfig.model_fields.items()}
    assert OVERLAY_KEYS <= aliases


def test_the_spec_can_change_neither_layer() -> None:
    base = ("apiVersion: kruxos.io/v1\nkind: UpdatePolicy\nmetadata: {name: x}\n"
            "spec:\n  version: 1.0.0\n  channel: {url: 'http://127.0.0.1:8080/'}\n")
    for extra in ("  trustedKeys: [evil.pub]\n", "  channelName: beta\n", "  dataDir: /\n"):
        with pytest.raises(SpecError, match="trustedKeys|channelName|dataDir"):
            parse_spec((base + extra).encode())


def test_the_example_layers_load_together(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    image = (repo / "specs" / "device.yaml").read_text()
    layer = tmp_path / "device-layer.yaml"
    layer.write_text((repo / "specs" / "device-layer.yaml").read_text())
    path = tmp_path / "device.yaml"
    path.write_text(image.replace("overlay: /data/kruxos/device.yaml", f"overlay: {layer}")
                    .replace("dataDir: /data/kruxos", f"dataDir: {tmp_path / 'data'}"))
    device = load_device(path)
    assert device.layers == (path.resolve(), layer.resolve())
    assert device.device_id == "kiosk-0042"
    assert device.trusted_keys == (Path("/etc/kruxos/keys"),)
    assert device.spec_path == Path("/data/kruxos/spec/update.yaml")


def test_a_trusted_keys_directory_stands_for_every_key_in_it_read_each_time(
        tmp_path: Path) -> None:
    from reconciler.release.keys import (
        generate_keypair,
        keyid_of,
        load_public_key,
        load_trusted_keys,
    )

    keys = tmp_path / "root" / "etc" / "kruxos" / "keys"
    keys.mkdir(parents=True)
    generate_keypair(keys, "old")
    (keys / "old.key").unlink()
    assert set(load_trusted_keys([keys])) == {keyid_of(load_public_key(keys / "old.pub"))}
    generate_keypair(keys, "new")  # the next boot's image carries the new key instead
    (keys / "new.key").unlink()
    (keys / "old.pub").unlink()
    assert set(load_trusted_keys([keys])) == {keyid_of(load_public_key(keys / "new.pub"))}
