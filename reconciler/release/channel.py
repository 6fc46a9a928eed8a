"""The publisher's side of a channel: add images, sign, check what devices will see.

A channel directory holds three kinds of files (``docs/channel.md``), each
mode 0644 whatever the umask, so any web server user can serve them::

    metadata.json          signed; the only file devices believe
    kruxos-VERSION.img     the images, named by version
    NAME-VERSION.svc       service artifacts, named by service and its version
    draft.json             the publisher's unsigned working list (devices ignore it)

``add`` copies the image in and records it in ``draft.json``; ``sign`` turns
the draft into a new ``metadata.json`` with a higher serial. Every file is
replaced atomically, and an image is complete before any signed metadata names
it, so a web server can serve the directory while it is being published.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.durable import PUBLIC_MODE, atomic_write_json, create_file, fsync_dir, read_json
from reconciler.errors import ConfigError, KruxosError, ReleaseError
from reconciler.release.identity import LEGACY_MAGIC
from reconciler.release.keys import keyid_of, load_revoked, load_signing_key, load_trusted_keys
from reconciler.release.metadata import (
    CONTAINER_FEATURE,
    MAX_SERVICE_NAME,
    RELEASE_FIELDS,
    SERVICE_DATA_FEATURE,
    SERVICE_FEATURE,
    SERVICE_NAME,
    ChannelMetadata,
    Release,
    ServiceArtifact,
    canonical_json,
    check_container_only,
    format_for,
    format_time,
    parse_container_image,
    parse_requires,
    parse_services,
    semver_key,
    verify_metadata,
)
from reconciler.release.rollout import ROLLOUT_FEATURE, Rollout, parse_rollout

METADATA_FILE = "metadata.json"
DRAFT_FILE = "draft.json"
# 1 MiB: 32 bytes of hash per MiB keeps the metadata small (a 2 GiB image lists
# 2048 hashes, ~140 KiB of JSON); the installer holds one block in memory; and a
# later delta update re-sends whole blocks, so 1 MiB is the granularity of change.
DEFAULT_BLOCK_SIZE = 1 << 20


def image_name(version: str) -> str:
    """The file name of ``version``'s image inside a channel."""
    return f"kruxos-{version}.img"


def service_file_name(name: str, version: str) -> str:
    """The file name of service ``name``'s artifact ``version`` inside a channel.

    Named by content's label, not by release: releases that ship the same
    artifact share one file (each release lists every service it carries).
    """
    return f"{name}-{version}.svc"


@dataclass(frozen=True)
class ServiceSource:
    """A service artifact to publish: the service's name, its version, the file to copy, and
    what it says of its data (``data_dir``, ``migrates_data``: ``docs/channel.md``)."""

    name: str
    version: str
    path: Path
    data_dir: str | None = None
    migrates_data: bool = False


def _load_draft(channel_dir: Path) -> dict[str, Any]:
    draft = read_json(channel_dir / DRAFT_FILE)
    if not isinstance(draft, dict) or not isinstance(draft.get("releases"), list):
        raise ReleaseError(f"{channel_dir / DRAFT_FILE}: not a channel (run init first)")
    return draft


def init_channel(channel_dir: Path, name: str) -> None:
    """Start an empty channel called ``name`` in ``channel_dir``."""
    if (channel_dir / DRAFT_FILE).exists():
        raise ReleaseError(f"{channel_dir / DRAFT_FILE}: a channel already exists here")
    atomic_write_json(channel_dir / DRAFT_FILE, {"channel": name, "releases": []}, PUBLIC_MODE)


def _copy_hashing(src: Path, dst: Path, block_size: int) -> tuple[int, str, list[str]]:
    """Copy ``src`` to ``dst`` durably; return size, SHA-256 and the block hashes."""
    whole, blocks, size = hashlib.sha256(), [], 0
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with open(src, "rb") as fin, os.fdopen(create_file(tmp, os.O_WRONLY | os.O_TRUNC,
                                                       PUBLIC_MODE), "wb") as fout:
        while block := fin.read(block_size):
            whole.update(block)
            blocks.append(hashlib.sha256(block).hexdigest())
            fout.write(block)
            size += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    return size, whole.hexdigest(), blocks


