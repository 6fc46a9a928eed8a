"""What a power cut keeps: the durability model behind the power-cut filesystem.

The filesystem (:mod:`tests.powercut.fs`) passes every operation through to a
backing directory, so the processes on it see an ordinary filesystem; beside
that it keeps this model of what a power cut would leave. The rules, which
``docs/reliability.md`` ("The power-cut filesystem") repeats for the reader of
the product and ``tests/powercut/test_fs.py`` checks one by one:

1. **Mounting is a clean start.** Everything in the backing directory when the
   filesystem is mounted is durable.
2. **A file's data is durable at its fsync.** ``fsync`` or ``fdatasync`` of any
   descriptor of a file makes the file's whole content and size, as they are at
   that moment, durable (the two are the same here: times and other metadata are
   not modelled). Closing a file makes nothing durable.
3. **A name is durable at its directory's fsync.** A create, ``mkdir``,
   ``symlink``, hard link, rename or unlink changes a directory's durable
   entries only when that directory is fsynced; the fsync makes all its
   entries, as they are then, durable. Each directory counts on its own: a
   file created and fsynced in a directory that is not fsynced is gone after a
   cut, a rename not followed by a directory fsync is undone, and a rename
   between two directories of which only the target's is fsynced leaves the
   file under both names (hard links of one file). A new directory starts with
   no durable entries of its own.
4. **Files are inodes.** Durable entries name inodes, not paths: a file renamed
   or linked keeps its content under every durable name, and a file unlinked
   (or renamed over) keeps the content its durable names need.
5. **At a cut** every directory holds its durable entries and every file its
   durable content. Writes since the file's last fsync are dropped, except
   that the last write to each file since that fsync may be kept: whole,
   dropped, or torn, keeping the part that lies before a 512-byte boundary of
   the file (a multiple of 512 bytes from the start of the file, inside the
   write). Writes that follow each other without a gap (each starting where
   the one before ended) count as one write: the kernel splits a program's
   ``write`` at page and request boundaries, and a tear keeps a prefix of what
   the program wrote, never its end without its start. A kept write beyond
   the durable end of the file leaves zeros in the gap. The choice is drawn
   from the cut's seed, one draw per file in the order of their paths, so the
   same seed over the same history gives the same tree. A truncate after the
   last write drops that write as a candidate.
6. **``sync`` and ``syncfs`` make nothing durable.** The kernel hands them to
   no FUSE filesystem (only virtiofs), so this filesystem never learns of
   them; a program must fsync each file and each directory it needs.
7. **Not modelled:** modes (a node has the mode it was last given), owners,
   times, extended attributes, special files, and shared writable mappings
   (the filesystem runs without the kernel's writeback cache, so every
   ``write`` reaches it in order).

The model stores the durable content of every file in a shadow directory
(sparse copies, one file per inode), so a file whose last name was removed
still has what its durable names need.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTOR = 512
_CHUNK = 1 << 20
#: The longest run of gapless writes kept as one candidate for rule 5 (memory bound);
#: a longer run starts again from the write that goes past it.
MAX_LAST_WRITE = 16 << 20


@dataclass
class Node:
    """One inode of the model: a directory's durable entries, a file's pending writes."""

    kind: str  # "file", "dir" or "symlink"
    mode: int
    entries: dict[str, int] = field(default_factory=dict)
    dirty: list[tuple[int, int]] = field(default_factory=list)
    last_write: tuple[int, bytes] | None = None
    target: str = ""


class ModelError(Exception):
    """The model met a backing node it never saw made: a bug of the filesystem, reported."""


class Model:
    """The durable state of one mounted backing directory (see the module docstring)."""

    def __init__(self, backing: Path, shadow: Path) -> None:
        self.backing, self.shadow = backing, shadow
        shadow.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[int, Node] = {}
        self.by_ino: dict[int, int] = {}
        self._next = 1
        self.root = self._adopt(backing)

    # ---- the inodes -----------------------------------------------------------------------

    def _new(self, ino: int, node: Node) -> int:
        node_id, self._next = self._next, self._next + 1
        self.nodes[node_id] = node
        self.by_ino[ino] = node_id
        return node_id

    def _adopt(self, path: Path) -> int:
        """Rule 1: a node present at mount time, with all it holds, is durable."""
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            node_id = self._new(st.st_ino, Node("dir", stat.S_IMODE(st.st_mode)))
            self.nodes[node_id].entries = {name: self._adopt(path / name)
                                           for name in sorted(os.listdir(path))}
        elif stat.S_ISLNK(st.st_mode):
            node_id = self._new(st.st_ino, Node("symlink", 0o777, target=os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            node_id = self._new(st.st_ino, Node("file", stat.S_IMODE(st.st_mode)))
            src = os.open(path, os.O_RDONLY)
            try:
                self._write_shadow(node_id, src, [(0, st.st_size)], st.st_size, fresh=True)
            finally:
                os.close(src)
        else:
            raise ModelError(f"{path}: not a file, directory or symlink (mode {st.st_mode:o})")
        return node_id

    def node_at(self, path: Path) -> int:
        """The node behind a backing path (it must have been made through the filesystem)."""
        return self.node_of(os.lstat(path))

    def node_of(self, st: os.stat_result) -> int:
        try:
            return self.by_ino[st.st_ino]
        except KeyError:
            raise ModelError(f"backing inode {st.st_ino} was not made through the "
                             "power-cut filesystem") from None

    def created(self, st: os.stat_result, target: str = "") -> int:
        """A new file, directory or symlink: durable content empty, durable entries none."""
        if stat.S_ISDIR(st.st_mode):
            return self._new(st.st_ino, Node("dir", stat.S_IMODE(st.st_mode)))
        if stat.S_ISLNK(st.st_mode):
            return self._new(st.st_ino, Node("symlink", 0o777, target=target))
        node_id = self._new(st.st_ino, Node("file", stat.S_IMODE(st.st_mode)))
        os.close(os.open(self.shadow / str(node_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600))
        return node_id

    def name_gone(self, st: os.stat_result) -> None:
        """A name of the node ``st`` (as it was before) is gone; with its last name gone,
        the backing inode may be reused for a new node (the model keeps the old one)."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self.by_ino.pop(st.st_ino, None)

    def chmod(self, node_id: int, mode: int) -> None:
        self.nodes[node_id].mode = stat.S_IMODE(mode)

    # ---- data -----------------------------------------------------------------------------

    def wrote(self, node_id: int, offset: int, data: bytes) -> None:
        """A write (rule 5 may keep the last one at a cut)."""
        node = self.nodes[node_id]
        node.dirty.append((offset, offset + len(data)))
        last = node.last_write
        if last is not None and last[0] + len(last[1]) == offset \
                and len(last[1]) + len(data) <= MAX_LAST_WRITE:
            node.last_write = (last[0], last[1] + bytes(data))  # one write, split by the kernel
        else:
            node.last_write = (offset, bytes(data))

    def truncated(self, node_id: int, old_size: int, new_size: int) -> None:
        node = self.nodes[node_id]
        node.dirty.append((min(old_size, new_size), max(old_size, new_size)))
        node.last_write = None

    def synced(self, node_id: int, fd: int) -> None:
        """Rule 2: the file's content as it is now (read through ``fd``) becomes durable."""
        node = self.nodes[node_id]
        if node.kind != "file":
            return
        self._write_shadow(node_id, fd, _merged(node.dirty), os.fstat(fd).st_size)
        node.dirty, node.last_write = [], None

    def dir_synced(self, node_id: int, fd: int) -> None:
        """Rule 3: the directory's entries as they are now (listed through ``fd``) are durable."""
        entries = {}
        for name in sorted(os.listdir(fd)):
            entries[name] = self.node_of(os.stat(name, dir_fd=fd, follow_symlinks=False))
        self.nodes[node_id].entries = entries

    def _write_shadow(self, node_id: int, src: int, ranges: list[tuple[int, int]], size: int,
                      fresh: bool = False) -> None:
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        dst = os.open(self.shadow / str(node_id), flags, 0o600)
        try:
            before = os.fstat(dst).st_size
            for start, end in ranges:
                _copy_range(src, dst, start, min(end, size), before)
            os.ftruncate(dst, size)
        finally:
            os.close(dst)

    # ---- the cut --------------------------------------------------------------------------

    def materialize(self, out: Path, seed: int) -> dict[str, Any]:
        """Write the tree a cut leaves into ``out`` (rule 5); return what was kept of what."""
        out.mkdir(parents=True)
        report: dict[str, Any] = {"seed": seed, "files": 0, "dirs": 0, "last_writes": [],
                                  "skipped": []}
        _Emitter(self, random.Random(seed), report).directory(self.root, out, "")
        return report


