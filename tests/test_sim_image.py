"""The simulated image: a plain archive from byte 0 that a boot mounts, bounded if hostile."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from reconciler.errors import ReleaseError
from reconciler.release.identity import LEGACY_MAGIC, read_identity
from reconciler.sim.image import (
    MAX_FILE,
    MAX_MEMBERS,
    MountError,
    build_sim_image,
    mount,
    read_root,
)
from reconciler.sim.os import load_profile
from tests.slots import claim

SLOT = 256 << 10


def archive(members: list[tuple[str, bytes]], size: int = SLOT) -> bytes:
    """A ustar archive of ``members`` made by the standard library, padded to ``size``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    return raw + bytes(size - len(raw))


def test_an_image_is_a_standard_archive_of_exactly_its_size(tmp_path: Path) -> None:
    image = build_sim_image(tmp_path / "x.img", "1.0.1", size=100_003,
                            fields={"STARTUP_SECONDS": "0"})
    assert image.stat().st_size == 100_003
    assert not image.read_bytes().startswith(LEGACY_MAGIC)
    with tarfile.open(image) as tar:
        names = tar.getnames()
        release = tar.extractfile("etc/kruxos/release")
        assert release is not None
        text = release.read().decode()
    assert names[:3] == ["etc", "etc/kruxos", "etc/kruxos/release"]
    assert text == "VERSION=1.0.1\nNAME=KruxOS\nBEHAVIOUR=healthy\nSTARTUP_SECONDS=0\n"


def test_fields_an_image_cannot_hold_and_sizes_too_small_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="field 'BAD KEY'"):
        build_sim_image(tmp_path / "x.img", "1.0.1", fields={"BAD KEY": "1"})
    with pytest.raises(ReleaseError, match="field 'NOTE' cannot hold 'a\\\\nb'"):
        build_sim_image(tmp_path / "x.img", "1.0.1", fields={"NOTE": "a\nb"})
    with pytest.raises(ReleaseError, match="needs at least 3584 bytes"):
        build_sim_image(tmp_path / "x.img", "1.0.1", size=3000)


def test_a_boot_mounts_the_image_in_a_slot_with_its_identity_at_the_end(
        tmp_path: Path) -> None:
    slot = tmp_path / "sda3"
    build_sim_image(slot, "1.0.1", behaviour="gateway-fails", size=50_000)
    with open(slot, "r+b") as f:
        f.truncate(SLOT)
    claim(slot, "1.0.1", size=50_000)
    root = tmp_path / "root"
    (root / "etc" / "kruxos").mkdir(parents=True)
    (root / "etc" / "kruxos" / "stale").write_text("from the previous boot")
    found = mount(slot, root)
    assert found.release()["BEHAVIOUR"] == "gateway-fails"
    assert sorted(p.name for p in (root / "etc" / "kruxos").iterdir()) == ["release"]
    assert (root / "etc" / "kruxos" / "release").read_text().startswith("VERSION=1.0.1\n")
    assert load_profile(slot).version == "1.0.1"
    assert read_identity(slot)[0] is not None  # the OS and the reconciler read different ends


def test_a_slot_that_does_not_mount_leaves_no_old_files_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "kruxos").mkdir(parents=True)
    (root / "etc" / "kruxos" / "release").write_text("VERSION=9.9.9\n")
    slot = tmp_path / "sda3"
    slot.write_bytes(bytes(SLOT))
    with pytest.raises(MountError, match=r"holds no image \(zeros at byte 0\)"):
        mount(slot, root)
    assert not (root / "etc" / "kruxos").exists()


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x53\xef" * (SLOT // 2), "no ustar archive header at byte 0"),
    (b"etc/kruxos/releasX" + archive([("etc/kruxos/release", b"VERSION=1\n")])[18:],
     "archive header at byte 0: checksum mismatch"),
    (archive([("etc/kruxos/release", b"x" * (MAX_FILE + 1))]), "more than the 65536-byte file"),
    (archive([("etc/kruxos/../../escape", b"VERSION=1\n")]), "not a plain relative path"),
    (archive([("etc/kruxos/notes", b"hello")]), "the image has no etc/kruxos/release"),
    (archive([("etc/kruxos/release", b"NAME=KruxOS\n")]), "names no VERSION"),
])
def test_hostile_slots_are_refused_by_name(tmp_path: Path, raw: bytes, message: str) -> None:
    slot = tmp_path / "sda3"
    slot.write_bytes(raw)
    with pytest.raises(MountError, match=message):
        read_root(slot).release()


def test_a_member_that_runs_past_the_end_of_the_slot_is_refused(tmp_path: Path) -> None:
    raw = archive([("usr/big", b"x" * 4096)])
    slot = tmp_path / "sda3"
    slot.write_bytes(raw[:2048])
    with pytest.raises(MountError, match="'usr/big' runs past the end of the slot"):
        read_root(slot)


def test_a_mount_looks_at_a_bounded_number_of_members(tmp_path: Path) -> None:
    many = [(f"usr/f{i}", b"") for i in range(MAX_MEMBERS)]
    slot = tmp_path / "sda3"
    slot.write_bytes(archive([*many, ("etc/kruxos/release", b"VERSION=1\n")]))
    with pytest.raises(MountError, match="has no etc/kruxos/release"):
        read_root(slot).release()
    slot.write_bytes(archive([("etc/kruxos/release", b"VERSION=1\n"), *many]))
    assert read_root(slot).release()["VERSION"] == "1"
