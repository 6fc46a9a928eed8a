"""Durable files: write-temp, fsync, rename, fsync the directory; explicit modes.

Every file the product writes that must survive a crash or a power cut goes
through :func:`atomic_write`: a temporary file in the same directory, fsynced,
renamed over the target, then the directory fsynced. A cut at any point leaves
either the old or the new content, never a mix.

Modes are set explicitly, whatever the umask: files 0640 and directories 0750,
and under the data dir they belong to the group the device config names, so an
operator group reads status and audit without root while nobody else reads
anything (secrets are 0600; files a web server publishes, 0644).

These helpers know nothing of what they store: the state store, the audit
trail, the boot backends and the installer all use them, and the backends may
use nothing else of the data dir (``tests/test_architecture.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import failpoints
from reconciler.errors import StateError

FILE_MODE = 0o640
DIR_MODE = 0o750
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644  # a channel's files: any web server user must read them


@dataclass
class _DataPolicy:
    """Which directory is the data dir, and the gid its files and directories get."""

    root: Path | None = None
    gid: int | None = None


_policy = _DataPolicy()


def set_data_policy(data_dir: Path, gid: int | None) -> None:
    """Files and directories created under ``data_dir`` from now on get group ``gid``.

    Set once per process when the device config is loaded; every process that
    writes the data dir loads it first.
    """
    _policy.root, _policy.gid = Path(os.path.abspath(data_dir)), gid


def _group_for(path: Path) -> int | None:
    if _policy.gid is None or _policy.root is None:
        return None
    return _policy.gid if Path(os.path.abspath(path)).is_relative_to(_policy.root) else None


def _settle(fd: int, path: Path, mode: int) -> None:
    """Give an open file or directory exactly ``mode`` (the umask set none of it) and its group.

    A file another user owns (it existed before) keeps what its owner gave it.
    """
    if os.fstat(fd).st_uid != os.geteuid():
        return
    os.fchmod(fd, mode)
    gid = _group_for(path)
    if gid is not None:
        os.fchown(fd, -1, gid)


def create_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` with ``O_CREAT``, then the exact mode and group, whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        _settle(fd, path, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create ``path`` and missing parents with ``mode`` and the data dir's group."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        make_dirs(path.parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    settle_dir(path, mode)


def settle_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Give an existing directory ``mode`` and the data dir's group."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _settle(fd, path, mode)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE,
                 label: str | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers see old or new, never a mix.

    A missing directory is made readable by whoever may read the file. A write
    that fails (a full disk) removes its temporary file: no space is kept by it.
    ``label`` names the file's kind for the crash tests' failpoints
    (``LABEL.temp-written``, ``LABEL.renamed``: see :mod:`reconciler.failpoints`).
    """
    make_dirs(path.parent, DIR_MODE | (0o005 if mode & 0o004 else 0))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = create_file(tmp, os.O_WRONLY | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if label is not None and failpoints.ARMED:
            failpoints.failpoint(f"{label}.temp-written")
        os.replace(tmp, path)
    except BaseException:
        # A write that found the disk full must give back what it took, now:
        # the next writer may be the record a rollback needs.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if label is not None and failpoints.ARMED:
        failpoints.failpoint(f"{label}.renamed")
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any, mode: int = FILE_MODE,
                      label: str | None = None) -> None:
    """Write ``value`` as pretty JSON, atomically and durably (``label``: see
    :func:`atomic_write`)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"), mode, label)


_TEMP = re.compile(r"^\..+\.tmp-(\d+)$")


def sweep_temporaries(directory: Path, keep_dirs: tuple[str, ...] = ()) -> list[str]:
    """Remove what a write cut off by a crash left behind (``.NAME.tmp-PID`` of another
    process) in ``directory`` and its subdirectories; return the names removed.

    Only the holder of the data-dir lock may call it: no other writer of those
    files can be between its temporary file and the rename then. Directories
    named in ``keep_dirs`` are written by other processes too and are left alone.
    """
    removed = []
    for path in sorted(directory.rglob(".*.tmp-*")):
        match = _TEMP.match(path.name)
        if match is None or int(match[1]) == os.getpid() or not path.is_file():
            continue
        if path.parent.name in keep_dirs:
            continue  # written by other processes (the commands' requests)
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(str(path.relative_to(directory)))
    return removed


def read_at_most(path: Path, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of ``path``, and whether the file holds more.

    A file larger than anything it may hold is refused without being read
    whole; each caller words the refusal (and any ``OSError``) for its file.
    """
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    return raw[:limit], len(raw) > limit


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`; ``default`` if absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StateError(f"{path}: not valid JSON ({exc})") from exc
