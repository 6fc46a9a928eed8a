"""The slot identity: which release a slot holds, in the last 4 KiB of the slot itself.

A slot (a root partition, or a slot file in the simulator) holds a plain
filesystem image from byte 0, exactly as the OS build made it: ext4 and erofs
keep their superblock at 1024, squashfs and vfat at 0, so nothing of ours may
sit there. The identity lives in the **last 4096 bytes of the slot** instead,
which no filesystem image of a smaller size touches, which ``mount`` and
``blkid`` ignore, and which is read with one seek, without mounting anything.

The device writes it, not the publisher: it is made from the signed metadata
of the release just installed (version, image size, image SHA-256, channel,
metadata serial) plus the time, and only the device knows where its partition
ends. The record (format 1)::

    offset 0     KRUXOS-SLOT 1\\n            magic and format number
                 version=1.0.1\\n             key=value lines, UTF-8
                 size=3145728\\n              bytes of the image, from byte 0 of the slot
                 sha256=<64 hex>\\n           signed SHA-256 of those bytes
                 channel=stable\\n            the channel whose metadata signed them
                 serial=7\\n                  that metadata's serial
                 written=2030-05-01T12:00:00Z\\n
                 \\0 ... to offset 4032
    offset 4032  <64 hex>                    SHA-256 of bytes 0..4031 (the record's checksum)

Unknown keys are ignored; a change a reader must understand gets a new format
number, which older readers name as a problem instead of guessing.

The lifecycle is RAUC's mark-bad-before-write: :func:`invalidate` destroys
the record (durably) before the first block of a new image is written, and
:func:`write_identity` writes it only after the image is complete and read
back, so a half-written slot never claims a release, old or new.

Slots written before this layout began with a 4 KiB ``KRUXOS-IMAGE 1`` header
at byte 0. A slot with no record whose first bytes are such a header is read
as a *legacy* identity (version only: there is no signed size or SHA-256 to
check its bytes against), so an upgraded device keeps knowing its slots.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReleaseError
from reconciler.release.metadata import Release

RECORD_SIZE = 4096
FORMAT = 1
MAGIC = b"KRUXOS-SLOT "
_TEXT = RECORD_SIZE - 64  # the key=value text; the checksum's 64 hex digits follow
_MAGIC_LINE = re.compile(rb"^KRUXOS-SLOT ([0-9]{1,9})\n")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_VALUE = 128
#: The old layout's header at byte 0 of a slot (read only, never written any more).
LEGACY_MAGIC = b"KRUXOS-IMAGE 1\n"
LEGACY_SIZE = 4096
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Origin:
    """Where the signed facts about an installed image came from."""

    channel: str
    serial: int


@dataclass(frozen=True)
class SlotIdentity:
    """The release a slot holds, as its own bytes say.

    ``legacy``: read from an old-layout header at byte 0; only ``version`` is known.
    """

    version: str
    size: int = 0
    sha256: str = ""
    channel: str = ""
    serial: int = 0
    written: str = ""
    legacy: bool = False

    @classmethod
    def of(cls, release: Release, origin: Origin, written: str) -> SlotIdentity:
        """``release`` as ``origin``'s metadata signed it, written at ``written``."""
        return cls(release.version, release.size, release.sha256, origin.channel,
                   origin.serial, written)


def _value(key: str, value: str) -> str:
    if not value or len(value) > _MAX_VALUE or not value.isprintable():
        raise ReleaseError(f"slot identity: {key} {value[:40]!r} is not 1 to {_MAX_VALUE} "
                           "printable characters")
    return value


def encode_identity(identity: SlotIdentity) -> bytes:
    """The 4096 record bytes for ``identity`` (refused when a field cannot be stored)."""
    if identity.legacy:
        raise ReleaseError("slot identity: a legacy identity is never written")
    if identity.size < 1 or not _HEX64.match(identity.sha256) or identity.serial < 0:
        raise ReleaseError(f"slot identity: size {identity.size}, sha256 "
                           f"{identity.sha256[:16]!r}, serial {identity.serial} cannot be stored")
    fields = {"version": _value("version", identity.version), "size": str(identity.size),
              "sha256": identity.sha256, "channel": _value("channel", identity.channel),
              "serial": str(identity.serial), "written": _value("written", identity.written)}
    text = MAGIC + f"{FORMAT}\n".encode() + "".join(
        f"{key}={value}\n" for key, value in fields.items()).encode("utf-8")
    text += b"\0" * (_TEXT - len(text))
    return text + hashlib.sha256(text).hexdigest().encode("ascii")


def decode_identity(raw: bytes) -> tuple[SlotIdentity | None, str | None]:
    """Parse a record: the identity, or ``None`` and what is wrong (``None, None``: no record).

    Never raises: a slot's last 4 KiB are untrusted bytes like any other input.
    """
    if len(raw) != RECORD_SIZE:
        return None, f"its identity record is {len(raw)} bytes, not {RECORD_SIZE}"
    if not raw.strip(b"\0"):
        return None, None
    magic = _MAGIC_LINE.match(raw)
    if magic is None:
        return None, ("its last 4 KiB are not a KruxOS slot identity record "
                      "(a foreign or damaged slot)")
    if int(magic.group(1)) != FORMAT:
        return None, (f"its identity record is of format {int(magic.group(1))}; this version "
                      f"reads format {FORMAT}")
    if hashlib.sha256(raw[:_TEXT]).hexdigest().encode("ascii") != raw[_TEXT:]:
        return None, "its identity record is damaged (its checksum does not match)"
    return _fields(raw[magic.end():_TEXT].split(b"\0", 1)[0])


