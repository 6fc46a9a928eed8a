"""The power-cut filesystem: a FUSE passthrough that knows what a power cut would keep.

Run as its own process::

    python -m tests.powercut.fs BACKING MOUNTPOINT --shadow DIR --control SOCKET

Every operation on ``MOUNTPOINT`` is done on ``BACKING`` (a passthrough), and
:class:`tests.powercut.model.Model` follows what is durable: the rules are in
that module's docstring and in ``docs/reliability.md``. A test talks to the
process over the Unix socket ``SOCKET``, one JSON request a connection:

- ``{"cmd": "status"}``: ``ops`` (changing operations done so far), ``frozen``,
  ``cut_at``, ``errors`` (internal errors; a test expects none).
- ``{"cmd": "arm", "after": N}``: cut when the N-th changing operation from now
  arrives (it is not done): a seeded, reproducible moment in the device's own
  stream of writes, fsyncs, creates, renames and unlinks.
- ``{"cmd": "arm", "after": N, "writes_under": PREFIX}``: cut right after the
  N-th write to a file whose path starts with ``PREFIX`` (the write is done and
  not synced; the next changing operation, its fsync most likely, is not): the
  moment rule 5 may tear, e.g. an audit record cut off mid-line. A write that
  continues the one before without a gap is not counted (the kernel split one);
  a cut there keeps only the first part.
- ``{"cmd": "cut"}``: cut now.
- ``{"cmd": "materialize", "out": DIR, "seed": S}``: after a cut, write the
  durable tree into ``DIR`` (it must not exist), torn as the seed says; the
  answer says which last writes were kept, torn or dropped.

After a cut the power is off: every operation fails with ``EIO``, so nothing a
process still does can change what was durable, and the test ends the
processes. ``fusermount3 -u MOUNTPOINT`` ends this process.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import mfusepy

from tests.powercut import LIBFUSE3
from tests.powercut.model import Model, ModelError

log = logging.getLogger("powercut")

F = TypeVar("F", bound=Callable[..., Any])

#: Open flags the filesystem handles itself instead of handing them to the backing file.
_OWN_FLAGS = os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC


def _guarded(changes: bool) -> Callable[[F], F]:
    """Run an operation under the filesystem's lock; refuse it after a cut.

    A changing operation counts towards an armed cut; the one that reaches it is
    not done. An error of the model is kept for ``status`` and answered ``EIO``.
    """
    def wrap(method: F) -> F:
        @functools.wraps(method)
        def guarded(self: PowercutFS, *args: Any) -> Any:
            with self.mutex:
                if changes:
                    self.tick()
                elif self.frozen:
                    raise mfusepy.FuseOSError(errno.EIO)
                try:
                    return method(self, *args)
                except ModelError as exc:
                    self.errors.append(f"{method.__name__}{args[:1]}: {exc}")
                    raise mfusepy.FuseOSError(errno.EIO) from exc
        return guarded  # type: ignore[return-value]
    return wrap


class PowercutFS(mfusepy.Operations):  # type: ignore[misc]
    """The passthrough operations; each one that changes something tells the model."""

    use_ns = True

    def __init__(self, model: Model) -> None:
        self.model = model
        self.root = str(model.backing)
        self.mutex = threading.RLock()
        self.frozen = False
        self.ops = 0
        self.cut_at: int | None = None
        self.writes_under: str | None = None
        self.writes_left = 0
        self.errors: list[str] = []
        self.handles: dict[int, int] = {}  # backing descriptor -> model node

    # ---- the power ------------------------------------------------------------------------

    def tick(self) -> None:
        """Count one changing operation; the armed one cuts the power instead."""
        if not self.frozen and self.cut_at is not None and self.ops + 1 >= self.cut_at:
            self.frozen = True
        if self.frozen:
            raise mfusepy.FuseOSError(errno.EIO)
        self.ops += 1

    def _real(self, path: str) -> str:
        return self.root + path

    def init_with_config(self, conn: Any, config: Any) -> None:
        """No ``.fuse_hidden`` files: an unlinked open file is unlinked (its operations get
        the path ``None``; every other operation gets its path)."""
        config.hard_remove = 1

    # ---- reading --------------------------------------------------------------------------

    @_guarded(changes=False)
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path or "/"))
        attrs = {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_guarded(changes=False)
    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    @_guarded(changes=False)
    def opendir(self, path: str) -> int:
        fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
        self.handles[fd] = self.model.node_of(os.fstat(fd))
        return fd

    @_guarded(changes=False)
    def readdir(self, path: str | None, fh: int) -> list[str]:
        return [".", "..", *sorted(os.listdir(fh))]

    def releasedir(self, path: str | None, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
            os.close(fh)
        return 0

    @_guarded(changes=False)
    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    @_guarded(changes=False)
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @_guarded(changes=False)
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.root)
        return {key: getattr(sv, key) for key in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_favail", "f_flag", "f_namemax")}

    # ---- files ----------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            if flags & os.O_TRUNC:
                self.tick()
            elif self.frozen:
                raise mfusepy.FuseOSError(errno.EIO)
            real = self._real(path)
            node_id = self._node(real)
            if flags & os.O_TRUNC:
                self.model.truncated(node_id, os.lstat(real).st_size, 0)
            fd = os.open(real, _backing_flags(flags))
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
            self.handles[fd] = node_id
            return fd

    @_guarded(changes=True)
    def create(self, path: str, mode: int, flags: int) -> int:
        fd = os.open(self._real(path), _backing_flags(flags) | os.O_CREAT | os.O_EXCL, mode)
        self.handles[fd] = self.model.created(os.fstat(fd))
        return fd

    @_guarded(changes=True)
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        last = self.model.nodes[self.handles[fh]].last_write
        continues = last is not None and last[0] + len(last[1]) == offset
        self.model.wrote(self.handles[fh], offset, data)
        written = os.pwrite(fh, data, offset)
        if self.writes_under is not None and not continues \
                and (path or "").startswith(self.writes_under):
            self.writes_left -= 1
            if self.writes_left == 0:
                self.cut_at, self.writes_under = self.ops + 1, None
        return written

    @_guarded(changes=True)
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is None and path is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if fh is not None:
            self.model.truncated(self.handles[fh], os.fstat(fh).st_size, length)
            os.ftruncate(fh, length)
        else:
            real = self._real(path or "/")
            self.model.truncated(self._node(real), os.lstat(real).st_size, length)
            os.truncate(real, length)
        return 0

    @_guarded(changes=True)
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        old = os.fstat(fh).st_size
        if offset + size > old:
            self.model.truncated(self.handles[fh], old, offset + size)
        os.posix_fallocate(fh, offset, size)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # closing makes nothing durable

    def release(self, path: str | None, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
            os.close(fh)
        return 0

    @_guarded(changes=True)
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.model.synced(self.handles[fh], fh)
        return 0

    @_guarded(changes=True)
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.model.dir_synced(self.handles[fh], fh)
        return 0

    # ---- names ----------------------------------------------------------------------------

    @_guarded(changes=True)
    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        self.model.created(os.lstat(self._real(path)))
        return 0

    @_guarded(changes=True)
    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._real(target))
        self.model.created(os.lstat(self._real(target)), target=source)
        return 0

    @_guarded(changes=True)
    def link(self, target: str, source: str) -> int:
        os.link(self._real(source), self._real(target))
        return 0

    @_guarded(changes=True)
    def unlink(self, path: str) -> int:
        st = os.lstat(self._real(path))
        os.unlink(self._real(path))
        self.model.name_gone(st)
        return 0

    @_guarded(changes=True)
    def rmdir(self, path: str) -> int:
        st = os.lstat(self._real(path))
        os.rmdir(self._real(path))
        self.model.name_gone(st)
        return 0

    @_guarded(changes=True)
    def rename(self, old: str, new: str) -> int:
        src, dst = self._real(old), self._real(new)
        moved = os.lstat(src)
        try:
            replaced: os.stat_result | None = os.lstat(dst)
        except FileNotFoundError:
            replaced = None
        os.rename(src, dst)
        if replaced is not None and replaced.st_ino != moved.st_ino:
            self.model.name_gone(replaced)
        return 0

    @_guarded(changes=True)
    def chmod(self, path: str | None, mode: int) -> int:
        real = self._real(path or "/")
        node_id = self._node(real)
        os.chmod(real, stat.S_IMODE(mode))
        self.model.chmod(node_id, mode)
        return 0

    @_guarded(changes=False)
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        os.chown(self._real(path or "/"), uid, gid, follow_symlinks=False)
        return 0

    @_guarded(changes=False)
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        real = self._real(path or "/")
        if times is None:
            os.utime(real, follow_symlinks=False)
        else:
            os.utime(real, ns=times, follow_symlinks=False)
        return 0

    def _node(self, real: str) -> int:
        return self.model.node_of(os.lstat(real))

    # ---- the control socket ---------------------------------------------------------------

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request (see the module docstring)."""
        cmd = request.get("cmd")
        with self.mutex:
            if cmd == "arm" and request.get("writes_under"):
                self.writes_under = str(request["writes_under"])
                self.writes_left = max(1, int(request["after"]))
            elif cmd == "arm":
                self.cut_at = self.ops + max(1, int(request["after"]))
            elif cmd == "cut":
                self.frozen = True
            elif cmd == "materialize":
                if not self.frozen:
                    return {"error": "materialize before a cut: the power is still on"}
                return self.model.materialize(Path(request["out"]), int(request["seed"]))
            elif cmd != "status":
                return {"error": f"unknown command {cmd!r}"}
            return {"ops": self.ops, "frozen": self.frozen, "cut_at": self.cut_at,
                    "errors": list(self.errors)}


