"""The device's service store: verified service artifacts, and per root release and service
which one is current, which was before, and whether the switch is still uncommitted.

Where it lives: a directory of its own for the updater, ``/var/lib/kruxos/services``
on a real device (:data:`DEVICE_DIR`) and ``DIR/services`` beside the data dir
on the simulated device (:func:`sim_dir`); never inside the data dir, which
updates never touch, and never in a slot, which is read-only::

    STORE/
      objects/SHA256                       an artifact, whole and verified, named by content
      objects/.SHA256.partial              an artifact being written (removed by the next open)
      roots/ROOT_SHA256/NAME/record.json   the service's record on that root image (the truth)
      roots/ROOT_SHA256/NAME/current       symlink to ../../../objects/SHA256: what runs
      copies/NAME/VERSION                  a service's data before a switch away from VERSION
                                           (:mod:`reconciler.service_data`)

**Overlays belong to a root release** (issue 14): the records live under the
SHA-256 of the root image they were made on, so a slot sees only the overlays
made for its own root image; after a slot update the new image carries its
own services and the old root's overlays no longer apply; after a rollback to
a slot, the overlays made for that slot's release apply again.
:meth:`ServiceStore.retire` drops the roots no slot holds any more.

**The switch** (current, previous and the uncommitted marker in one record,
so one atomic rename switches all three)::

    stage: each block's SHA-256 == its signed hash? ─► write it to .SHA.partial
           ─► fsync ─► whole SHA-256 and size == signed? ─► rename to objects/SHA, fsync dir
    switch: record {current: new, previous: old current, uncommitted: true}
            written to a temp file, fsynced, renamed, the directory fsynced (durable.py)
            ─► the ``current`` link made to agree: temp symlink, rename, fsync the directory
    commit: record {uncommitted: false}          restore: record {current: previous}, link

A crash at any point is resolved by the next open (:class:`ServiceStore`'s
constructor): partial artifacts and temporary files are removed (the step they
belonged to never happened: rolled back), and every ``current`` link is made to
agree with its record (a record renamed before its link: rolled forward). The
record is the only truth, and it is always whole, old or new: never a half
state. The failpoints ``service.*``, ``service-record.*`` and ``service-link.*``
(:mod:`reconciler.failpoints`) kill the process at each step for the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.durable import (
    atomic_write_json,
    create_file,
    fsync_dir,
    make_dirs,
    sweep_temporaries,
)
from reconciler.errors import ReleaseError, StateError
from reconciler.failpoints import failpoint
from reconciler.release.metadata import SERVICE_NAME, ServiceArtifact
from reconciler.service_data import DataCopies

#: Where the store lives on a real device: the updater's own partition.
DEVICE_DIR = Path("/var/lib/kruxos/services")
RECORD = "record.json"
LINK = "current"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL = re.compile(r"^\.[0-9a-f]{64}\.partial$")
#: A reader hands over at most this many bytes a call (a file, a response stream).
Reader = Callable[[int], bytes]


def sim_dir(device_dir: Path) -> Path:
    """The simulated device's store: ``DIR/services``, beside ``DIR/data``, not inside it."""
    return device_dir / "services"


@dataclass(frozen=True)
class Entry:
    """One artifact as a record names it, with the root release it was installed on."""

    name: str
    version: str
    sha256: str
    size: int
    root_version: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "size": self.size,
                "root_version": self.root_version}


@dataclass(frozen=True)
class Record:
    """A service on one root image: what runs, what ran before, and whether the switch to
    ``current`` is still uncommitted (not yet confirmed healthy, to be committed or restored).

    ``current`` is ``None`` for a service an uncommitted update removed.
    """

    name: str
    current: Entry | None
    previous: Entry | None = None
    uncommitted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"current": None if self.current is None else self.current.to_json(),
                "previous": None if self.previous is None else self.previous.to_json(),
                "uncommitted": self.uncommitted}