def _fields(text: bytes) -> tuple[SlotIdentity | None, str | None]:
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None, "its identity record is not UTF-8 text"
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    size, serial = fields.get("size", ""), fields.get("serial", "0")
    version, sha = fields.get("version", ""), fields.get("sha256", "")
    if not version or not size.isdigit() or not serial.isdigit() or not _HEX64.match(sha):
        return None, "its identity record lacks a valid version, size, sha256 or serial"
    channel, written = fields.get("channel", ""), fields.get("written", "")
    return SlotIdentity(version[:_MAX_VALUE], int(size), sha, channel[:_MAX_VALUE], int(serial),
                        written[:_MAX_VALUE]), None


def decode_legacy_header(raw: bytes) -> tuple[SlotIdentity | None, str | None]:
    """The old layout's header at byte 0: a legacy identity, or ``None`` (and why)."""
    if not raw.startswith(LEGACY_MAGIC):
        return None, None
    text = raw[len(LEGACY_MAGIC):LEGACY_SIZE].split(b"\0", 1)[0].decode("utf-8", "replace")
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    version = fields.get("VERSION", "")
    if not version:
        return None, "its first bytes start like an old KruxOS image header but name no version"
    return SlotIdentity(version[:_MAX_VALUE], legacy=True), None


def read_identity(path: Path) -> tuple[SlotIdentity | None, str | None]:
    """The release a slot's own bytes name, or why they name none; raises OSError.

    ``(None, None)`` is a slot that claims nothing: never written, being
    written, or refused. A missing slot file is one too.
    """
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if end < RECORD_SIZE:
                return None, (f"the slot is {end} bytes, smaller than its "
                              f"{RECORD_SIZE}-byte identity record")
            f.seek(end - RECORD_SIZE)
            identity, problem = decode_identity(f.read(RECORD_SIZE))
            if identity is not None or problem is not None:
                return identity, problem
            f.seek(0)
            return decode_legacy_header(f.read(LEGACY_SIZE))
    except FileNotFoundError:
        return None, None


def _end(fd: int) -> int:
    end = os.lseek(fd, 0, os.SEEK_END)
    if end < RECORD_SIZE:
        raise ReleaseError(f"the slot is {end} bytes, smaller than its "
                           f"{RECORD_SIZE}-byte identity record")
    return end


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def invalidate(fd: int) -> None:
    """Destroy the slot's identity durably: the end record, and an old-layout header.

    ``fd`` is the slot opened for reading and writing. Runs before the first
    block of a new image is written; after it the slot claims no release.
    """
    _pwrite_all(fd, bytes(RECORD_SIZE), _end(fd) - RECORD_SIZE)
    if os.pread(fd, len(LEGACY_MAGIC), 0) == LEGACY_MAGIC:
        _pwrite_all(fd, bytes(LEGACY_SIZE), 0)
    os.fsync(fd)


def write_identity(fd: int, identity: SlotIdentity) -> None:
    """Write the record into the slot's last 4 KiB and make it durable.

    Only after the image is complete and read back: from now on the slot claims it.
    """
    record = encode_identity(identity)
    end = _end(fd)
    if identity.size > end - RECORD_SIZE:
        raise ReleaseError(f"slot identity: an image of {identity.size} bytes overlaps the "
                           f"record at byte {end - RECORD_SIZE}")
    _pwrite_all(fd, record, end - RECORD_SIZE)
    os.fsync(fd)


def capacity(slot_size: int) -> int:
    """The largest image a slot of ``slot_size`` bytes holds beside its identity record."""
    return max(0, slot_size - RECORD_SIZE)


@dataclass(frozen=True)
class SlotCheck:
    """What :func:`verify_slot` found: ``state`` is ``ok``, ``mismatch``, ``empty``,
    ``unverifiable`` (a legacy identity) or ``problem`` (the identity cannot be read)."""

    state: str
    identity: SlotIdentity | None
    message: str

    @property
    def failed(self) -> bool:
        """The slot's bytes contradict or hide its identity."""
        return self.state in ("mismatch", "problem")


def verify_slot(path: Path) -> SlotCheck:
    """Re-hash the first ``size`` bytes of the slot against its identity's signed SHA-256.

    The page cache of the slot is dropped first, so the bytes come from the device.
    """
    try:
        identity, problem = read_identity(path)
    except OSError as exc:
        return SlotCheck("problem", None, f"{path}: cannot read the slot ({exc.strerror})")
    if identity is None:
        return SlotCheck("problem" if problem else "empty", None,
                         f"{path}: {problem}" if problem else f"{path}: claims no release")
    if identity.legacy:
        return SlotCheck("unverifiable", identity,
                         f"{path}: {identity.version} from an old-layout header at byte 0; "
                         "no signed size and SHA-256 to check the bytes against")
    try:
        digest, got = _hash_prefix(path, identity.size)
    except OSError as exc:
        return SlotCheck("problem", identity, f"{path}: cannot read the slot ({exc.strerror})")
    if got != identity.size or digest != identity.sha256:
        return SlotCheck("mismatch", identity,
                         f"{path}: the first {identity.size} bytes do not match {identity.version}"
                         f" (sha256 {digest[:16]}…, its identity says {identity.sha256[:16]}…)")
    return SlotCheck("ok", identity, f"{path}: {identity.version}, {identity.size} bytes, "
                                     f"sha256 {identity.sha256[:16]}… matches")


def _hash_prefix(path: Path, size: int) -> tuple[str, int]:
    """SHA-256 of the first ``size`` bytes of ``path`` read from the device, and bytes read."""
    digest, done = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while done < size:
            chunk = f.read(min(_HASH_CHUNK, size - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
    return digest.hexdigest(), done
