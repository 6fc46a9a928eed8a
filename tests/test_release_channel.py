"""Publishing a channel: images in, block hashes, signing, and what `verify` reports."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli.release import release_group
from reconciler.errors import ReleaseError
from reconciler.release.channel import (
    add_release,
    init_channel,
    sign_channel,
    verify_channel,
)
from reconciler.release.keys import generate_keypair
from reconciler.sim.image import build_sim_image, read_root
from tests.slots import legacy_header

BLOCK = 64 * 1024


@pytest.fixture()
def channel(tmp_path: Path) -> Path:
    init_channel(tmp_path / "channel", "stable")
    return tmp_path / "channel"


def test_simulated_images_carry_their_version_and_differ_per_version(tmp_path: Path) -> None:
    a = build_sim_image(tmp_path / "a.img", "1.0.0", behaviour="crash", size=100_000)
    again = build_sim_image(tmp_path / "again.img", "1.0.0", behaviour="crash", size=100_000)
    b = build_sim_image(tmp_path / "b.img", "1.0.1", size=100_000)
    release = read_root(a).release()
    assert release["VERSION"] == "1.0.0" and release["BEHAVIOUR"] == "crash"
    assert a.read_bytes() == again.read_bytes() != b.read_bytes()
    assert a.stat().st_size == 100_000


def test_adding_a_release_copies_the_image_and_hashes_each_block(
    channel: Path, tmp_path: Path,
) -> None:
    image = build_sim_image(tmp_path / "x.img", "2.0.0", size=3 * BLOCK + 7)
    rel = add_release(channel, image, "2.0.0", ["faster boot"], block_size=BLOCK)
    data = image.read_bytes()
    assert (channel / "kruxos-2.0.0.img").read_bytes() == data
    assert rel.image == "kruxos-2.0.0.img" and rel.size == len(data)
    assert rel.sha256 == hashlib.sha256(data).hexdigest()
    assert rel.blocks == tuple(hashlib.sha256(data[i:i + BLOCK]).hexdigest()
                               for i in range(0, len(data), BLOCK))


def test_an_image_of_the_old_layout_is_refused_with_what_to_do(
    channel: Path, tmp_path: Path,
) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(legacy_header("2.0.0") + b"\x5a" * 10_000)
    with pytest.raises(ReleaseError, match=r"x\.img: starts with an old-layout KruxOS image "
                       r"header \(KRUXOS-IMAGE 1\); .* build the image without the header"):
        add_release(channel, image, "2.0.0", [])
    assert not (channel / "kruxos-2.0.0.img").exists()


def test_any_plain_image_is_added_whatever_its_first_bytes(
    channel: Path, tmp_path: Path,
) -> None:
    image = tmp_path / "ext4.img"
    image.write_bytes(bytes(1024) + b"\x53\xef" + bytes(20_000))  # a superblock at 1024
    rel = add_release(channel, image, "2.0.0", [])
    assert rel.size == 21_026 and (channel / rel.image).read_bytes() == image.read_bytes()


def test_verify_reports_a_signed_image_of_the_old_layout(channel: Path, tmp_path: Path) -> None:
    key, pub = generate_keypair(tmp_path, "k")
    add_release(channel, build_sim_image(tmp_path / "1.img", "1.0.0", size=3 * BLOCK), "1.0.0",
                [], block_size=BLOCK)
    image = channel / "kruxos-1.0.0.img"
    image.write_bytes(legacy_header("1.0.0") + image.read_bytes()[4096:])
    draft = json.loads((channel / "draft.json").read_text())  # as an old publisher signed it
    data = image.read_bytes()
    draft["releases"][0].update(sha256=hashlib.sha256(data).hexdigest(), blocks=[
        hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)])
    (channel / "draft.json").write_text(json.dumps(draft))
    sign_channel(channel, [key])
    report = verify_channel(channel, [pub], datetime.now(UTC))
    assert not report.accepted
    assert report.problems == [f"1.0.0: {image} starts with an old-layout KruxOS image header "
                               "(KRUXOS-IMAGE 1); an image is now the plain filesystem the OS "
                               "build makes, and the device writes the slot identity itself: "
                               "build the image without the header"]


def test_a_version_cannot_be_added_twice(channel: Path, tmp_path: Path) -> None:
    image = build_sim_image(tmp_path / "x.img", "2.0.0", size=10_000)
    add_release(channel, image, "2.0.0", [])
    with pytest.raises(ReleaseError, match="already in the channel"):
        add_release(channel, image, "2.0.0", [])


def test_adding_does_not_touch_the_published_metadata_until_signed(
    channel: Path, tmp_path: Path,
) -> None:
    key, _ = generate_keypair(tmp_path, "k")
    add_release(channel, build_sim_image(tmp_path / "1.img", "1.0.0", size=10_000), "1.0.0", [])
    sign_channel(channel, [key])
    before = (channel / "metadata.json").read_bytes()
    add_release(channel, build_sim_image(tmp_path / "2.img", "1.0.1", size=10_000), "1.0.1", [])
    assert (channel / "metadata.json").read_bytes() == before


def test_signing_refuses_metadata_naming_a_missing_image(channel: Path, tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path, "k")
    add_release(channel, build_sim_image(tmp_path / "1.img", "1.0.0", size=10_000), "1.0.0", [])
    (channel / "kruxos-1.0.0.img").unlink()
    with pytest.raises(ReleaseError, match="kruxos-1.0.0.img: missing"):
        sign_channel(channel, [key])


def test_verify_reports_an_image_file_changed_after_signing(channel: Path, tmp_path: Path) -> None:
    key, pub = generate_keypair(tmp_path, "k")
    add_release(channel, build_sim_image(tmp_path / "1.img", "1.0.0", size=3 * BLOCK), "1.0.0",
                [], block_size=BLOCK)
    sign_channel(channel, [key])
    image = channel / "kruxos-1.0.0.img"
    data = bytearray(image.read_bytes())
    data[BLOCK + 5] ^= 1
    image.write_bytes(bytes(data))
    report = verify_channel(channel, [pub], datetime.now(UTC))
    assert not report.accepted
    assert report.problems == [f"1.0.0: {image} block 1 does not match its signed hash"]


def test_verify_says_why_metadata_would_be_refused(channel: Path, tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path, "k")
    _, other_pub = generate_keypair(tmp_path, "other")
    sign_channel(channel, [key], timedelta(hours=1))
    report = verify_channel(channel, [other_pub], datetime.now(UTC))
    assert not report.accepted and "unknown" in report.problems[0]
    later = verify_channel(channel, [tmp_path / "k.pub"], datetime.now(UTC) + timedelta(hours=2))
    assert not later.accepted and "expired" in later.problems[0]


def test_cli_publishes_a_channel_a_device_would_accept(tmp_path: Path) -> None:
    run = CliRunner().invoke
    assert run(release_group, ["keygen", "--dir", str(tmp_path / "keys")]).exit_code == 0
    image = build_sim_image(tmp_path / "img", "1.2.3", size=50_000)
    chan = str(tmp_path / "stable")
    added = run(release_group, ["add", chan, str(image), "--version", "1.2.3",
                                "--changes", "one", "--changes", "two"])
    assert added.exit_code == 0, added.output
    signed = run(release_group, ["sign", chan, "--key", str(tmp_path / "keys/release.key"),
                                 "--expires", "2w"])
    assert signed.exit_code == 0 and "serial 1" in signed.output
    verified = run(release_group, ["verify", chan, "--key", str(tmp_path / "keys/release.pub")])
    assert verified.exit_code == 0, verified.output
    assert "1.2.3 (latest)" in verified.output and "would accept" in verified.output
    doc = json.loads((tmp_path / "stable/metadata.json").read_text())
    assert doc["signed"]["channel"] == "stable"
    assert doc["signed"]["releases"][0]["changes"] == ["one", "two"]


def test_cli_verify_exits_non_zero_and_says_why_a_device_would_refuse(tmp_path: Path) -> None:
    run = CliRunner().invoke
    run(release_group, ["keygen", "--dir", str(tmp_path), "--name", "a"])
    run(release_group, ["keygen", "--dir", str(tmp_path), "--name", "b"])
    init_channel(tmp_path / "c", "stable")
    run(release_group, ["sign", str(tmp_path / "c"), "--key", str(tmp_path / "a.key")])
    result = run(release_group, ["verify", str(tmp_path / "c"), "--key", str(tmp_path / "b.pub")])
    assert result.exit_code == 1 and "REFUSED" in result.output and "unknown" in result.output
    revoked = run(release_group, ["verify", str(tmp_path / "c"), "--key", str(tmp_path / "a.pub"),
                                  "--revoked", str(tmp_path / "a.pub")])
    assert revoked.exit_code == 1 and "revoked" in revoked.output


def test_cli_errors_name_the_file_at_fault(tmp_path: Path) -> None:
    init_channel(tmp_path / "c", "stable")
    missing = tmp_path / "nope.key"
    result = CliRunner().invoke(release_group, ["sign", str(tmp_path / "c"), "--key", str(missing)])
    assert result.exit_code != 0 and str(missing) in result.output
    bad = CliRunner().invoke(release_group, ["sign", str(tmp_path / "c"), "--key", str(missing),
                                             "--expires", "soon"])
    assert bad.exit_code != 0 and "30d" in bad.output


def test_a_public_key_cannot_sign_and_a_private_key_cannot_be_trusted(tmp_path: Path) -> None:
    run = CliRunner().invoke
    assert run(release_group, ["keygen", "--dir", str(tmp_path)]).exit_code == 0
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert key.read_text().startswith("# KruxOS Ed25519 private key")
    init_channel(tmp_path / "c", "stable")
    assert not (tmp_path / "c" / "metadata.json").exists()

    wrong = run(release_group, ["sign", str(tmp_path / "c"), "--key", str(pub)])
    assert wrong.exit_code != 0 and f"{pub}: this is a public key (.pub); sign with the " \
        f"private key file (e.g. {key})" in wrong.output, wrong.output
    copied = tmp_path / "copied.key"  # the public key under a private key's name
    copied.write_text(pub.read_text())
    renamed = run(release_group, ["sign", str(tmp_path / "c"), "--key", str(copied)])
    assert renamed.exit_code != 0 and f"holds the same bytes as the public key {pub}" in \
        renamed.output, renamed.output
    assert not (tmp_path / "c" / "metadata.json").exists()  # nothing was signed

    legacy = tmp_path / "legacy.key"  # a key file written before the mark: still signs
    legacy.write_text(key.read_text().splitlines()[1] + "\n")
    assert run(release_group, ["sign", str(tmp_path / "c"), "--key", str(legacy)]).exit_code == 0
    assert run(release_group, ["verify", str(tmp_path / "c"), "--key", str(pub)]).exit_code == 0

    trusted = run(release_group, ["verify", str(tmp_path / "c"), "--key", str(key)])
    assert trusted.exit_code != 0 and "this is a private key; a device trusts the public key" \
        in trusted.output, trusted.output
