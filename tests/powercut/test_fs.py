"""The power-cut filesystem checked against each of its rules (``tests/powercut/model.py``).

Every test does real operations through a real FUSE mount, cuts the power and
reads the tree the cut leaves. A rule that stopped holding would let the
device tests pass over a filesystem that keeps what a real power cut loses.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.powercut.mount import TOOLS, PowercutMount

pytestmark = pytest.mark.needs_tool(*TOOLS)


@dataclass
class Rig:
    """A mounted power-cut filesystem over a backing dir that holds ``old`` (durable)."""

    mnt: Path
    fs: PowercutMount
    out: Path

    def cut(self, seed: int = 0) -> Path:
        """Cut the power (once) and return the tree a cut with ``seed`` leaves."""
        if not self.fs.status()["frozen"]:
            self.fs.cut()
        tree = self.out / f"seed-{seed}"
        self.fs.materialize(tree, seed)
        return tree


@pytest.fixture
def rig(tmp_path: Path, powercut: Callable[..., PowercutMount]) -> Iterator[Rig]:
    backing = tmp_path / "backing"
    (backing / "sub").mkdir(parents=True)
    (backing / "old").write_bytes(b"old content\n")
    (tmp_path / "out").mkdir()
    fs = powercut(backing, tmp_path / "mnt")
    yield Rig(tmp_path / "mnt", fs, tmp_path / "out")
    assert fs.status()["errors"] == []


def write(path: Path, data: bytes, *, sync: bool = False, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def listing(tree: Path) -> dict[str, bytes | None]:
    """Every path of a tree (relative) with a file's bytes, ``None`` for a directory."""
    return {str(p.relative_to(tree)): None if p.is_dir() else p.read_bytes()
            for p in sorted(tree.rglob("*"))}


def test_what_was_there_at_mount_time_is_durable(rig: Rig) -> None:
    assert listing(rig.cut()) == {"old": b"old content\n", "sub": None}


def test_file_data_survives_a_cut_only_from_its_fsync(rig: Rig) -> None:
    write(rig.mnt / "old", b"OLD", sync=True)
    write(rig.mnt / "old", b"new, never synced", flags=os.O_TRUNC)

    assert (rig.mnt / "old").read_bytes() == b"new, never synced"  # the passthrough
    # The truncate is lost; the last write is dropped or kept whole (it holds no boundary).
    assert {(rig.cut(seed) / "old").read_bytes() for seed in range(12)} == {
        b"OLD content\n", b"new, never synced"}


def test_a_truncate_is_durable_at_the_fsync_after_it(rig: Rig) -> None:
    os.truncate(rig.mnt / "old", 3)
    assert (rig.mnt / "old").read_bytes() == b"old"
    assert (rig.cut() / "old").read_bytes() == b"old content\n"


def test_a_synced_truncate_survives(rig: Rig) -> None:
    fd = os.open(rig.mnt / "old", os.O_RDWR)
    os.ftruncate(fd, 3)
    os.fsync(fd)
    os.ftruncate(fd, 8)  # grows again, not synced
    os.close(fd)
    assert (rig.cut() / "old").read_bytes() == b"old"


def test_a_file_created_and_fsynced_is_gone_unless_its_directory_is_fsynced(rig: Rig) -> None:
    write(rig.mnt / "sub" / "synced", b"data", sync=True)
    write(rig.mnt / "sub" / "listed", b"listed")
    fsync_dir(rig.mnt / "sub")
    write(rig.mnt / "sub" / "late", b"after the directory's fsync", sync=True)

    tree = listing(rig.cut())
    assert tree["sub/synced"] == b"data"
    assert tree["sub/listed"] in (b"", b"listed")  # named, but its data was never synced
    assert "sub/late" not in tree


def test_a_rename_without_a_directory_fsync_is_undone(rig: Rig) -> None:
    write(rig.mnt / "tmp", b"new", sync=True)
    os.replace(rig.mnt / "tmp", rig.mnt / "old")
    tree = listing(rig.cut())
    assert tree["old"] == b"old content\n" and "tmp" not in tree


def test_the_atomic_write_pattern_survives_once_the_directory_is_fsynced(rig: Rig) -> None:
    write(rig.mnt / "tmp", b"new", sync=True)
    os.replace(rig.mnt / "tmp", rig.mnt / "old")
    fsync_dir(rig.mnt)
    tree = listing(rig.cut())
    assert tree["old"] == b"new" and "tmp" not in tree


def test_an_unlink_without_a_directory_fsync_is_undone(rig: Rig) -> None:
    os.unlink(rig.mnt / "old")
    write(rig.mnt / "sub" / "gone", b"x", sync=True)
    fsync_dir(rig.mnt / "sub")
    os.unlink(rig.mnt / "sub" / "gone")
    fsync_dir(rig.mnt / "sub")

    tree = listing(rig.cut())
    assert tree["old"] == b"old content\n"
    assert "sub/gone" not in tree


