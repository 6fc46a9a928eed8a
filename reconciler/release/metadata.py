"""Signed channel metadata: parse, check signatures, expiry and serial.

This module decides whether a ``metadata.json`` may be believed; it does no
I/O and reads no clock (``now`` and the remembered trust come in as
arguments). The format is described in ``docs/channel.md``. Checks run in the
order that keeps an attacker's bytes away from the rest of the code: JSON
shape, then signatures over the canonical bytes, and only then the signed
content (format, channel name, expiry, serial, releases).

The format is versioned so that an older device cannot misread newer
metadata: a document whose ``format`` is newer than :data:`NEWEST_FORMAT` is
refused whole, and a release lists in ``requires`` the features a device must
implement to install it (which ones this device implements is
:mod:`reconciler.release.features`' business, not the parser's).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from reconciler.components import Components, ServicePart
from reconciler.errors import ReleaseError
from reconciler.quoting import excerpt
from reconciler.release.rollout import Rollout, parse_rollout
from reconciler.semver import Version

#: The newest metadata format this device reads (every format from 1 up is read).
NEWEST_FORMAT = 2
#: The format that introduced ``requires``: a format-1 reader would ignore the field.
REQUIRES_FORMAT = 2
#: At most this many features per release, each a name of at most this many characters.
MAX_REQUIRES = 32
MAX_FEATURE_LENGTH = 64
#: A feature name: lowercase words of letters and digits joined by ``-`` or ``.``.
FEATURE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-.][a-z0-9]+)*$")
#: The largest metadata document parsed (the client reads no more than this either).
MAX_BYTES = 16 << 20
#: The deepest nesting of arrays and objects; real metadata is five levels deep.
MAX_DEPTH = 32
#: Signatures checked at most; each costs a verification, so more is refused.
MAX_SIGNATURES = 16
#: Serials, sizes and other counts above this are refused (they fit a signed 64-bit integer).
MAX_INTEGER = (1 << 63) - 1
#: The largest block a release may use: the installer holds a handful of blocks in memory.
MAX_BLOCK_SIZE = 64 << 20
#: Longest version string, channel name and time string accepted.
MAX_VERSION_LENGTH = 128
MAX_NAME_LENGTH = 128
_MAX_TIME_LENGTH = 64
_MAX_LINE = 1000
#: Characters of a bad value quoted in a message.
QUOTE_LIMIT = 80
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,255}$")
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_KEYID = re.compile(r"^[0-9a-fA-F]{1,64}$")
#: The feature a release with service artifacts requires (``docs/channel.md``).
SERVICE_FEATURE = "service-artifacts"
#: The feature a release with a container image requires (``docs/containers.md``).
CONTAINER_FEATURE = "container-image"
#: A container image named by its content: ``REPOSITORY@sha256:HEX`` (no tag: a tag moves).
CONTAINER_IMAGE = re.compile(r"^(?P<repository>(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?"
                             r"[a-z0-9]+(?:[._/-][a-z0-9]+)*)@(?P<digest>sha256:[0-9a-f]{64})$")
#: At most this many service artifacts per release, each named by at most this many characters.
MAX_SERVICES = 32
MAX_SERVICE_NAME = 64
#: A service name: it becomes a directory of the device's service store and a unit's name,
#: so lowercase letters and digits joined by single ``-`` or ``_``, nothing else.
SERVICE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
#: The feature a release requires once a service declares its data (``data_dir``) or says
#: it migrates data (``migrates_data``): a device that would ignore either must skip it.
SERVICE_DATA_FEATURE = "service-data"
#: A service's data directory, relative to the device's service data root: one to four
#: plain names joined by ``/`` (no ``..``, no leading ``/`` or ``.``).
_DATA_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
DATA_DIR = re.compile(rf"^{_DATA_NAME}(?:/{_DATA_NAME}){{0,3}}$")


def canonical_json(signed: Mapping[str, Any]) -> bytes:
    """The exact bytes a signature covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and whole seconds, as the metadata spells times."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def quote(value: Any) -> str:
    """A bad value as a message shows it: at most :data:`QUOTE_LIMIT` characters of it.

    Never the ``repr`` of a whole container: a hostile document may hold megabytes.
    """
    if isinstance(value, str):
        return excerpt(value, QUOTE_LIMIT)
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= QUOTE_LIMIT else f"a number of {len(text)} digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return type(value).__name__