_OLD_LAYOUT = ("starts with an old-layout KruxOS image header (KRUXOS-IMAGE 1); an image is "
               "now the plain filesystem the OS build makes, and the device writes the slot "
               "identity itself: build the image without the header")


def _check_layout(image_path: Path) -> None:
    """Refuse an image of the old layout: devices refuse it (``docs/channel.md``)."""
    try:
        with open(image_path, "rb") as f:
            start = f.read(len(LEGACY_MAGIC))
    except OSError as exc:
        raise ReleaseError(f"{image_path}: cannot read the image ({exc.strerror})") from exc
    if not start:
        raise ReleaseError(f"{image_path}: the image is empty")
    if start == LEGACY_MAGIC:
        raise ReleaseError(f"{image_path}: {_OLD_LAYOUT}")


def _hash_file(path: Path, block_size: int) -> tuple[int, str, list[str]]:
    """Size, SHA-256 and block hashes of ``path``, read once."""
    whole, blocks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while block := f.read(block_size):
            whole.update(block)
            blocks.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    return size, whole.hexdigest(), blocks


def _check_service_source(source: ServiceSource) -> None:
    """Refuse a name or version a device would refuse, before anything is copied."""
    if len(source.name) > MAX_SERVICE_NAME or not SERVICE_NAME.match(source.name):
        raise ReleaseError(f"--service {source.name[:40]!r}: not a service name (lowercase "
                           "letters and digits joined by '-' or '_', at most "
                           f"{MAX_SERVICE_NAME} characters)")
    semver_key(source.version)
    if not source.path.is_file() or source.path.stat().st_size == 0:
        raise ReleaseError(f"--service {source.name}: {source.path} is not a non-empty file")


def _add_service(channel_dir: Path, source: ServiceSource, block_size: int) -> ServiceArtifact:
    """Copy one service artifact in (or reuse the same bytes already there) and hash it.

    A file of that name with other bytes is refused: a published artifact is
    never replaced under the releases that name it.
    """
    file = service_file_name(source.name, source.version)
    target = channel_dir / file
    if target.exists():
        size, sha, blocks = _hash_file(target, block_size)
        if _hash_file(source.path, block_size)[1] != sha:
            raise ReleaseError(f"{target}: service {source.name} {source.version} is already "
                               "in the channel with other bytes; give the new artifact a new "
                               "version")
    else:
        size, sha, blocks = _copy_hashing(source.path, target, block_size)
    return ServiceArtifact(source.name, source.version, file, size, sha, block_size,
                           tuple(blocks), source.data_dir, source.migrates_data)