class _Emitter:
    """One walk of the durable tree from the root, writing each node once."""

    def __init__(self, model: Model, rng: random.Random, report: dict[str, Any]) -> None:
        self.model, self.rng, self.report = model, rng, report
        self.written: dict[int, Path] = {}

    def directory(self, node_id: int, path: Path, rel: str) -> None:
        self.written[node_id] = path
        for name, child_id in self.model.nodes[node_id].entries.items():
            child, child_path, child_rel = self.model.nodes[child_id], path / name, rel + "/" + name
            if child.kind == "dir":
                if child_id in self.written:  # rule 3 can leave a directory under two names
                    self.report["skipped"].append(child_rel)
                    continue
                child_path.mkdir(mode=0o700)
                self.directory(child_id, child_path, child_rel)
                os.chmod(child_path, child.mode)
                self.report["dirs"] += 1
            elif child.kind == "symlink":
                os.symlink(child.target, child_path)
            elif child_id in self.written:
                os.link(self.written[child_id], child_path)
            else:
                self.file(child_id, child_path, child_rel)

    def file(self, node_id: int, path: Path, rel: str) -> None:
        node = self.model.nodes[node_id]
        src = os.open(self.model.shadow / str(node_id), os.O_RDONLY)
        dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(src).st_size
            _copy_range(src, dst, 0, size, 0)
            os.ftruncate(dst, size)
            if node.last_write is not None:
                self._last_write(dst, node.last_write, rel)
        finally:
            os.close(src)
            os.close(dst)
        os.chmod(path, node.mode)
        self.written[node_id] = path
        self.report["files"] += 1

    def _last_write(self, fd: int, last: tuple[int, bytes], rel: str) -> None:
        """Rule 5: the last unsynced write is dropped, kept whole, or torn at a sector."""
        offset, data = last
        boundaries = list(range((offset // SECTOR + 1) * SECTOR, offset + len(data), SECTOR))
        fate = self.rng.choice(("dropped", "whole", "torn") if boundaries else ("dropped", "whole"))
        kept = {"dropped": 0, "whole": len(data)}.get(fate, 0)
        if fate == "torn":
            kept = self.rng.choice(boundaries) - offset
        if kept:
            os.pwrite(fd, data[:kept], offset)
        self.report["last_writes"].append({"path": rel, "offset": offset, "length": len(data),
                                           "kept": kept, "fate": fate})


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _copy_range(src: int, dst: int, start: int, end: int, zero_below: int) -> None:
    """Copy ``src``'s bytes in ``[start, end)`` to ``dst``, keeping holes holes.

    A hole of ``src`` is written as zeros only where ``dst`` may hold data
    (below ``zero_below``, its size before); past that, the final truncate
    leaves zeros anyway, and a slot-sized file stays sparse.
    """
    pos = start
    while pos < end:
        data = _seek(src, pos, os.SEEK_DATA, end)
        if pos < min(data, zero_below):
            _zeros(dst, pos, min(data, zero_below))
        if data >= end:
            return
        hole = _seek(src, data, os.SEEK_HOLE, end)
        while data < hole:
            chunk = os.pread(src, min(_CHUNK, hole - data), data)
            if not chunk:
                return
            os.pwrite(dst, chunk, data)
            data += len(chunk)
        pos = hole


def _seek(fd: int, pos: int, whence: int, end: int) -> int:
    try:
        return min(os.lseek(fd, pos, whence), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after pos
            return end
        raise


def _zeros(fd: int, start: int, end: int) -> None:
    while start < end:
        n = min(_CHUNK, end - start)
        os.pwrite(fd, bytes(n), start)
        start += n
