"""Durable state on the data dir: atomic files and the device's state document.

Everything the next process needs after a crash or a reboot lives here, never
only in memory. Every write follows the same order: write a temporary file in
the same directory, fsync it, rename it over the target, fsync the directory.
A power cut at any point leaves either the old or the new content, never a mix.

The state document (``state.json``, and its copy) is the typed model of
:mod:`reconciler.state`. Only the process holding the data-dir lock writes it.

Files are written through :mod:`reconciler.durable` (temp, fsync, rename, fsync
the directory; explicit modes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconciler.durable import (
    atomic_write,
    atomic_write_json,
    create_file,
    make_dirs,
    read_json,
    settle_dir,
)
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


class Reserve:
    """Space set aside on the data dir, given back when a write finds the disk full.

    Created at the start of the daemon's first pass and of each pass when it is
    missing and the disk has room again (replenished); released on the first
    ``ENOSPC`` so that the decision, outcome and state of a rollback can still
    be written, fsynced, in order. While released (an empty file), the disk
    counts as full.
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
        """Make the reserve whole again if the disk has room; ``True`` when it is.

        Room means the reserve's size free beyond the reserve: taking back the
        very space just given would leave the disk full, and the next write would
        give it back at once. Without room, the file stays (or is made) empty: a
        daemon that could never set its reserve aside still shows a full disk.
        """
        try:
            if self.path.stat().st_size >= self.size:
                return True
        except FileNotFoundError:
            pass
        try:
            if _free_bytes(self.path.parent) < 2 * self.size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            atomic_write(self.path, b"\0" * self.size)
        except OSError:
            with contextlib.suppress(OSError):
                os.close(create_file(self.path, os.O_WRONLY))
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


def _free_bytes(directory: Path) -> int:
    """Bytes still free for an ordinary writer on the filesystem of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


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
        self._taken: set[str] = set()  # said since the last write (not said again)
        self.lost = False
        self.reserve = Reserve(data_dir)
        #: The newest document when it could not be written (a read-only or full data
        #: disk): kept in memory so this process still judges a trial on what it saw.
        self.unwritten: dict[str, Any] | None = None
        # The daemon records a rejected spec from its watcher while a pass runs:
        # read-modify-write cycles of the document must not interleave.
        self._lock = threading.RLock()

    def load(self) -> dict[str, Any]:
        """The whole document; absent files are an empty state (a fresh device).

        After a write failed, the document this process last meant to write
        (it is newer than the disk's) until a write succeeds again."""
        if self.unwritten is not None:
            return dict(self.unwritten)
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
        taken = [note for note in self.repairs if note not in self._taken]
        self.repairs = []
        self._taken.update(taken)
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
            try:
                with_reserve(self.reserve, lambda: atomic_write_json(self.path, doc, label="state"))
                with_reserve(self.reserve,
                             lambda: atomic_write_json(self.copy_path, doc, label="state-copy"))
            except OSError:
                self.unwritten = doc
                raise
            self.unwritten = None
            self.lost = False  # whatever was lost, the files hold a whole document again
            self.repairs = [note for note in self.repairs if note not in self._taken]
            self._taken.clear()
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
    the holder so the refusal can say who has it (when the disk has room for
    the name: a full data disk never stops the daemon from starting).
    """
    path = data_dir / LOCK_FILE
    try:
        make_dirs(data_dir)
        settle_dir(data_dir)
        fd, writable = create_file(path, os.O_RDWR), True
    except OSError as exc:
        if exc.errno != errno.EROFS or not path.exists():
            raise
        # A data disk remounted read-only: still one daemon at a time, so that it
        # can still judge a trial and roll it back (docs/states.md, Precedence).
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            who = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockHeldError(f"{data_dir} is locked by {who}", who) from exc
        if writable:
            os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):  # a full disk: the lock holds, only unnamed
                os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)