def semver_key(version: str) -> Version:
    """Sort key of a semantic version (prerelease < release), refusing anything else."""
    if len(version) > MAX_VERSION_LENGTH:
        raise ReleaseError(f"version {quote(version)} is longer than {MAX_VERSION_LENGTH} "
                           "characters")
    try:
        return Version(version)
    except ValueError as exc:
        raise ReleaseError(f"version {quote(version)} is not major.minor.patch[-prerelease]"
                           ) from exc


@dataclass(frozen=True)
class ServiceArtifact:
    """One service's artifact in a release: a file of the channel, hashed like the root image.

    ``version`` is the service's own version (shown to people); what the device
    compares is the content (``sha256``), and what it installs is verified
    block by block against ``blocks`` before it is written.
    """

    name: str
    version: str
    file: str
    size: int
    sha256: str
    block_size: int
    blocks: tuple[str, ...]
    #: The service's data directory, relative to the device's service data root: copied
    #: before the switch, put back on a restore (``docs/channel.md``, "Service data").
    data_dir: str | None = None
    #: The version migrates data it cannot give back: without ``data_dir`` no rollback
    #: goes past it once it has started.
    migrates_data: bool = False

    def block_range(self, index: int) -> tuple[int, int]:
        """Byte offsets ``[start, end)`` of block ``index``."""
        start = min(index * self.block_size, self.size)
        return start, min(start + self.block_size, self.size)

    @property
    def irreversible(self) -> bool:
        """It migrates data and declares no data directory to copy: no way back once run."""
        return self.migrates_data and self.data_dir is None

    def to_json(self) -> dict[str, Any]:
        """The artifact as it appears in ``signed.releases[].services`` (``data_dir`` and
        ``migrates_data`` only when set)."""
        doc: dict[str, Any] = {
            "name": self.name, "version": self.version, "file": self.file,
            "size": self.size, "sha256": self.sha256, "block_size": self.block_size,
            "blocks": list(self.blocks)}
        if self.data_dir is not None:
            doc["data_dir"] = self.data_dir
        if self.migrates_data:
            doc["migrates_data"] = True
        return doc


@dataclass(frozen=True)
class Release:
    """One release as the signed metadata describes it.

    A release for slot devices carries a root image (``image``, ``size``,
    ``sha256``, ``block_size``, ``blocks``). A container-only release carries
    only :attr:`container_image`: its ``image`` and ``sha256`` are empty, its
    sizes 0, it has no blocks, and nothing of it can be written into a slot
    (:attr:`has_root_image`).
    """

    version: str
    date: str
    changes: tuple[str, ...]
    image: str
    size: int
    sha256: str
    block_size: int
    blocks: tuple[str, ...]
    requires: tuple[str, ...] = ()
    services: tuple[ServiceArtifact, ...] = ()
    #: The container image of this release, ``REPOSITORY@sha256:HEX``, for devices with
    #: ``runtime: docker``: they pull it by this signed digest and nothing else.
    container_image: str | None = None
    #: Its phased rollout (``docs/rollout.md``): ``None`` offers it to every device at once.
    rollout: Rollout | None = None

    @property
    def has_root_image(self) -> bool:
        """Whether a slot device can install it: a container-only release has no root image."""
        return self.image != ""

    @property
    def image_digest(self) -> str | None:
        """``sha256:HEX`` of :attr:`container_image`, or ``None``."""
        return self.container_image.partition("@")[2] if self.container_image else None

    def block_range(self, index: int) -> tuple[int, int]:
        """Byte offsets ``[start, end)`` of block ``index``."""
        start = min(index * self.block_size, self.size)
        return start, min(start + self.block_size, self.size)

    def components(self) -> Components | None:
        """What the release is made of, as the core compares it
        (:func:`reconciler.components.update_needed`); ``None`` without a root image (a
        container-only release is compared by its image digest, not by slot content)."""
        if not self.has_root_image:
            return None
        return Components(self.version, self.sha256, self.size,
                          {s.name: ServicePart(s.version, s.sha256, s.size)
                           for s in self.services})

    def to_json(self) -> dict[str, Any]:
        """The release as it appears in ``signed.releases`` (the root image's fields only
        with a root image; ``requires``, ``services`` and ``container_image`` only when
        set)."""
        doc: dict[str, Any] = {
            "version": self.version, "date": self.date, "changes": list(self.changes)}
        if self.has_root_image:
            doc.update(image=self.image, size=self.size, sha256=self.sha256,
                       block_size=self.block_size, blocks=list(self.blocks))
        if self.requires:
            doc["requires"] = list(self.requires)
        if self.services:
            doc["services"] = [service.to_json() for service in self.services]
        if self.container_image:
            doc["container_image"] = self.container_image
        if self.rollout is not None:
            doc["rollout"] = self.rollout.to_json()
        return doc


