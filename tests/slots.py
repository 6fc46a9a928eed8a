"""Slot files in a chosen state, written with the product's own record writer.

``claim`` gives a slot the identity the installer would write after
installing its first ``size`` bytes; ``legacy_header`` writes the old
layout's header at byte 0, as a slot written before the identity moved holds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from reconciler.release.identity import LEGACY_MAGIC, LEGACY_SIZE, SlotIdentity, write_identity


def claim(slot: Path, version: str, size: int = 4096, channel: str = "stable",
          serial: int = 1) -> SlotIdentity:
    """Write an identity naming ``version`` and the SHA-256 of the slot's first ``size`` bytes."""
    with open(slot, "r+b") as f:
        sha = hashlib.sha256(f.read(size)).hexdigest()
        identity = SlotIdentity(version, size, sha, channel, serial, "2026-11-30T12:00:00Z")
        write_identity(f.fileno(), identity)
    return identity


def legacy_header(version: str, **fields: str) -> bytes:
    """The 4 KiB ``KRUXOS-IMAGE 1`` header of the old layout."""
    lines = "".join(f"{k}={v}\n" for k, v in {"VERSION": version, **fields}.items())
    body = LEGACY_MAGIC + lines.encode()
    return body + bytes(LEGACY_SIZE - len(body))


def write_at(slot: Path, offset: int, data: bytes) -> None:
    """Overwrite ``data`` at ``offset`` of the slot (negative: from its end)."""
    with open(slot, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        f.write(data)
