"""The factory state of a built disk, written with the product's own encoders.

Run by ``deploy/image/build.sh`` on the host (the host's Python, the product
on ``PYTHONPATH``); never shipped in the image.

- ``identity SLOT_FILE IMAGE VERSION``: the slot identity record of ``IMAGE``
  (the filesystem image at byte 0 of the slot) in the last 4 KiB of
  ``SLOT_FILE``, exactly as a device writes it after an install
  (``reconciler/release/identity.py``); the factory image claims channel
  ``stable``, metadata serial 0.
- ``grubenv FILE``: the factory boot env, 1024 bytes as ``grub-editenv``
  writes them: slot A is the good default, B empty, no trial.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from reconciler.boot.grubenv import render
from reconciler.release.identity import RECORD_SIZE, SlotIdentity, encode_identity


def identity(slot_file: Path, image: Path, version: str) -> None:
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    size = image.stat().st_size
    written = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = encode_identity(SlotIdentity(version, size, digest.hexdigest(), "stable", 0, written))
    with open(slot_file, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end < size + RECORD_SIZE:
            sys.exit(f"{slot_file}: {end} bytes cannot hold a {size}-byte image and its record")
        f.seek(end - RECORD_SIZE)
        f.write(record)


def grubenv(path: Path) -> None:
    path.write_bytes(render({"KRUXOS_DEFAULT": "A", "KRUXOS_TRIAL": "", "KRUXOS_TRIES": "",
                             "KRUXOS_A": "good", "KRUXOS_B": "empty", "KRUXOS_FALLBACK": ""}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["identity"] and len(argv) == 4:
        identity(Path(argv[1]), Path(argv[2]), argv[3])
    elif argv[:1] == ["grubenv"] and len(argv) == 2:
        grubenv(Path(argv[1]))
    else:
        sys.exit("usage: factory.py identity SLOT_FILE IMAGE VERSION | grubenv FILE")


if __name__ == "__main__":
    main(sys.argv[1:])