#: The fields of a release this version writes and reads; a publisher signs no other.
RELEASE_FIELDS = frozenset({"version", "date", "changes", "image", "size", "sha256",
                            "block_size", "blocks", "requires", "services",
                            "container_image", "rollout"})


def format_for(requires: Iterable[Sequence[str]]) -> int:
    """The lowest format that says what releases need, given each one's ``requires``.

    2 once a release requires anything, else 1. Writing the lowest sufficient
    format keeps devices that read only format 1 on a channel that needs
    nothing new, and refuses them the whole channel as soon as a release
    carries a requirement they would otherwise ignore.
    """
    return REQUIRES_FORMAT if any(requires) else 1


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
    format: int = 1

    def latest(self) -> Release | None:
        """The release with the highest version, ``None`` for an empty channel.

        The publisher's view: a device takes the newest release it can install
        (:func:`reconciler.release.features.newest_installable`).
        """
        return max(self.releases, key=lambda r: semver_key(r.version), default=None)

    def find(self, version: str) -> Release | None:
        """The release named ``version``, if the channel lists it."""
        return next((r for r in self.releases if r.version == version), None)


def _fail(message: str) -> ReleaseError:
    return ReleaseError(f"channel metadata: {message}")


_KINDS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = "nothing" if name not in obj else quote(value)
        raise _fail(f"{where}{name}: expected {_KINDS.get(kind, kind.__name__)}, got {got}")
    return value


def _count(obj: Mapping[str, Any], name: str, where: str, minimum: int,
           maximum: int = MAX_INTEGER) -> int:
    """An integer field within ``[minimum, maximum]``: sizes, serials, block sizes."""
    value: int = _field(obj, name, int, where)
    if not minimum <= value <= maximum:
        raise _fail(f"{where}{name}: {quote(value)} is out of range "
                    f"({minimum} to {maximum})")
    return value


def _parse_time(text: str, where: str) -> datetime:
    try:
        if len(text) > _MAX_TIME_LENGTH:
            raise ValueError("too long")
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _fail(f"{where}: {quote(text)} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise _fail(f"{where}: {quote(text)} has no time zone (write it in UTC with Z)")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise _fail(f"{where}: {quote(text)} is out of range") from exc


def _as_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC, the device's clock zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _finite(text: str) -> float:
    """JSON numbers with a fraction; ``1e999`` (infinity) is not a number a signer wrote."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:QUOTE_LIMIT]} is out of range")
    return number


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(doc: Any) -> int:
    """How deeply arrays and objects nest in ``doc`` (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, level + 1) for item in items if isinstance(item, dict | list))
    return deepest


def parse_json(raw: bytes) -> Any:
    """The JSON value of ``raw`` within the size and depth limits, or a ``ReleaseError``."""
    if len(raw) > MAX_BYTES:
        raise _fail(f"{len(raw)} bytes, more than the {MAX_BYTES} accepted")
    try:
        doc = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError as exc:
        raise _fail(f"nested more than {MAX_DEPTH} levels deep") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the digit limit
        raise _fail(f"not valid JSON ({str(exc)[:2 * QUOTE_LIMIT]})") from exc
    if _depth(doc) > MAX_DEPTH:
        raise _fail(f"nested more than {MAX_DEPTH} levels deep")
    return doc


