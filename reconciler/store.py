"""Durable state on the data dir: atomic files and the device's state document.

Everything the next process needs after a crash or a reboot lives here, never
only in memory. Every write follows the same order: write a temporary file in
the same directory, fsync it, rename it over the target, fsync the directory.
A power cut at any point leaves either the old or the new content, never a mix.

The state document (``state.json``, and its copy) is the typed model of
:mod:`reconciler.state`. Only the process holding the data-dir lock writes it.

Modes are set explicitly, whatever the umask: files 0640 and directories 0750,
and under the data dir they belong to the group the device config names, so an
operator group reads status and audit without root while nobody else reads
anything (secrets are 0600; files a web server publishes, 0644).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import LockHeldError, StateError
from reconciler.state import dump_state, parse_state

STATE_FILE = "state.json"
COPY_FILE = "state.copy.json"
RESERVE_FILE = "reserve"
#: Space kept on the data dir for the records a rollback needs when the disk fills:
#: a rollback writes two audit records (~2 KiB) and about four state documents, each
#: twice (the file and its copy, through new temporary files: ~8 x 4 KiB blocks).
#: 256 KiB holds several rollbacks' worth, with room for a filesystem's rounding.
RESERVE_BYTES = 256 * 1024
LOCK_FILE = "lock"
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


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that readers see old or new, never a mix.

    A missing directory is made readable by whoever may read the file.
    """
    make_dirs(path.parent, DIR_MODE | (0o005 if mode & 0o004 else 0))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = create_file(tmp, os.O_WRONLY | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any, mode: int = FILE_MODE) -> None:
    """Write ``value`` as pretty JSON, atomically and durably."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"), mode)


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


class Reserve:
    """Space set aside on the data dir, given back when a write finds the disk full.

    Created at the daemon's start and at the start of each pass when it is
    missing and the disk has room again (replenished); released on the first
    ``ENOSPC`` so that the decision, outcome and state of a rollback can still
    be written, fsynced, in order. While released, the disk counts as full.
    """

    def __init__(self, data_dir: Path, size: int = RESERVE_BYTES) -> None:
        self.path = data_dir / RESERVE_FILE
        self.size = size

    @property
    def in_use(self) -> bool:
        """True while the reserve is given back to the writes (the disk was full).

        Released, the file stays with no bytes (a marker); a data dir where the
        reserve was never set up (no daemon ran yet) does not count as full.
        """
        try:
            return self.path.stat().st_size < self.size
        except FileNotFoundError:
            return False

    def replenish(self) -> bool:
        """Make the reserve whole again if the disk has room; ``True`` when it is."""
        try:
            if self.path.stat().st_size >= self.size:
                return True
        except FileNotFoundError:
            pass
        try:
            atomic_write(self.path, b"\0" * self.size)
        except OSError:
            return False
        return True

    def release(self) -> bool:
        """Give the space back; ``False`` when there was none left to give."""
        try:
            if self.path.stat().st_size == 0:
                return False
            os.truncate(self.path, 0)
        except FileNotFoundError:
            return False
        return True


def with_reserve(reserve: Reserve | None, write: Callable[[], None]) -> None:
    """Run ``write``; on a full disk give back the reserve once and try again."""
    try:
        write()
    except OSError as exc:
        if exc.errno != errno.ENOSPC or reserve is None or not reserve.release():
            raise
        write()


class StateStore:
    """The device's state document on the data dir: the typed model of :mod:`reconciler.state`.

    Every write goes to ``state.json`` and then to its copy ``state.copy.json``
    (each atomically), so a file damaged or lost between two passes is restored
    from the other. When both are unreadable the document starts empty and the
    facts come back from the boot env, the slots and the audit trail (see
    ``docs/states.md``). What was repaired is kept in :attr:`repairs` for the
    reconciler to record.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / STATE_FILE
        self.copy_path = data_dir / COPY_FILE
        self.repairs: list[str] = []
        self.lost = False
        self.reserve = Reserve(data_dir)
        # The daemon records a rejected spec from its watcher while a pass runs:
        # read-modify-write cycles of the document must not interleave.
        self._lock = threading.RLock()

    def load(self) -> dict[str, Any]:
        """The whole document; absent files are an empty state (a fresh device)."""
        primary, problem = self._read(self.path)
        if primary is not None:
            return primary
        copy, copy_problem = self._read(self.copy_path)
        if problem is None and copy is None and copy_problem is None:
            return {}  # a fresh device: neither file was ever written
        if copy is not None:
            self._note(f"{self.path.name} {problem or 'is missing'}; restored from "
                       f"{self.copy_path.name}")
            return copy
        self.lost = True
        self._note(f"{self.path.name} {problem or 'is missing'} and {self.copy_path.name} "
                   f"{copy_problem or 'is missing'}; the state is rebuilt from the boot env, "
                   "the slots and the audit trail")
        return {}

    def _read(self, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """One copy as a migrated document, or why it cannot be used (``None``: absent)."""
        try:
            raw = read_json(path, None)
            if raw is None:
                return None, None
            model, dropped = parse_state(raw)
        except (StateError, OSError, RecursionError) as exc:
            text = str(exc).removeprefix(f"{path}: ")
            return None, f"is damaged ({text[:80]})"
        for section in dropped:
            self._note(f"{path.name}: section {section} dropped while reading")
        return model.model_dump(by_alias=True, exclude_none=True, mode="json"), None

    def _note(self, text: str) -> None:
        if text not in self.repairs:
            self.repairs.append(text)

    def take_repairs(self) -> list[str]:
        """What was repaired since the last call (for the audit trail), once each."""
        taken, self.repairs = self.repairs, []
        return taken

    def section(self, name: str) -> dict[str, Any]:
        """One owner's section, empty when it was never written."""
        value = self.load().get(name)
        return value if isinstance(value, dict) else {}

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, let ``change`` edit the document in place, write both copies durably."""
        with self._lock:
            doc = self.load()
            change(doc)
            doc = dump_state(doc)
            with_reserve(self.reserve, lambda: atomic_write_json(self.path, doc))
            with_reserve(self.reserve, lambda: atomic_write_json(self.copy_path, doc))
            return doc

    def put(self, name: str, value: dict[str, Any] | None) -> None:
        """Replace (or with ``None`` remove) one section."""

        def change(doc: dict[str, Any]) -> None:
            if value is None:
                doc.pop(name, None)
            else:
                doc[name] = value

        self.update(change)


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, holder: str) -> Iterator[None]:
    """Hold the one-writer lock of the data dir, or raise :class:`LockHeldError`.

    The lock is an ``flock`` on ``DATA/lock``: the kernel drops it when the
    process dies, so a crash never leaves a stale lock behind. The file names
    the holder so the refusal can say who has it.
    """
    make_dirs(data_dir)
    settle_dir(data_dir)
    path = data_dir / LOCK_FILE
    fd = create_file(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            who = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockHeldError(f"{data_dir} is locked by {who}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)