def test_a_file_in_a_new_directory_needs_both_directories_fsynced(rig: Rig) -> None:
    (rig.mnt / "new").mkdir()
    write(rig.mnt / "new" / "f", b"f", sync=True)
    fsync_dir(rig.mnt / "new")
    write(rig.mnt / "sub" / "inner-dir-only", b"x", sync=True)
    assert "new" not in listing(rig.cut(seed=0))


def test_a_new_directory_fsynced_in_its_parent_holds_what_it_fsynced(
        tmp_path: Path, powercut: Callable[..., PowercutMount]) -> None:
    backing = tmp_path / "b"
    backing.mkdir()
    fs = powercut(backing, tmp_path / "m")
    mnt = tmp_path / "m"
    (mnt / "new").mkdir()
    (mnt / "new" / "empty-dir").mkdir()
    write(mnt / "new" / "f", b"f", sync=True)
    fsync_dir(mnt / "new")
    fsync_dir(mnt)
    write(mnt / "new" / "unlisted", b"u", sync=True)
    fs.cut()
    fs.materialize(tmp_path / "tree", 0)
    assert listing(tmp_path / "tree") == {"new": None, "new/empty-dir": None, "new/f": b"f"}


def test_o_append_writes_land_at_the_end_and_survive_from_their_fsync(rig: Rig) -> None:
    fd = os.open(rig.mnt / "old", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"first\n")
    os.fsync(fd)
    os.write(fd, b"second\n")
    os.close(fd)
    assert (rig.mnt / "old").read_bytes() == b"old content\nfirst\nsecond\n"

    seen = {(rig.cut(seed) / "old").read_bytes() for seed in range(12)}
    assert seen == {b"old content\nfirst\n", b"old content\nfirst\nsecond\n"}


def test_the_last_unsynced_write_is_dropped_kept_or_torn_at_a_512_byte_boundary(
        rig: Rig) -> None:
    synced = bytes(range(256)) * 8  # 2048 bytes, durable
    first, last = b"A" * 700, b"B" * 3000  # neither synced; the last one starts at 1000
    fd = os.open(rig.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, synced)
    os.fsync(fd)
    os.pwrite(fd, first, 100)
    os.pwrite(fd, last, 1000)
    os.close(fd)
    fsync_dir(rig.mnt)

    rig.fs.cut()
    kept_lengths = set()
    for seed in range(60):
        report = rig.fs.materialize(rig.out / f"seed-{seed}", seed)
        kept = report["last_writes"][0]["kept"]
        expected = bytearray(synced)
        expected[1000:1000 + kept] = last[:kept]
        assert (rig.out / f"seed-{seed}" / "f").read_bytes() == expected, seed
        assert kept in (0, len(last)) or (1000 + kept) % 512 == 0, kept
        kept_lengths.add(kept)
    # Dropped, kept whole, and torn at each boundary inside the write (1024, 1536, ... 3584).
    assert kept_lengths == {0, len(last), 24, 536, 1048, 1560, 2072, 2584}


def test_a_write_split_by_the_kernel_is_torn_as_one_write(rig: Rig) -> None:
    fd = os.open(rig.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 3900)
    os.fsync(fd)
    record = b"r" * 699 + b"\n"
    os.write(fd, record)  # crosses the page at 4096: the kernel sends two writes
    os.close(fd)
    fsync_dir(rig.mnt)
    rig.fs.cut()
    kept = {rig.fs.materialize(rig.out / f"s{seed}", seed)["last_writes"][0]["kept"]
            for seed in range(30)}
    assert kept == {0, 196, 700}  # dropped, torn at 4096, whole: never the end alone
    for seed in range(30):
        data = (rig.out / f"s{seed}" / "f").read_bytes()
        assert b"\0" not in data and data == (b"x" * 3900 + record)[:len(data)], seed


def test_the_same_seed_gives_the_same_tree(rig: Rig) -> None:
    for name in ("a", "b", "c"):
        write(rig.mnt / name, os.urandom(5000))
    fsync_dir(rig.mnt)
    rig.fs.cut()
    reports = [rig.fs.materialize(rig.out / f"run-{n}", 7) for n in range(2)]
    assert reports[0]["last_writes"] == reports[1]["last_writes"]
    assert listing(rig.out / "run-0") == listing(rig.out / "run-1")


def test_fdatasync_makes_data_durable_like_fsync(rig: Rig) -> None:
    fd = os.open(rig.mnt / "old", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"via fdatasync")
    os.fdatasync(fd)
    os.close(fd)
    assert (rig.cut() / "old").read_bytes() == b"via fdatasync"


