"""A service's data, copied before its switch and put back when the switch is undone.

A service artifact may declare its data directory (``data_dir`` in the signed
metadata, ``docs/channel.md``), relative to the device's service data root:
``/var/lib/kruxos/service-data`` on a real device, ``DIR/service-data`` beside
the data dir on the simulated device (never the data dir, which updates never
touch, and never the updater's own state). A new version may migrate that data
when it starts; so before the switch the data is copied, one copy per release
the service is switched away from (as snapd keeps one per revision), into the
service store::

    STORE/copies/NAME/VERSION             the data as it was while VERSION ran
    STORE/copies/NAME/.VERSION.tmp-PID    a copy being made (removed by the next open)
    STORE/copies/NAME/.replaced-VERSION   migrated data moved aside by a put-back

**Copy** (:meth:`DataCopies.copy`): every file and directory is written into
the temporary directory and fsynced, then the directory is renamed to
``VERSION`` (an older copy of that version is replaced) and its parent fsynced.
A crash before the rename leaves only a temporary directory: no copy, and no
switch either, since the switch follows the copy.

**Put back** (:meth:`DataCopies.put_back`), before the old service restarts:
the migrated directory is renamed aside, the copy renamed into its place, both
parents fsynced, then what was aside removed. Each step is a rename, so a crash
leaves the data either migrated (the copy still there: the put-back runs again)
or put back (no copy any more: nothing to do); never a mix. A rename needs the
store and the service data root on one filesystem, as both are by default.

The failpoints ``service-data.*`` (:mod:`reconciler.failpoints`) kill the
process at each step for the tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from reconciler.durable import fsync_dir, make_dirs
from reconciler.errors import StateError
from reconciler.failpoints import failpoint

#: The service data root on a real device (the updater's partition, beside the store).
DEVICE_DATA_ROOT = Path("/var/lib/kruxos/service-data")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")
_TEMP = re.compile(r"^\.(.+)\.tmp-[0-9]+$")
_ASIDE = ".replaced-"


def sim_data_root(device_dir: Path) -> Path:
    """The simulated device's service data root: ``DIR/service-data``, beside ``DIR/data``."""
    return Path(device_dir) / "service-data"


class DataCopies:
    """The copies of the services' data under ``STORE/copies`` (module docstring)."""

    def __init__(self, store_dir: Path) -> None:
        self.directory = Path(store_dir) / "copies"

    def path(self, name: str, version: str) -> Path:
        """Where the copy of ``name``'s data from while ``version`` ran is kept."""
        if not _VERSION.match(version) or "/" in name or name.startswith("."):
            raise StateError(f"service data: {name[:40]!r} {version[:40]!r} names no copy")
        return self.directory / name / version

    def has(self, name: str, version: str) -> bool:
        """Whether a whole copy of ``name``'s data from ``version`` is kept."""
        return self.path(name, version).is_dir()

    def recover(self) -> list[str]:
        """Remove the copies a crash cut off (never renamed into place: never used)."""
        done = []
        for temp in sorted(self.directory.glob("*/.*.tmp-*")):
            if _TEMP.match(temp.name) and temp.is_dir() and not temp.is_symlink():
                remove_tree(temp)
                done.append(f"removed the unfinished data copy {temp.parent.name}/{temp.name}")
        return done

    def copy(self, name: str, version: str, source: Path) -> Path:
        """Copy ``source`` (absent: an empty directory) to the copy of ``version``, durably."""
        target = self.path(name, version)
        make_dirs(target.parent)
        temp = target.with_name(f".{version}.tmp-{os.getpid()}")
        if temp.exists():
            remove_tree(temp)
        _copy_tree(source, temp)
        failpoint("service-data.copied")
        if target.exists():
            remove_tree(target)  # an older copy of that version: this one is newer
        os.rename(temp, target)
        failpoint("service-data.renamed")
        fsync_dir(target.parent)
        return target

    def put_back(self, name: str, version: str, live: Path) -> bool:
        """Make the copy of ``version`` the service's data at ``live`` again; ``False`` when
        there is no copy (put back before a crash, or none was made: the data never left)."""
        copy = self.path(name, version)
        aside = copy.with_name(f"{_ASIDE}{version}")
        done = copy.is_dir()
        if done:
            if os.path.lexists(live):
                if aside.exists():
                    remove_tree(aside)
                _rename(live, aside)
                failpoint("service-data.moved-aside")
            make_dirs(live.parent)
            _rename(copy, live)
            fsync_dir(live.parent)
            fsync_dir(copy.parent)
            failpoint("service-data.put-back")
        if aside.exists():
            remove_tree(aside)
            fsync_dir(aside.parent)
        return done

    def prune(self, name: str, keep: set[str]) -> list[str]:
        """Drop the copies of ``name`` of versions not in ``keep``; what was removed."""
        removed = []
        for copy in sorted((self.directory / name).glob("*")):
            if copy.name in keep or copy.name.startswith("."):
                continue
            remove_tree(copy)
            removed.append(f"copies/{name}/{copy.name}")
        if removed:
            fsync_dir(self.directory / name)
        return removed


def _rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise StateError(f"service data: cannot rename {src} to {dst} ({exc.strerror}); the "
                         "store and the service data root must be on one filesystem") from exc


def _copy_tree(source: Path, target: Path) -> None:
    """``source`` into a new ``target``: files fsynced, then every directory, deepest first."""
    os.mkdir(target, 0o750)
    if not source.is_dir():
        fsync_dir(target)
        return
    directories = [target]
    for here, dirs, files in os.walk(source):
        into = target / Path(here).relative_to(source)
        for name in dirs:
            src = Path(here) / name
            if src.is_symlink():
                os.symlink(os.readlink(src), into / name)
                continue
            os.mkdir(into / name, src.stat().st_mode & 0o7777)
            directories.append(into / name)
        for name in files:
            _copy_file(Path(here) / name, into / name)
    for directory in reversed(directories):
        fsync_dir(directory)


def _copy_file(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    shutil.copy2(src, dst, follow_symlinks=False)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(directory: Path) -> None:
    """Remove a directory tree without following its links."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
