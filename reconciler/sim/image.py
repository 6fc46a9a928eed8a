"""The simulated image: a tiny stand-in for the root filesystem an OS build makes.

A real KruxOS image is a plain filesystem (ext4, erofs, squashfs) that starts
at byte 0 of its slot and knows nothing of the slot identity at the slot's end.
The simulated one is the smallest thing of that kind Python reads without
mounting: a deterministic POSIX ustar archive, padded to the requested size::

    etc/                         directory
    etc/kruxos/                  directory: what a boot copies to DIR/run/root/etc/kruxos/
    etc/kruxos/release           VERSION=1.0.1, NAME=KruxOS, BEHAVIOUR=healthy, tuning fields
    etc/kruxos/keys/*.pub        the publisher keys the image trusts (its trust root)
    usr/lib/kruxos/filler        pseudo-random bytes seeded by the release file
    two zero blocks (the end of the archive), zeros up to the image size

Rebuilding gives the same bytes (and hashes); two releases differ in every
block. At boot the simulated device "mounts" the booted slot (:func:`mount`):
it reads the archive from the slot's bytes, with every size capped so a
hostile slot cannot exhaust the simulator, and replaces
``DIR/run/root/etc/kruxos/`` with the image's ``etc/kruxos/``.
"""

from __future__ import annotations

import random
import re
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reconciler.errors import ReleaseError

BLOCK = 512
RELEASE_FILE = "etc/kruxos/release"
KEYS_DIR = "etc/kruxos/keys/"
_DIRS = ("etc/", "etc/kruxos/")
_FILLER = "usr/lib/kruxos/filler"
_CHUNK = 1 << 20
#: Bounds of a mount: archive members looked at, size of one file and of all of them.
MAX_MEMBERS = 64
MAX_FILE = 64 << 10
MAX_TOTAL = 1 << 20
_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9._+-]{1,100}$")


class MountError(Exception):
    """The slot's bytes are not an image the simulated device can boot."""


def release_text(version: str, behaviour: str = "healthy",
                 fields: Mapping[str, str] | None = None) -> str:
    """The ``etc/kruxos/release`` file: ``KEY=value`` lines (``fields`` win over the rest)."""
    values = {"VERSION": version, "NAME": "KruxOS", "BEHAVIOUR": behaviour, **(fields or {})}
    for key, value in values.items():
        if not _KEY.match(key) or not value.isprintable() or len(value) > 1000:
            raise ReleaseError(f"simulated image: field {key[:40]!r} cannot hold {value[:40]!r}")
    return "".join(f"{key}={value}\n" for key, value in values.items())


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def build_sim_image(path: Path, version: str, behaviour: str = "healthy",
                    size: int = 2 << 20, fields: Mapping[str, str] | None = None,
                    keys: Mapping[str, bytes] | None = None) -> Path:
    """Write a simulated image of exactly ``size`` bytes to ``path``.

    ``BEHAVIOUR`` tells the simulated OS how to act after boot (``healthy``,
    ``gateway-fails``, ``fails-later``, ``hangs``); ``fields`` adds or
    overrides lines of the release file (``STARTUP_SECONDS``...). ``keys``: the
    publisher's public keys the image carries (``etc/kruxos/keys/NAME``), the
    trust root of a device once it boots the image.
    """
    release = release_text(version, behaviour, fields).encode("utf-8")
    head = b"".join(_header(name, 0, tarfile.DIRTYPE) for name in _DIRS)
    head += _header(RELEASE_FILE, len(release)) + _padded(release)
    if keys:
        head += _header(KEYS_DIR, 0, tarfile.DIRTYPE)
        for name, data in sorted(keys.items()):
            if not _SAFE_PART.match(name) or not name.endswith(".pub"):
                raise ReleaseError(f"simulated image: key file name {name[:40]!r}")
            head += _header(KEYS_DIR + name, len(data)) + _padded(data)
    filler = (size - len(head) - 3 * BLOCK) // BLOCK * BLOCK  # its header, the end blocks
    if filler < 0:
        raise ReleaseError(f"a simulated image needs at least {len(head) + 3 * BLOCK} bytes")
    rng = random.Random(b"kruxos-sim/" + release)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head + _header(_FILLER, filler))
        left = filler
        while left:
            n = min(left, _CHUNK)
            f.write(rng.randbytes(n))
            left -= n
        f.write(bytes(size - f.tell()))
    return path