def _entry(name: str, value: Any, where: Path) -> Entry | None:
    if value is None:
        return None
    try:
        entry = Entry(name, str(value["version"]), str(value["sha256"]), int(value["size"]),
                      str(value["root_version"]))
    except (TypeError, KeyError, ValueError) as exc:
        raise StateError(f"service store: {where}: not a service record ({exc})") from exc
    if not _HEX64.match(entry.sha256):
        raise StateError(f"service store: {where}: not a service record (sha256)")
    return entry


def _read_record(path: Path, name: str) -> Record | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        uncommitted = doc["uncommitted"]
        current, previous = doc["current"], doc["previous"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"service store: {path}: not a service record ({exc})") from exc
    if not isinstance(uncommitted, bool):
        raise StateError(f"service store: {path}: not a service record (uncommitted)")
    return Record(name, _entry(name, current, path), _entry(name, previous, path), uncommitted)


def read_overlays(directory: Path, root_sha256: str) -> dict[str, Record]:
    """The records of the overlays made on that root image, without opening the store.

    For readers (``observe``, status): nothing is created or repaired, so a
    reader never races the daemon's staging; the records are the truth, links
    follow them. An absent store has no overlays.
    """
    if not _HEX64.match(root_sha256):
        return {}
    found = {}
    for service_dir in sorted((Path(directory) / "roots" / root_sha256).glob("*")):
        record = _read_record(service_dir / RECORD, service_dir.name)
        if record is not None:
            found[service_dir.name] = record
    return found


def _check_name(name: str) -> None:
    if not SERVICE_NAME.match(name) or len(name) > 64:
        raise ReleaseError(f"service store: {name[:40]!r} is not a service name")


def _check_root(root_sha256: str) -> None:
    if not _HEX64.match(root_sha256):
        raise ReleaseError(f"service store: {root_sha256[:40]!r} is not a root image SHA-256")


