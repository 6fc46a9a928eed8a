"""Signed channel metadata: parse, check signatures, expiry and serial.

This module decides whether a ``metadata.json`` may be believed; it does no
I/O and reads no clock (``now`` and the remembered trust come in as
arguments). The format is described in ``docs/channel.md``. Checks run in the
order that keeps an attacker's bytes away from the rest of the code: JSON
shape, then signatures over the canonical bytes, and only then the signed
content (format, channel name, expiry, serial, releases).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from reconciler.errors import ReleaseError
from reconciler.semver import Version

FORMAT = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


def canonical_json(signed: Mapping[str, Any]) -> bytes:
    """The exact bytes a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and whole seconds, as the metadata spells times."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def semver_key(version: str) -> Version:
    """Sort key of a semantic version (prerelease < release), refusing anything else."""
    try:
        return Version(version)
    except ValueError as exc:
        raise ReleaseError(f"version {version!r} is not major.minor.patch[-prerelease]") from exc


@dataclass(frozen=True)
class Release:
    """One release as the signed metadata describes it."""

    version: str
    date: str
    changes: tuple[str, ...]
    image: str
    size: int
    sha256: str
    block_size: int
    blocks: tuple[str, ...]

    def block_range(self, index: int) -> tuple[int, int]:
        """Byte offsets ``[start, end)`` of block ``index``."""
        start = min(index * self.block_size, self.size)
        return start, min(start + self.block_size, self.size)

    def to_json(self) -> dict[str, Any]:
        """The release as it appears in ``signed.releases``."""
        return {
            "version": self.version, "date": self.date, "changes": list(self.changes),
            "image": self.image, "size": self.size, "sha256": self.sha256,
            "block_size": self.block_size, "blocks": list(self.blocks),
        }


@dataclass(frozen=True)
class ChannelMetadata:
    """Verified channel metadata; ``signed_by`` lists the keyids that vouched for it."""

    channel: str
    serial: int
    issued: datetime
    expires: datetime
    releases: tuple[Release, ...]
    signed_by: tuple[str, ...] = ()
    clock_note: str = ""

    def latest(self) -> Release | None:
        """The release with the highest version, ``None`` for an empty channel."""
        return max(self.releases, key=lambda r: semver_key(r.version), default=None)

    def find(self, version: str) -> Release | None:
        """The release named ``version``, if the channel lists it."""
        return next((r for r in self.releases if r.version == version), None)


def _fail(message: str) -> ReleaseError:
    return ReleaseError(f"channel metadata: {message}")


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(f"{where}{name}: expected {kind.__name__}, got {value!r}"[:300])
    return value