def add_release(channel_dir: Path, image_path: Path | None, version: str, changes: Sequence[str],
                date_: date | None = None, *, block_size: int = DEFAULT_BLOCK_SIZE,
                requires: Sequence[str] = (), services: Sequence[ServiceSource] = (),
                container_image: str | None = None, rollout: Rollout | None = None) -> Release:
    """Copy an image (and service artifacts) into the channel and list the release in the
    draft (sign to publish).

    ``requires`` names the features a device must implement to install this
    release (``docs/channel.md``); devices without one of them skip it. A
    release with ``services`` requires :data:`SERVICE_FEATURE` too (added here), and
    :data:`SERVICE_DATA_FEATURE` when one of them declares its data,
    and lists every service it carries: a device derives from two releases'
    lists what changed.

    Without ``image_path`` the release is container-only: it names only its
    ``container_image`` (required then), carries no root image and no service,
    and slot devices cannot install it. A ``rollout`` offers it to a growing share
    of devices (``docs/rollout.md``); the release then requires :data:`ROLLOUT_FEATURE`.
    """
    semver_key(version)
    if image_path is None:
        _check_container_only(container_image, services)
    wanted = [*requires, *([SERVICE_FEATURE] if services and SERVICE_FEATURE not in requires
                           else []),
               *([CONTAINER_FEATURE] if container_image and CONTAINER_FEATURE not in requires
                 else []),
               *([ROLLOUT_FEATURE] if rollout and ROLLOUT_FEATURE not in requires else [])]
    if any(s.data_dir is not None or s.migrates_data for s in services) \
            and SERVICE_DATA_FEATURE not in wanted:
        wanted.append(SERVICE_DATA_FEATURE)
    try:
        needs = parse_requires(wanted, "--requires")
    except ReleaseError as exc:
        raise ReleaseError(str(exc).removeprefix("channel metadata: ")) from exc
    draft = _load_draft(channel_dir)
    if any(r.get("version") == version for r in draft["releases"]):
        raise ReleaseError(f"{channel_dir}: version {version} is already in the channel")
    if image_path is not None:
        _check_layout(image_path)
    for source in services:
        _check_service_source(source)
    artifacts = tuple(_add_service(channel_dir, source, block_size) for source in services)
    try:
        parse_services([a.to_json() for a in artifacts], "--service", needs)
        parse_container_image(container_image, "--container-image", needs)
    except ReleaseError as exc:
        raise ReleaseError(str(exc).removeprefix("channel metadata: ")) from exc
    day = (date_ or datetime.now(UTC).date()).isoformat()
    if image_path is None:
        release = Release(version, day, tuple(changes), "", 0, "", 0, (), needs, (),
                          container_image, rollout)
    else:
        name = image_name(version)
        size, sha, blocks = _copy_hashing(image_path, channel_dir / name, block_size)
        release = Release(version, day, tuple(changes), name, size, sha, block_size,
                          tuple(blocks), needs, artifacts, container_image, rollout)
    draft["releases"].append(release.to_json())
    atomic_write_json(channel_dir / DRAFT_FILE, draft, PUBLIC_MODE)
    return release


def set_rollout(channel_dir: Path, version: str, rollout: Rollout | None) -> Rollout | None:
    """Give ``version`` of the draft a new ``rollout`` (``None``: offered to every device at
    once) and return the one it had; sign to publish. With a rollout the release requires
    :data:`ROLLOUT_FEATURE`; without one the requirement is dropped (a device without the
    feature may then take it like any release)."""
    draft = _load_draft(channel_dir)
    index = next((i for i, r in enumerate(draft["releases"])
                  if isinstance(r, dict) and r.get("version") == version), None)
    if index is None:
        raise ReleaseError(f"{channel_dir}: version {version} is not in the channel")
    rel = draft["releases"][index]
    where = f"{channel_dir / DRAFT_FILE}: releases[{index}]"
    try:
        needs = parse_requires(rel.get("requires", []), f"{where}.requires")
        old = parse_rollout(rel.get("rollout"), f"{where}.rollout", needs)
    except ReleaseError as exc:
        raise ReleaseError(str(exc).removeprefix("channel metadata: ")) from exc
    rest = [name for name in needs if name != ROLLOUT_FEATURE]
    wanted = [*rest, ROLLOUT_FEATURE] if rollout is not None else rest
    if wanted:
        rel["requires"] = wanted
    else:
        rel.pop("requires", None)
    if rollout is None:
        rel.pop("rollout", None)
    else:
        rel["rollout"] = rollout.to_json()
    atomic_write_json(channel_dir / DRAFT_FILE, draft, PUBLIC_MODE)
    return old


def _check_container_only(container_image: str | None,
                          services: Sequence[ServiceSource]) -> None:
    """A release without a root image must name its container image and carry no service."""
    if container_image is None:
        raise ReleaseError("no root image: name the release's IMAGE file, or its "
                           "--container-image for a container-only release")
    if services:
        raise ReleaseError("--service: a container-only release (no root image) carries no "
                           "service artifact; service artifacts ride on a root image")