class ServiceStore:
    """The store at ``directory``; opening it resolves what a crash left (module docstring).

    ``data_dir``, when given, is refused as a parent: the seed promises that
    updates never touch ``/data``.
    """

    def __init__(self, directory: Path, data_dir: Path | None = None) -> None:
        self.directory = Path(os.path.abspath(directory))
        if data_dir is not None and self.directory.is_relative_to(os.path.abspath(data_dir)):
            raise StateError(f"service store: {self.directory} is inside the data dir "
                             f"{data_dir}; it needs a directory of its own")
        self.objects = self.directory / "objects"
        self.roots = self.directory / "roots"
        self.copies = DataCopies(self.directory)
        make_dirs(self.objects)
        make_dirs(self.roots)
        self.recovered: list[str] = self._recover()

    # ---- opening: resolve what a crash left ----------------------------------------------

    def _recover(self) -> list[str]:
        """Remove partial artifacts and temporary files; make every link agree with its
        record. Returns what was done, one line each (for the audit trail)."""
        done = []
        for path in sorted(self.objects.iterdir()):
            if _PARTIAL.match(path.name):
                path.unlink()
                done.append(f"removed the partial artifact {path.name}")
        for link in sorted(self.roots.glob(f"*/*/.{LINK}.tmp-*")):
            if link.is_symlink():  # a temporary link, dangling or not
                link.unlink()
                done.append(f"removed {link.relative_to(self.directory)}")
        for part in (self.objects, self.roots):  # never inside copies: a service's own files
            done += [f"removed {part.name}/{name}" for name in sweep_temporaries(part)]
        done += self.copies.recover()
        for service_dir in sorted(self.roots.glob("*/*")):
            if self._repair_link(service_dir):
                done.append(f"{service_dir.relative_to(self.directory)}: {LINK} made to "
                            "agree with its record")
        if done:
            fsync_dir(self.objects)
        return done

    def _repair_link(self, service_dir: Path) -> bool:
        """Point ``current`` at what the record says; ``True`` if it did not."""
        record = _read_record(service_dir / RECORD, service_dir.name)
        want = None if record is None or record.current is None else record.current.sha256
        if self._link_target(service_dir) == want:
            return False
        self._set_link(service_dir, want)
        return True

    def _link_target(self, service_dir: Path) -> str | None:
        try:
            return Path(os.readlink(service_dir / LINK)).name
        except FileNotFoundError:
            return None

    def _set_link(self, service_dir: Path, sha256: str | None) -> None:
        """Replace the ``current`` link atomically (temp symlink, rename, fsync dir)."""
        link = service_dir / LINK
        if sha256 is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            fsync_dir(service_dir)
            return
        tmp = service_dir / f".{LINK}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.relpath(self.objects / sha256, service_dir), tmp)
        failpoint("service-link.temp-written")
        os.replace(tmp, link)
        failpoint("service-link.renamed")
        fsync_dir(service_dir)

    # ---- reading ---------------------------------------------------------------------------

    def _service_dir(self, root_sha256: str, name: str) -> Path:
        _check_root(root_sha256)
        _check_name(name)
        return self.roots / root_sha256 / name

    def record(self, root_sha256: str, name: str) -> Record | None:
        """The service's record on that root image, ``None`` if it has no overlay there."""
        return _read_record(self._service_dir(root_sha256, name) / RECORD, name)

    def overlays(self, root_sha256: str) -> dict[str, Record]:
        """Every service overlay made on that root image, by name: what applies when a slot
        holding that image is booted (an old root's overlays do not)."""
        _check_root(root_sha256)
        found = {}
        for service_dir in sorted((self.roots / root_sha256).glob("*")):
            record = _read_record(service_dir / RECORD, service_dir.name)
            if record is not None:
                found[service_dir.name] = record
        return found

    def path_of(self, root_sha256: str, name: str) -> Path:
        """The path a service manager runs: the ``current`` link of the service."""
        return self._service_dir(root_sha256, name) / LINK

    def has(self, sha256: str) -> bool:
        """Whether a whole, verified artifact of that content is in the store."""
        return _HEX64.match(sha256) is not None and (self.objects / sha256).is_file()

    # ---- staging: every block verified before it is written ----------------------------

    def stage(self, artifact: ServiceArtifact, read: Reader) -> Path:
        """Write ``artifact`` from ``read`` into the store, each block checked against its
        signed hash before it is written, the whole SHA-256 and size before it may become
        current; an artifact already there is not written again.

        A refusal raises :class:`ReleaseError` and leaves no partial file.
        """
        target = self.objects / artifact.sha256
        if target.is_file():
            return target
        partial = self.objects / f".{artifact.sha256}.partial"
        fd = create_file(partial, os.O_WRONLY | os.O_TRUNC)
        try:
            with os.fdopen(fd, "wb") as out:
                whole = self._write_verified(artifact, read, out.fileno())
                out.flush()
                os.fsync(out.fileno())
            if whole != artifact.sha256:
                raise ReleaseError(f"service {artifact.name} {artifact.version}: the whole "
                                   f"artifact's SHA-256 {whole[:16]}… is not the signed "
                                   f"{artifact.sha256[:16]}…; it was not installed")
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        fsync_dir(self.objects)
        failpoint("service.staged")
        return target

    def _write_verified(self, artifact: ServiceArtifact, read: Reader, fd: int) -> str:
        """Write each block after its hash matched; the whole SHA-256 of what was written."""
        whole = hashlib.sha256()
        for index, expected in enumerate(artifact.blocks):
            start, end = artifact.block_range(index)
            block = _read_exactly(read, end - start)
            if len(block) != end - start:
                raise ReleaseError(f"service {artifact.name} {artifact.version}: the artifact "
                                   f"ends at byte {start + len(block)}, its signed size is "
                                   f"{artifact.size}; it was not installed")
            if hashlib.sha256(block).hexdigest() != expected:
                raise ReleaseError(f"service {artifact.name} {artifact.version}: block {index} "
                                   f"(bytes {start}-{end - 1}) does not match its signed hash; "
                                   "the block was not written")
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
            whole.update(block)
            failpoint("service.block-written")
        if read(1):
            raise ReleaseError(f"service {artifact.name} {artifact.version}: the artifact is "
                               f"longer than its signed size {artifact.size}; it was not "
                               "installed")
        return whole.hexdigest()

    # ---- switching -------------------------------------------------------------------------

    def switch(self, root_sha256: str, root_version: str, name: str,
               artifact: ServiceArtifact | None) -> Record:
        """Make ``artifact`` (staged first) the service's current one on that root image,
        the current one its previous, uncommitted until :meth:`commit` or :meth:`restore`.

        ``None`` removes the service (uncommitted too: a restore brings it back).
        Refused while an earlier switch of the service is uncommitted.
        """
        old = self.record(root_sha256, name)
        if old is not None and old.uncommitted:
            raise StateError(f"service store: {name}: the switch to "
                             f"{_shown(old.current)} is not committed or restored yet")
        new = None
        if artifact is not None:
            if not self.has(artifact.sha256):
                raise StateError(f"service store: {name} {artifact.version} is not staged")
            new = Entry(name, artifact.version, artifact.sha256, artifact.size, root_version)
        record = Record(name, new, None if old is None else old.current, True)
        self._apply(root_sha256, record)
        return record

    def commit(self, root_sha256: str, name: str) -> Record:
        """The switch proved healthy: ``current`` stays, the record is no longer uncommitted."""
        old = self._uncommitted(root_sha256, name)
        record = Record(name, old.current, old.previous, False)
        self._apply(root_sha256, record)
        return record

    def restore(self, root_sha256: str, name: str) -> Record:
        """The switch failed: the previous artifact is current again (the service removed if
        there was none), committed; the failed one is no longer the previous."""
        old = self._uncommitted(root_sha256, name)
        record = Record(name, old.previous, None, False)
        self._apply(root_sha256, record)
        return record

    def revert(self, root_sha256: str, name: str) -> Record:
        """A person undoes the committed switch: the previous artifact is current again (the
        service removed if there was none), committed, with no previous left."""
        old = self.record(root_sha256, name)
        if old is None or old.uncommitted:
            raise StateError(f"service store: {name} has no committed switch to revert")
        record = Record(name, old.previous, None, False)
        self._apply(root_sha256, record)
        return record

    def _uncommitted(self, root_sha256: str, name: str) -> Record:
        old = self.record(root_sha256, name)
        if old is None or not old.uncommitted:
            raise StateError(f"service store: {name} has no uncommitted switch")
        return old

    def _apply(self, root_sha256: str, record: Record) -> None:
        """The record first (the one atomic switch), then the link that follows it."""
        service_dir = self._service_dir(root_sha256, record.name)
        make_dirs(service_dir)
        atomic_write_json(service_dir / RECORD, record.to_json(), label="service-record")
        self._set_link(service_dir, None if record.current is None else record.current.sha256)

    # ---- retiring --------------------------------------------------------------------------

    def retire(self, keep_roots: set[str]) -> list[str]:
        """Drop the overlays of every root image not in ``keep_roots`` (the slots' images),
        then every artifact no remaining record names; returns what was removed."""
        removed = []
        for root_dir in sorted(self.roots.iterdir()):
            if root_dir.name not in keep_roots:
                _remove_tree(root_dir)
                removed.append(f"roots/{root_dir.name}")
        named = {e.sha256 for root in keep_roots if (self.roots / root).is_dir()
                 for r in self.overlays(root).values() for e in (r.current, r.previous)
                 if e is not None}
        for path in sorted(self.objects.iterdir()):
            if _HEX64.match(path.name) and path.name not in named:
                path.unlink()
                removed.append(f"objects/{path.name}")
        fsync_dir(self.roots)
        fsync_dir(self.objects)
        return removed


def _remove_tree(directory: Path) -> None:
    """Remove a root's overlays: records, links (never followed) and their directories."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    directory.rmdir()


def _shown(entry: Entry | None) -> str:
    return "no artifact (removed)" if entry is None else f"{entry.version}"


def _read_exactly(read: Reader, n: int) -> bytes:
    """``n`` bytes from ``read`` unless it ends first (a stream may hand over less a call)."""
    parts, got = [], 0
    while got < n:
        chunk = read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