def _decode_document(raw: bytes) -> tuple[dict[str, Any], list[Any]]:
    doc = parse_json(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
        raise _fail("expected an object with a 'signed' object")
    signatures = doc.get("signatures", [])
    if not isinstance(signatures, list):
        raise _fail("'signatures' must be a list")
    if len(signatures) > MAX_SIGNATURES:
        raise _fail(f"{len(signatures)} signatures, more than the {MAX_SIGNATURES} checked")
    return doc["signed"], signatures


def _check_one(entry: Any, payload: bytes, trusted: Mapping[str, VerifyKey],
               revoked: frozenset[str]) -> str | None:
    """``None`` when ``entry`` is a valid signature, else why not."""
    if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
        return "malformed signature entry"
    if not _KEYID.match(entry["keyid"]) or not isinstance(entry.get("sig"), str):
        return f"malformed signature entry (keyid {quote(entry['keyid'])})"
    keyid = entry["keyid"].lower()
    if keyid in revoked:
        return f"key {keyid} is revoked"
    if keyid not in trusted:
        return f"key {keyid} is unknown (not among the trusted keys)"
    try:
        sig = base64.b64decode(entry["sig"], validate=True)
        trusted[keyid].verify(payload, sig)
    except (BadSignatureError, binascii.Error, ValueError):
        return f"bad signature by key {keyid}"
    return None


def check_signatures(signed: Mapping[str, Any], signatures: list[Any],
                     trusted: Mapping[str, VerifyKey], revoked: frozenset[str]) -> tuple[str, ...]:
    """The keyids of the valid signatures; raise with every reason when there is none."""
    if not signatures:
        raise _fail("missing signature (the metadata is not signed)")
    try:
        payload = canonical_json(signed)
    except UnicodeEncodeError as exc:  # a lone surrogate, written "\\ud800" in the file
        raise _fail("the signed content holds text that is not Unicode (a lone surrogate)"
                    ) from exc
    good, reasons = [], []
    for entry in signatures:
        reason = _check_one(entry, payload, trusted, revoked)
        if reason is None:
            good.append(str(entry["keyid"]).lower())
        else:
            reasons.append(reason)
    if not good:
        raise _fail("no valid signature from a trusted key: " + "; ".join(reasons[:4])
                    + (f"; and {len(reasons) - 4} more" if len(reasons) > 4 else ""))
    return tuple(good)


def _parse_release(obj: Any, index: int) -> Release:
    where = f"releases[{index}]."
    if not isinstance(obj, dict):
        raise _fail(f"releases[{index}]: expected an object")
    version = _field(obj, "version", str, where)
    try:
        semver_key(version)
    except ReleaseError as exc:
        raise _fail(f"{where}{exc}") from exc
    day = _field(obj, "date", str, where)
    try:
        if not _DAY.match(day):
            raise ValueError(day)
        date.fromisoformat(day)
    except ValueError as exc:
        raise _fail(f"{where}date: {quote(day)} is not YYYY-MM-DD") from exc
    changes = _field(obj, "changes", list, where)
    if not all(isinstance(line, str) and len(line) <= _MAX_LINE
               and line.replace("\t", " ").isprintable()
               for line in changes):
        raise _fail(f"{where}changes: expected a list of lines of printable text "
                    f"(at most {_MAX_LINE} characters each; they are shown on terminals)")
    requires = parse_requires(obj.get("requires", []), f"{where}requires")
    services = parse_services(obj.get("services", []), f"{where}services", requires)
    container = parse_container_image(obj.get("container_image"), f"{where}container_image",
                                      requires)
    rollout = parse_rollout(obj.get("rollout"), f"{where}rollout", requires)
    if "image" not in obj:
        check_container_only(obj, where, container, services)
        return Release(version, day, tuple(changes), "", 0, "", 0, (), requires, (),
                       container, rollout)
    image = _field(obj, "image", str, where)
    if not _IMAGE_NAME.match(image) or image.startswith("."):
        raise _fail(f"{where}image: {quote(image)} must be a plain file name")
    size = _count(obj, "size", where, 1)
    block_size = _count(obj, "block_size", where, 1, MAX_BLOCK_SIZE)
    whole, blocks = _digests(obj, where, size, block_size)
    return Release(version, day, tuple(changes), image, size, whole, block_size, blocks,
                   requires, services, container, rollout)


#: The fields of a root image: all of them, or none (a container-only release).
ROOT_IMAGE_FIELDS = ("image", "size", "sha256", "block_size", "blocks")


def check_container_only(obj: Mapping[str, Any], where: str, container: str | None,
                          services: Sequence[ServiceArtifact]) -> None:
    """A release without ``image`` is a container-only release: it names a container image,
    carries no other root image field and no service artifact (services ride on a root
    image). Anything else is a damaged release, refused with the whole document."""
    stray = [name for name in ROOT_IMAGE_FIELDS if name in obj]
    if stray:
        raise _fail(f"{where}image: missing, but {', '.join(stray)} given (a root image names "
                    "all of image, size, sha256, block_size and blocks; a container-only "
                    "release none of them)")
    if container is None:
        raise _fail(f"{where}image: expected a string, got nothing (only a release with a "
                    "container_image may have no root image)")
    if services:
        raise _fail(f"{where}services: a container-only release carries no service artifact "
                    "(service artifacts ride on a root image)")


def parse_container_image(value: Any, where: str, requires: Sequence[str]) -> str | None:
    """``container_image``: ``REPOSITORY@sha256:HEX``, and the release must require
    :data:`CONTAINER_FEATURE` (a device that cannot run containers skips it). Shared with
    the publisher (``kruxos release add --container-image``)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 400 or not CONTAINER_IMAGE.match(value):
        raise _fail(f"{where}: {quote(value)} is not REPOSITORY@sha256:HEX (an image named "
                    "by its digest; a tag can be moved)")
    if CONTAINER_FEATURE not in requires:
        raise _fail(f"{where}: a release with a container image must require "
                    f"{CONTAINER_FEATURE!r} (devices that cannot run containers skip it)")
    return value


def parse_requires(value: Any, where: str) -> tuple[str, ...]:
    """``requires``: a list of at most :data:`MAX_REQUIRES` distinct feature names.

    Shared with the publisher (``kruxos release add --requires``), so a name the
    tooling accepts is one every device parses.
    """
    if not isinstance(value, list):
        raise _fail(f"{where}: expected a list of feature names, got {quote(value)}")
    if len(value) > MAX_REQUIRES:
        raise _fail(f"{where}: {len(value)} features, more than the {MAX_REQUIRES} accepted")
    for name in value:
        if not (isinstance(name, str) and len(name) <= MAX_FEATURE_LENGTH
                and FEATURE_NAME.match(name)):
            raise _fail(f"{where}: {quote(name)} is not a feature name (lowercase letters and "
                        f"digits joined by '-' or '.', at most {MAX_FEATURE_LENGTH} characters)")
    if len(set(value)) != len(value):
        raise _fail(f"{where}: a feature is listed twice")
    return tuple(value)


def parse_services(value: Any, where: str,
                   requires: Sequence[str]) -> tuple[ServiceArtifact, ...]:
    """``services``: at most :data:`MAX_SERVICES` artifacts of distinct names and files.

    A release that lists any must also require :data:`SERVICE_FEATURE`: a device
    that reads format 2 but cannot update services must skip the release, not
    install its root image as if the list were not there. Shared with the
    publisher, so what ``kruxos release sign`` signs is what every device parses.
    """
    if not isinstance(value, list):
        raise _fail(f"{where}: expected a list of service artifacts, got {quote(value)}")
    if len(value) > MAX_SERVICES:
        raise _fail(f"{where}: {len(value)} services, more than the {MAX_SERVICES} accepted")
    if value and SERVICE_FEATURE not in requires:
        raise _fail(f"{where}: a release with service artifacts must require "
                    f"{SERVICE_FEATURE!r} (devices that cannot update services skip it)")
    services = tuple(_parse_service(obj, f"{where}[{i}].") for i, obj in enumerate(value))
    if any(s.data_dir is not None or s.migrates_data for s in services) \
            and SERVICE_DATA_FEATURE not in requires:
        raise _fail(f"{where}: a release whose services declare data_dir or migrates_data "
                    f"must require {SERVICE_DATA_FEATURE!r} (devices that would ignore them "
                    "skip it)")
    if len({s.name for s in services}) != len(services):
        raise _fail(f"{where}: a service is listed twice")
    if len({s.file for s in services}) != len(services):
        raise _fail(f"{where}: two services name the same file")
    return services


def _parse_service(obj: Any, where: str) -> ServiceArtifact:
    if not isinstance(obj, dict):
        raise _fail(f"{where.rstrip('.')}: expected an object")
    name = _field(obj, "name", str, where)
    if len(name) > MAX_SERVICE_NAME or not SERVICE_NAME.match(name):
        raise _fail(f"{where}name: {quote(name)} is not a service name (lowercase letters and "
                    f"digits joined by '-' or '_', at most {MAX_SERVICE_NAME} characters)")
    version = _field(obj, "version", str, where)
    try:
        semver_key(version)
    except ReleaseError as exc:
        raise _fail(f"{where}{exc}") from exc
    file = _field(obj, "file", str, where)
    if not _IMAGE_NAME.match(file) or file.startswith("."):
        raise _fail(f"{where}file: {quote(file)} must be a plain file name")
    size = _count(obj, "size", where, 1)
    block_size = _count(obj, "block_size", where, 1, MAX_BLOCK_SIZE)
    whole, blocks = _digests(obj, where, size, block_size)
    data_dir = obj.get("data_dir")
    if data_dir is not None and not (isinstance(data_dir, str) and DATA_DIR.match(data_dir)
                                     and ".." not in data_dir.split("/")):
        raise _fail(f"{where}data_dir: {quote(data_dir)} must be a relative path of plain "
                    "names (the service's directory under the device's service data root)")
    migrates = obj.get("migrates_data", False)
    if not isinstance(migrates, bool):
        raise _fail(f"{where}migrates_data: expected true or false, got {quote(migrates)}")
    return ServiceArtifact(name, version, file, size, whole, block_size, blocks, data_dir,
                           migrates)


def _digests(obj: Mapping[str, Any], where: str, size: int,
             block_size: int) -> tuple[str, tuple[str, ...]]:
    """``sha256`` and ``blocks``: lowercase SHA-256 hex, exactly one hash per block."""
    whole, blocks = _field(obj, "sha256", str, where), _field(obj, "blocks", list, where)
    if not all(isinstance(d, str) and _HEX64.match(d) for d in (whole, *blocks)):
        raise _fail(f"{where}sha256 and blocks must be lowercase hex SHA-256 digests "
                    "(64 characters each)")
    if len(blocks) != -(-size // block_size):
        raise _fail(f"{where}blocks: {len(blocks)} hashes for {size} bytes "
                    f"in blocks of {block_size}")
    return whole, tuple(blocks)


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


def _parse_format(signed: Mapping[str, Any]) -> int:
    """The document's format (absent: 1); one newer than this device reads is refused.

    Checked before any other signed field: a newer format may mean anything by them.
    """
    fmt = signed.get("format", 1)
    if type(fmt) is not int or fmt < 1:
        raise _fail(f"format {quote(fmt)} is not supported (this device reads formats 1 to "
                    f"{NEWEST_FORMAT})")
    if fmt > NEWEST_FORMAT:
        raise _fail(f"format {quote(fmt)} is newer than this device reads (the newest it "
                    f"reads is format {NEWEST_FORMAT}); the device needs a newer KruxOS first")
    return fmt


def parse_signed(signed: Mapping[str, Any]) -> tuple[int, str, int, datetime, datetime,
                                                     tuple[Release, ...]]:
    """The signed fields, shape-checked (call only after the signatures passed).

    Fields this version does not know are ignored, at the top and in a release:
    by the rule of ``docs/channel.md`` a field that changes what a device must
    do comes with a ``requires`` entry or a format bump, never on its own.
    """
    fmt = _parse_format(signed)
    channel = _field(signed, "channel", str, "")
    if not 0 < len(channel) <= MAX_NAME_LENGTH or not channel.isprintable():
        raise _fail(f"channel: {quote(channel)} is not a name (1 to {MAX_NAME_LENGTH} "
                    "printable characters)")
    serial = _count(signed, "serial", "", 0)
    issued = _parse_time(_field(signed, "issued", str, ""), "issued")
    expires = _parse_time(_field(signed, "expires", str, ""), "expires")
    releases = tuple(_parse_release(r, i) for i, r in
                     enumerate(_field(signed, "releases", list, "")))
    if len({r.version for r in releases}) != len(releases):
        raise _fail("a version is listed twice")
    return fmt, channel, serial, issued, expires, releases


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
    fmt, name, serial, issued, expires, releases = parse_signed(signed)
    if channel is not None and name != channel:
        raise _fail(f"is for channel {name!r}, this device follows {channel!r}")
    note = _judge_time(expires, now, trusted_time)
    if min_serial is not None and serial < min_serial:
        raise _fail(f"serial {serial} is lower than {min_serial}, the last one accepted "
                    "(metadata rollback)")
    return ChannelMetadata(name, serial, issued, expires, releases, signed_by, note, fmt)
