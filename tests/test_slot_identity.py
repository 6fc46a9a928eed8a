"""The slot identity record: encoded, checked, read from a slot's last 4 KiB, or refused by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import failpoints
from reconciler.errors import ReleaseError
from reconciler.release.identity import (
    RECORD_SIZE,
    SlotIdentity,
    decode_identity,
    encode_identity,
    invalidate,
    read_identity,
    verify_slot,
    write_identity,
)
from tests.slots import claim, legacy_header, write_at

SHA = hashlib.sha256(b"image").hexdigest()
IDENTITY = SlotIdentity("1.0.1", 3 << 20, SHA, "stable", 7, "2030-05-01T12:00:00Z")


def slot_file(path: Path, size: int = 64 << 10, fill: bytes = b"\0") -> Path:
    path.write_bytes(fill * size)
    return path


def test_a_record_is_4096_bytes_of_text_and_reads_back_as_written() -> None:
    raw = encode_identity(IDENTITY)
    assert len(raw) == RECORD_SIZE
    assert raw.startswith(b"KRUXOS-SLOT 1\nversion=1.0.1\nsize=3145728\nsha256=" + SHA.encode()
                          + b"\nchannel=stable\nserial=7\nwritten=2030-05-01T12:00:00Z\n\0")
    assert raw[-64:] == hashlib.sha256(raw[:-64]).hexdigest().encode()
    assert decode_identity(raw) == (IDENTITY, None)


def test_zeros_are_no_record_and_no_problem() -> None:
    assert decode_identity(bytes(RECORD_SIZE)) == (None, None)


@pytest.mark.parametrize("offset", [0, 15, 40, 200, RECORD_SIZE - 65, RECORD_SIZE - 1])
def test_any_changed_byte_is_a_named_problem_never_a_release(offset: int) -> None:
    raw = bytearray(encode_identity(IDENTITY))
    raw[offset] ^= 0x01
    identity, problem = decode_identity(bytes(raw))
    assert identity is None and problem is not None
    assert any(word in problem for word in ("damaged", "not a KruxOS", "format"))


def test_a_record_of_a_later_format_is_named_not_guessed() -> None:
    raw = encode_identity(IDENTITY).replace(b"KRUXOS-SLOT 1\n", b"KRUXOS-SLOT 2\n", 1)
    assert decode_identity(raw) == (
        None, "its identity record is of format 2; this version reads format 1")


def test_foreign_bytes_are_named_as_a_foreign_or_damaged_slot() -> None:
    identity, problem = decode_identity(b"\x53\xef" * (RECORD_SIZE // 2))
    assert identity is None and problem == (
        "its last 4 KiB are not a KruxOS slot identity record (a foreign or damaged slot)")


def test_a_record_with_a_valid_checksum_but_no_size_is_refused_by_name() -> None:
    text = b"KRUXOS-SLOT 1\nversion=1.0.1\n"
    text += bytes(RECORD_SIZE - 64 - len(text))
    raw = text + hashlib.sha256(text).hexdigest().encode()
    assert decode_identity(raw) == (
        None, "its identity record lacks a valid version, size, sha256 or serial")


def test_unknown_keys_of_the_same_format_are_ignored() -> None:
    text = encode_identity(IDENTITY)[:-64].replace(b"\0", b"", 1)
    text = text.rstrip(b"\0") + b"image=kruxos-1.0.1.img\n"
    text += bytes(RECORD_SIZE - 64 - len(text))
    assert decode_identity(text + hashlib.sha256(text).hexdigest().encode()) == (IDENTITY, None)


@pytest.mark.parametrize("bad", [
    SlotIdentity("1.0.1\n", 1, SHA, "stable", 1, "t"),
    SlotIdentity("1.0.1", 0, SHA, "stable", 1, "t"),
    SlotIdentity("1.0.1", 1, "ab", "stable", 1, "t"),
    SlotIdentity("1.0.1", 1, SHA, "", 1, "t"),
    SlotIdentity("v" * 129, 1, SHA, "stable", 1, "t"),
    SlotIdentity("1.0.1", legacy=True),
])
def test_fields_a_record_cannot_hold_are_refused_when_encoding(bad: SlotIdentity) -> None:
    with pytest.raises(ReleaseError, match="slot identity"):
        encode_identity(bad)


@given(st.sampled_from([b"", b"KRUXOS-SLOT 1\n", b"KRUXOS-SLOT 12\n", b"KRUXOS-SLOT \n"]),
       st.binary(max_size=400), st.booleans())
def test_decoding_any_bytes_never_raises(magic: bytes, body: bytes, checksum: bool) -> None:
    text = (magic + body)[:RECORD_SIZE - 64]
    text += bytes(RECORD_SIZE - 64 - len(text))
    tail = hashlib.sha256(text).hexdigest().encode() if checksum else body[:64].ljust(64, b"0")
    identity, problem = decode_identity(text + tail)
    assert (identity is None) != (problem is None) or (identity, problem) == (None, None)
    assert identity is None or checksum


@given(st.integers(0, RECORD_SIZE - 1), st.integers(1, 255))
def test_decoding_a_record_with_one_byte_changed_never_claims_a_release(
        offset: int, flip: int) -> None:
    raw = bytearray(encode_identity(IDENTITY))
    raw[offset] ^= flip
    assert decode_identity(bytes(raw))[0] is None


# ---- in a slot ------------------------------------------------------------------------------

def test_the_record_sits_in_the_last_4_kib_of_the_slot_and_nowhere_else(tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3", fill=b"\x5a")
    with open(slot, "r+b") as f:
        write_identity(f.fileno(), SlotIdentity("1.0.1", 4096, SHA, "stable", 1, "t"))
    data = slot.read_bytes()
    assert data[:-RECORD_SIZE] == b"\x5a" * (len(data) - RECORD_SIZE)
    assert data[-RECORD_SIZE:].startswith(b"KRUXOS-SLOT 1\n")
    assert read_identity(slot)[0] == SlotIdentity("1.0.1", 4096, SHA, "stable", 1, "t")


def test_a_missing_slot_claims_nothing_and_a_tiny_one_is_named(tmp_path: Path) -> None:
    assert read_identity(tmp_path / "nothing") == (None, None)
    tiny = slot_file(tmp_path / "tiny", size=100)
    assert read_identity(tiny) == (
        None, "the slot is 100 bytes, smaller than its 4096-byte identity record")


def test_an_old_layout_header_is_read_as_a_legacy_identity_when_no_record_is_there(
        tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3")
    write_at(slot, 0, legacy_header("1.0.0", BEHAVIOUR="healthy"))
    assert read_identity(slot) == (SlotIdentity("1.0.0", legacy=True), None)
    check = verify_slot(slot)
    assert (check.state, check.failed) == ("unverifiable", False)
    assert "old-layout header" in check.message


def test_a_record_wins_over_an_old_layout_header(tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3")
    write_at(slot, 0, legacy_header("1.0.0"))
    claim(slot, "1.0.1")
    identity = read_identity(slot)[0]
    assert identity is not None and (identity.version, identity.legacy) == ("1.0.1", False)


def test_an_old_layout_header_without_a_version_is_a_named_problem(tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3")
    write_at(slot, 0, legacy_header(""))
    identity, problem = read_identity(slot)
    assert identity is None and problem is not None and "name no version" in problem


def test_invalidating_zeroes_the_record_and_an_old_header_but_no_filesystem(
        tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3", fill=b"\x5a")
    claim(slot, "1.0.1")
    with open(slot, "r+b") as f:
        invalidate(f.fileno())
    assert slot.read_bytes()[:-RECORD_SIZE] == b"\x5a" * (len(slot.read_bytes()) - RECORD_SIZE)
    assert slot.read_bytes()[-RECORD_SIZE:] == bytes(RECORD_SIZE)
    assert read_identity(slot) == (None, None)
    write_at(slot, 0, legacy_header("1.0.0"))
    with open(slot, "r+b") as f:
        invalidate(f.fileno())
    assert slot.read_bytes()[:4096] == bytes(4096)
    assert read_identity(slot) == (None, None)


def test_an_identity_whose_image_would_overlap_the_record_is_not_written(
        tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3", size=8192)
    with open(slot, "r+b") as f, pytest.raises(ReleaseError, match="overlaps the record"):
        write_identity(f.fileno(), SlotIdentity("1.0.1", 4097, SHA, "stable", 1, "t"))
    assert read_identity(slot) == (None, None)


def test_verify_rehashes_the_first_size_bytes_against_the_record(tmp_path: Path) -> None:
    slot = slot_file(tmp_path / "sda3", fill=b"\x11")
    claim(slot, "1.0.1", size=10_000)
    assert verify_slot(slot).state == "ok"
    write_at(slot, 10_000, b"\x22")  # past the image: not part of it
    assert verify_slot(slot).state == "ok"
    write_at(slot, 9_999, b"\x22")
    check = verify_slot(slot)
    assert check.state == "mismatch" and "the first 10000 bytes do not match 1.0.1" in check.message
    assert verify_slot(slot_file(tmp_path / "empty")).state == "empty"


def test_verify_of_a_slot_that_cannot_be_read_is_a_problem_not_an_exception(
        tmp_path: Path) -> None:
    check = verify_slot(tmp_path)  # a directory: open() fails as on an I/O error
    assert check.state == "problem" and check.failed
    assert check.message.startswith(f"{tmp_path}: cannot read the slot (")


# ---- failpoints -----------------------------------------------------------------------------

def test_failpoints_parse_name_kill_at_n_and_name_a_bad_item() -> None:
    assert failpoints.parse("install.invalidated=kill@1, install.block-written=kill@18") == {
        "install.invalidated": (1, "kill"), "install.block-written": (18, "kill")}
    assert failpoints.parse("") == {}
    with pytest.raises(ValueError, match=r"KRUXOS_FAILPOINTS: 'install.x=kill@0' is not"):
        failpoints.parse("install.x=kill@0")