def _previous_serial(channel_dir: Path) -> int:
    try:
        old = read_json(channel_dir / METADATA_FILE, {})
    except KruxosError:
        return 0
    serial = old.get("signed", {}).get("serial", 0) if isinstance(old, dict) else 0
    return serial if isinstance(serial, int) else 0


def _check_fields(channel_dir: Path, releases: Iterable[dict[str, Any]]) -> None:
    """Sign no release field this version does not know: a device would ignore it.

    A field that changes what a device must do has to come with ``requires``
    (or a new format), which only a publisher that knows the field can write.
    """
    for index, rel in enumerate(releases):
        unknown = sorted(str(k) for k in rel if k not in RELEASE_FIELDS)
        if unknown:
            raise ReleaseError(f"{channel_dir / DRAFT_FILE}: releases[{index}] has field(s) "
                               f"{', '.join(repr(k[:40]) for k in unknown[:4])} this version "
                               "of kruxos does not know; devices would ignore them, so they "
                               "are not signed (remove them, or publish with a kruxos that "
                               "writes them)")


def _check_images_present(channel_dir: Path, releases: Iterable[dict[str, Any]]) -> None:
    for rel in releases:
        services = rel.get("services", [])
        root = [rel] if "image" in rel else []  # a container-only release has no file
        for entry in [*root, *(services if isinstance(services, list) else [])]:
            name = entry.get("image", entry.get("file")) if isinstance(entry, dict) else None
            path = channel_dir / str(name)
            if not path.is_file() or path.stat().st_size != entry.get("size"):
                raise ReleaseError(f"{path}: missing or not {entry.get('size')} bytes; "
                                   "refusing to sign metadata that names it")


def _check_services(channel_dir: Path, releases: Iterable[dict[str, Any]]) -> None:
    """Sign no service list, container image or missing root image a device would refuse
    (a hand-edited draft included)."""
    for i, rel in enumerate(releases):
        try:
            needs = parse_requires(rel.get("requires", []), f"releases[{i}].requires")
            services = parse_services(rel.get("services", []), f"releases[{i}].services",
                                      needs)
            container = parse_container_image(rel.get("container_image"),
                                              f"releases[{i}].container_image", needs)
            if "image" not in rel:
                check_container_only(rel, f"releases[{i}].", container, services)
            parse_rollout(rel.get("rollout"), f"releases[{i}].rollout", needs)
        except ReleaseError as exc:
            raise ReleaseError(f"{channel_dir / DRAFT_FILE}: "
                               f"{str(exc).removeprefix('channel metadata: ')}") from exc


def sign_channel(channel_dir: Path, key_paths: Sequence[Path],
                 expires_in: timedelta = timedelta(days=30),
                 now: datetime | None = None) -> dict[str, Any]:
    """Publish the draft as a new ``metadata.json``: serial + 1, signed by every key.

    Several keys sign the same bytes, which is how a key rotation is done:
    devices trusting either the old or the new key accept the metadata.
    """
    if not key_paths:
        raise ReleaseError("sign: name at least one signing key")
    keys = [load_signing_key(Path(p)) for p in key_paths]
    draft = _load_draft(channel_dir)
    _check_fields(channel_dir, draft["releases"])
    _check_services(channel_dir, draft["releases"])
    _check_images_present(channel_dir, draft["releases"])
    moment = now or datetime.now(UTC)
    signed = {
        "format": _format_of(channel_dir, draft["releases"]), "channel": draft["channel"],
        "serial": _previous_serial(channel_dir) + 1,
        "issued": format_time(moment), "expires": format_time(moment + expires_in),
        "releases": draft["releases"],
    }
    payload = canonical_json(signed)
    signatures = [{"keyid": keyid_of(k.verify_key),
                   "sig": base64.b64encode(k.sign(payload).signature).decode()} for k in keys]
    document = {"signed": signed, "signatures": signatures}
    atomic_write_json(channel_dir / METADATA_FILE, document, PUBLIC_MODE)
    return document