def test_sync_and_syncfs_make_nothing_durable(rig: Rig) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(rig.mnt / "old", os.O_WRONLY)
    os.pwrite(fd, b"OLD", 0)  # not the last write: only fsync could keep it
    os.pwrite(fd, b"C", 4)
    write(rig.mnt / "sub" / "new", b"new", sync=True)  # only its directory's fsync names it
    try:
        assert libc.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    os.sync()
    for seed in range(6):
        tree = listing(rig.cut(seed))
        assert tree["old"] in (b"old content\n", b"old Content\n"), tree
        assert "sub/new" not in tree


def test_a_renamed_or_linked_file_keeps_its_inode_and_content(rig: Rig) -> None:
    os.link(rig.mnt / "old", rig.mnt / "sub" / "link")
    fsync_dir(rig.mnt / "sub")
    write(rig.mnt / "old", b"through the first name", sync=True, flags=os.O_TRUNC)
    write(rig.mnt / "replacement", b"replacement", sync=True)
    os.replace(rig.mnt / "replacement", rig.mnt / "sub" / "link")  # the old inode loses a name

    tree = rig.cut()
    assert (tree / "sub" / "link").read_bytes() == b"through the first name"
    assert os.path.samefile(tree / "old", tree / "sub" / "link")


def test_a_file_replaced_without_a_directory_fsync_keeps_its_durable_content(
        rig: Rig) -> None:
    write(rig.mnt / "tmp", b"new", sync=True)
    os.replace(rig.mnt / "tmp", rig.mnt / "old")  # old's inode has no name left
    write(rig.mnt / "reuse", b"a new file may reuse the backing inode", sync=True)
    fsync_dir(rig.mnt / "sub")
    assert (rig.cut() / "old").read_bytes() == b"old content\n"


def test_an_unlinked_open_file_can_still_be_written_and_synced(rig: Rig) -> None:
    fd = os.open(rig.mnt / "old", os.O_RDWR)
    os.unlink(rig.mnt / "old")
    os.pwrite(fd, b"OLD", 0)
    os.ftruncate(fd, 5)
    os.fsync(fd)
    assert os.pread(fd, 10, 0) == b"OLD c"
    os.close(fd)
    assert (rig.cut() / "old").read_bytes() == b"OLD c"  # the unlink was not made durable


def test_after_a_cut_every_operation_fails(rig: Rig) -> None:
    rig.fs.cut()
    for attempt in (lambda: (rig.mnt / "x").write_bytes(b"x"),
                    lambda: (rig.mnt / "old").read_bytes(),
                    lambda: os.listdir(rig.mnt / "sub")):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == 5  # EIO


def test_an_armed_cut_stops_the_power_at_the_nth_changing_operation(rig: Rig) -> None:
    rig.fs.arm(after=4)
    fd = os.open(rig.mnt / "old", os.O_WRONLY | os.O_TRUNC)  # 1: the truncate
    os.write(fd, b"synced")  # 2
    os.fsync(fd)  # 3
    with pytest.raises(OSError):
        os.write(fd, b" and more")  # 4: the power is off
    os.close(fd)
    status = rig.fs.status()
    assert status["frozen"] and status["ops"] == 3 and status["cut_at"] == 4
    assert (rig.cut() / "old").read_bytes() == b"synced"


def test_a_cut_armed_on_writes_under_a_path_comes_right_after_the_nth_one(rig: Rig) -> None:
    rig.fs.arm(after=2, writes_under="/sub/")
    write(rig.mnt / "elsewhere", b"not counted", sync=True)
    fd = os.open(rig.mnt / "sub" / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    fsync_dir(rig.mnt / "sub")
    os.write(fd, b"first\n")
    os.fsync(fd)
    os.write(fd, b"second, cut before its fsync\n")
    with pytest.raises(OSError):
        os.fsync(fd)
    os.close(fd)
    assert rig.fs.status()["frozen"]
    assert {rig.fs.materialize(rig.out / f"s{seed}", seed)["last_writes"][0]["fate"]
            for seed in range(8)} == {"dropped", "whole"}  # 29 bytes hold no boundary


def test_a_large_sparse_file_stays_sparse_and_exact(
        tmp_path: Path, powercut: Callable[..., PowercutMount]) -> None:
    backing = tmp_path / "b"
    backing.mkdir()
    with open(backing / "slot", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"identity")
    fs = powercut(backing, tmp_path / "m")
    block = os.urandom(1 << 20)
    fd = os.open(tmp_path / "m" / "slot", os.O_WRONLY)
    os.pwrite(fd, block, 1 << 20)
    os.fdatasync(fd)
    os.pwrite(fd, block, 8 << 20)  # not synced
    os.close(fd)
    fs.cut()
    fs.materialize(tmp_path / "tree", 3)
    slot = tmp_path / "tree" / "slot"
    with open(slot, "rb") as f:
        assert f.seek(0, os.SEEK_END) == 64 << 20
        assert os.pread(f.fileno(), 1 << 20, 1 << 20) == block
        assert os.pread(f.fileno(), 8, 32 << 20) == b"identity"
    assert slot.stat().st_blocks * 512 < 8 << 20  # holes stayed holes