@dataclass(frozen=True)
class SimRoot:
    """What a mount found: the files under ``etc/kruxos/``, by path in the image."""

    files: Mapping[str, bytes]

    def release(self) -> dict[str, str]:
        """The release file's ``KEY=value`` lines (``MountError`` when there is none)."""
        raw = self.files.get(RELEASE_FILE)
        if raw is None:
            raise MountError(f"the image has no {RELEASE_FILE}")
        text = raw.decode("utf-8", "replace")
        fields = dict(line.split("=", 1) for line in text.splitlines()
                      if "=" in line and not line.startswith("#"))
        if not fields.get("VERSION"):
            raise MountError(f"{RELEASE_FILE} names no VERSION")
        return fields


def read_root(slot: Path) -> SimRoot:
    """Read ``etc/kruxos/`` from the archive at byte 0 of ``slot``; ``MountError`` if none."""
    try:
        with open(slot, "rb") as f:
            return SimRoot(_scan(f, f.seek(0, 2)))
    except FileNotFoundError:
        raise MountError(f"slot {slot} does not exist") from None


def _scan(f: BinaryIO, end: int) -> dict[str, bytes]:
    """The regular files under ``etc/kruxos/`` among the first :data:`MAX_MEMBERS` members."""
    files: dict[str, bytes] = {}
    offset, total = 0, 0
    for _ in range(MAX_MEMBERS):
        f.seek(offset)
        header = f.read(BLOCK)
        if len(header) < BLOCK or not header.strip(b"\0"):
            break
        name, size, kind = _member(header, offset)
        data_at, offset = offset + BLOCK, offset + BLOCK + -(-size // BLOCK) * BLOCK
        if offset > end:
            raise MountError(f"archive member {name[:60]!r} runs past the end of the slot")
        if name.startswith("etc/kruxos/") and kind in (b"0", b"\0"):
            total += size
            if size > MAX_FILE or total > MAX_TOTAL:
                raise MountError(f"{name[:60]!r}: more than the {MAX_FILE}-byte file or "
                                 f"{MAX_TOTAL}-byte total a boot reads")
            f.seek(data_at)
            files[_safe(name)] = f.read(size)
    if offset == 0:
        raise MountError("the slot holds no image (zeros at byte 0)")
    return files


def _member(header: bytes, offset: int) -> tuple[str, int, bytes]:
    """Name, size and type of the ustar header at ``offset`` (checksum and magic checked)."""
    if header[257:262] != b"ustar":
        raise MountError(f"no ustar archive header at byte {offset}: not an image the "
                         "simulated device can mount")
    try:
        checksum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise MountError(f"archive header at byte {offset}: a number is not octal") from None
    if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise MountError(f"archive header at byte {offset}: checksum mismatch")
    prefix = header[345:500].split(b"\0", 1)[0]
    name = header[0:100].split(b"\0", 1)[0]
    full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
    return full.removeprefix("./"), size, header[156:157]


def _safe(name: str) -> str:
    parts = name.split("/")
    if not all(_SAFE_PART.match(p) and p not in (".", "..") for p in parts):
        raise MountError(f"archive member name {name[:60]!r} is not a plain relative path")
    return name


def mount(slot: Path, root: Path) -> SimRoot:
    """Boot's view of the image: ``root/etc/kruxos/`` replaced by the image's ``etc/kruxos/``.

    The old copy is removed first, so a slot that does not mount leaves none behind.
    """
    target = root / "etc" / "kruxos"
    shutil.rmtree(target, ignore_errors=True)
    found = read_root(slot)
    for name, data in found.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return found