def _parse_time(text: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"{where}: {text!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise _fail(f"{where}: {text!r} has no time zone (write it in UTC with Z)")
    return moment.astimezone(UTC)


def _as_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC, the device's clock zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _decode_document(raw: bytes) -> tuple[dict[str, Any], list[Any]]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
        raise _fail("expected an object with a 'signed' object")
    signatures = doc.get("signatures", [])
    if not isinstance(signatures, list):
        raise _fail("'signatures' must be a list")
    return doc["signed"], signatures


def _check_one(entry: Any, payload: bytes, trusted: Mapping[str, VerifyKey],
               revoked: frozenset[str]) -> str | None:
    """``None`` when ``entry`` is a valid signature, else why not."""
    if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
        return "malformed signature entry"
    keyid = entry["keyid"].lower()
    if keyid in revoked:
        return f"key {keyid} is revoked"
    if keyid not in trusted:
        return f"key {keyid} is unknown (not among the trusted keys)"
    try:
        sig = base64.b64decode(str(entry.get("sig", "")), validate=True)
        trusted[keyid].verify(payload, sig)
    except (BadSignatureError, binascii.Error, ValueError):
        return f"bad signature by key {keyid}"
    return None


def check_signatures(signed: Mapping[str, Any], signatures: list[Any],
                     trusted: Mapping[str, VerifyKey], revoked: frozenset[str]) -> tuple[str, ...]:
    """The keyids of the valid signatures; raise with every reason when there is none."""
    if not signatures:
        raise _fail("missing signature (the metadata is not signed)")
    payload = canonical_json(signed)
    good, reasons = [], []
    for entry in signatures:
        reason = _check_one(entry, payload, trusted, revoked)
        if reason is None:
            good.append(str(entry["keyid"]).lower())
        else:
            reasons.append(reason)
    if not good:
        raise _fail("no valid signature from a trusted key: " + "; ".join(reasons))
    return tuple(good)


def _parse_release(obj: Any, index: int) -> Release:
    where = f"releases[{index}]."
    if not isinstance(obj, dict):
        raise _fail(f"releases[{index}]: expected an object")
    version = _field(obj, "version", str, where)
    semver_key(version)
    day = _field(obj, "date", str, where)
    try:
        date.fromisoformat(day)
    except ValueError as exc:
        raise _fail(f"{where}date: {day!r} is not YYYY-MM-DD") from exc
    changes = _field(obj, "changes", list, where)
    image = _field(obj, "image", str, where)
    if not _IMAGE_NAME.match(image) or image.startswith("."):
        raise _fail(f"{where}image: {image!r} must be a plain file name")
    size, block_size = _field(obj, "size", int, where), _field(obj, "block_size", int, where)
    if size <= 0 or block_size <= 0:
        raise _fail(f"{where}size and block_size must be positive")
    digests = [_field(obj, "sha256", str, where), *_field(obj, "blocks", list, where)]
    if not all(isinstance(d, str) and _HEX64.match(d) for d in digests):
        raise _fail(f"{where}sha256 and blocks must be lowercase hex SHA-256 digests")
    if len(digests) - 1 != -(-size // block_size):
        raise _fail(f"{where}blocks: {len(digests) - 1} hashes for {size} bytes "
                    f"in blocks of {block_size}")
    return Release(version, day, tuple(str(c) for c in changes), image, size,
                   digests[0], block_size, tuple(digests[1:]))


def _judge_time(expires: datetime, now: datetime, trusted_time: datetime | None) -> str:
    """Raise when expired; return a note when the device clock is not believed."""
    note = ""
    judged = now
    if trusted_time is not None and now < trusted_time:
        judged = trusted_time
        note = (f"device clock ({format_time(now)}) is behind the last trusted time "
                f"({format_time(trusted_time)}); expiry judged against the trusted time")
    if judged > expires:
        raise _fail(f"expired at {format_time(expires)}" + (f" ({note})" if note else
                    f" (now {format_time(now)})"))
    return note


def parse_signed(signed: Mapping[str, Any]) -> tuple[str, int, datetime, datetime,
                                                     tuple[Release, ...]]:
    """The signed fields, shape-checked (call only after the signatures passed)."""
    fmt = signed.get("format", FORMAT)
    if fmt != FORMAT:
        raise _fail(f"format {fmt!r} is not supported (this device reads format {FORMAT})")
    channel = _field(signed, "channel", str, "")
    serial = _field(signed, "serial", int, "")
    issued = _parse_time(_field(signed, "issued", str, ""), "issued")
    expires = _parse_time(_field(signed, "expires", str, ""), "expires")
    releases = tuple(_parse_release(r, i) for i, r in
                     enumerate(_field(signed, "releases", list, "")))
    if len({r.version for r in releases}) != len(releases):
        raise _fail("a version is listed twice")
    return channel, serial, issued, expires, releases


def verify_metadata(raw: bytes, trusted: Mapping[str, VerifyKey], revoked: frozenset[str],
                    now: datetime, min_serial: int | None, trusted_time: datetime | None,
                    *, channel: str | None = None) -> ChannelMetadata:
    """Believe ``raw`` only if a trusted, unrevoked key signed it and it is fresh.

    ``min_serial`` is the highest serial this device accepted before (metadata
    rollback protection), ``trusted_time`` the newest time it could trust; a
    device clock behind that time is not believed. ``channel`` pins the name.
    """
    now = _as_utc(now)
    trusted_time = None if trusted_time is None else _as_utc(trusted_time)
    signed, signatures = _decode_document(raw)
    signed_by = check_signatures(signed, signatures, trusted, revoked)
    name, serial, issued, expires, releases = parse_signed(signed)
    if channel is not None and name != channel:
        raise _fail(f"is for channel {name!r}, this device follows {channel!r}")
    note = _judge_time(expires, now, trusted_time)
    if min_serial is not None and serial < min_serial:
        raise _fail(f"serial {serial} is lower than {min_serial}, the last one accepted "
                    "(metadata rollback)")
    return ChannelMetadata(name, serial, issued, expires, releases, signed_by, note)