def _format_of(channel_dir: Path, releases: Iterable[dict[str, Any]]) -> int:
    """The format the draft's releases need (2 once one has ``requires``, else 1)."""
    try:
        return format_for(parse_requires(rel.get("requires", []), f"releases[{i}].requires")
                          for i, rel in enumerate(releases))
    except ReleaseError as exc:
        raise ReleaseError(f"{channel_dir / DRAFT_FILE}: "
                           f"{str(exc).removeprefix('channel metadata: ')}") from exc


@dataclass
class ChannelReport:
    """What a device trusting the given keys would make of a channel, and why."""

    accepted: bool
    metadata: ChannelMetadata | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_image(channel_dir: Path, rel: Release) -> str | None:
    """Why a device would refuse this release's image file, or ``None``."""
    return _check_file(channel_dir / rel.image, rel.version, rel, legacy=True)


def _check_file(path: Path, label: str, signed: Release | ServiceArtifact,
                legacy: bool = False) -> str | None:
    """Why ``path`` does not hold the signed bytes (size, each block, the whole), or ``None``."""
    if not path.is_file():
        return f"{label}: {path} is missing"
    if path.stat().st_size != signed.size:
        return f"{label}: {path} is {path.stat().st_size} bytes, signed size {signed.size}"
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        for index, expected in enumerate(signed.blocks):
            block = f.read(signed.block_size)
            whole.update(block)
            if hashlib.sha256(block).hexdigest() != expected:
                return f"{label}: {path} block {index} does not match its signed hash"
            if legacy and index == 0 and block.startswith(LEGACY_MAGIC):
                return f"{label}: {path} {_OLD_LAYOUT}"
    if whole.hexdigest() != signed.sha256:
        return f"{label}: {path} does not match its signed SHA-256"
    return None


def _check_release_files(channel_dir: Path, rel: Release) -> list[str]:
    """Every reason a device would refuse a file of ``rel``: its image, each service's."""
    problems = [_check_image(channel_dir, rel) if rel.has_root_image else None]
    problems += [_check_file(channel_dir / s.file, f"{rel.version} service {s.name}", s)
                 for s in rel.services]
    return [p for p in problems if p is not None]


def verify_channel(channel_dir: Path, trusted_pub_paths: Sequence[Path], now: datetime,
                   revoked: Iterable[str | Path] = ()) -> ChannelReport:
    """Check ``metadata.json`` and every image as a device with these keys would."""
    path = channel_dir / METADATA_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ChannelReport(False, problems=[f"{path}: cannot read ({exc.strerror})"])
    try:
        meta = verify_metadata(raw, load_trusted_keys(trusted_pub_paths),
                               load_revoked(revoked), now, None, None)
    except (ReleaseError, ConfigError) as exc:
        return ChannelReport(False, problems=[f"{path}: {exc}"])
    report = ChannelReport(True, meta)
    report.notes.append(f"channel {meta.channel!r}, format {meta.format}, serial {meta.serial}, "
                        f"signed by {', '.join(meta.signed_by)}, expires "
                        f"{format_time(meta.expires)}")
    for rel in meta.releases:
        problems = _check_release_files(channel_dir, rel)
        if problems:
            report.accepted = False
            report.problems.extend(problems)
    if _draft_differs(channel_dir, meta):
        report.notes.append(f"{channel_dir / DRAFT_FILE} has changes not yet signed")
    return report


def _draft_differs(channel_dir: Path, meta: ChannelMetadata) -> bool:
    try:
        draft = _load_draft(channel_dir)
    except KruxosError:
        return False
    return bool(draft["releases"] != [r.to_json() for r in meta.releases])