def _backing_flags(flags: int) -> int:
    """Open the backing file read-write when writing (``fsync`` reads it back) and without
    ``O_APPEND``: the kernel already turned an append into a write at the end."""
    access = flags & os.O_ACCMODE
    return (flags & ~_OWN_FLAGS & ~os.O_ACCMODE) | (os.O_RDONLY if access == os.O_RDONLY
                                                    else os.O_RDWR)


class _Fuse(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy, handing ``truncate`` the open file too (an ``ftruncate`` of an unlinked file)."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        result: int = self.operations.truncate(None if path is None else path.decode(),
                                               length, fh)
        return result


def serve_control(fs: PowercutFS, sock_path: Path) -> None:
    """Answer control requests on a Unix socket, one JSON line each way per connection."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock_path.unlink(missing_ok=True)
    server.bind(str(sock_path))
    server.listen(4)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rwb") as stream:
                try:
                    answer = fs.command(json.loads(stream.readline()))
                except Exception as exc:  # noqa: BLE001 - the test reads the error
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    threading.Thread(target=loop, name="powercut-control", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powercut.fs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--shadow", type=Path, required=True,
                        help="where the durable content of each file is kept")
    parser.add_argument("--control", type=Path, required=True, help="the control socket")
    args = parser.parse_args(argv)
    if mfusepy.fuse_version_major != 3:
        parser.error(f"needs libfuse 3, found {mfusepy.fuse_version_major}: set "
                     f"FUSE_LIBRARY_PATH={LIBFUSE3}")
    logging.basicConfig(level=logging.WARNING, format="powercut: %(levelname)s %(message)s")
    fs = PowercutFS(Model(args.backing.resolve(), args.shadow.resolve()))
    serve_control(fs, args.control)
    _Fuse(fs, str(args.mountpoint), foreground=True, nothreads=True, fsname="powercut",
          hard_remove=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
