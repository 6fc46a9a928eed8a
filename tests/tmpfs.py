"""A small tmpfs as a data dir, and a filler that takes every byte left on it.

The full-disk tests run as root (CI too): a real filesystem that really fills
proves what a mocked ``ENOSPC`` cannot (temporary files left behind, space a
failed write kept, the order of records written while full).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``2m``) on ``directory``.

    What the directory held (a simulated device's own config layer) is carried onto
    the tmpfs, as a provisioned data disk would hold it."""
    kept = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    assert not any(p.is_dir() for p in directory.iterdir()), f"{directory} holds directories"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(directory)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"this test needs to mount a tmpfs: {mounted.stderr}"
    for name, data in kept.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o640)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Fill the filesystem of ``directory`` until a write fails with ENOSPC.

    Writes stop at the first ``ENOSPC``: nothing is written after the disk is
    full, so space a writer gives back later (the daemon's reserve) is left to it.
    """
    filler = directory / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\xff" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
