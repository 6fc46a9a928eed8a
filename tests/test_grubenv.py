"""The GRUB environment block: our reader/writer against the real grub-editenv."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.boot import grubenv
from reconciler.errors import BootEnvError

GRUB_EDITENV = shutil.which("grub-editenv")

NAMES = ["KRUXOS_DEFAULT", "KRUXOS_TRIAL", "saved_entry", "next_entry", "x", "boot_once", "é"]
PIECES = ["a", "B", "=", "\\", "\n", "é", "€", "日本", " ", "#", "\\\n", "=\\", "0", "\t", ""]


def editenv(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the real grub-editenv on ``path``."""
    assert GRUB_EDITENV is not None
    return subprocess.run([GRUB_EDITENV, str(path), *args], capture_output=True, check=False)


def editenv_list(path: Path) -> str:
    """What grub-editenv lists; compared as text since values may hold newlines."""
    out = editenv(path, "list")
    assert out.returncode == 0, out.stderr
    return out.stdout.decode("utf-8")


def listing(env: dict[str, str]) -> str:
    """The text ``grub-editenv list`` prints for ``env`` (it prints values unescaped)."""
    return "".join(f"{key}={value}\n" for key, value in env.items())


def random_value(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))


def random_ops(seed: int, count: int) -> list[tuple[str, str, str]]:
    """A seeded sequence of (op, name, value) that stays well inside the block."""
    rng = random.Random(seed)
    return [
        ("unset" if rng.random() < 0.3 else "set", rng.choice(NAMES), random_value(rng))
        for _ in range(count)
    ]


@pytest.mark.needs_tool("grub-editenv")
def test_render_of_empty_env_equals_grub_editenv_create(tmp_path: Path) -> None:
    editenv(tmp_path / "env", "create")
    assert grubenv.render({}) == (tmp_path / "env").read_bytes()


@pytest.mark.needs_tool("grub-editenv")
@pytest.mark.parametrize("seed", range(8))
def test_random_set_unset_sequence_gives_identical_bytes_to_grub_editenv(
    tmp_path: Path, seed: int
) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    editenv(theirs, "create")
    for op, name, value in random_ops(seed, 60):
        args = [f"{name}={value}"] if op == "set" else [name]
        assert editenv(theirs, op, *args).returncode == 0
        if op == "set":
            grubenv.edit(ours, set={name: value})
        else:
            grubenv.edit(ours, unset=[name])
        assert ours.read_bytes() == theirs.read_bytes(), (op, name, value)


@pytest.mark.needs_tool("grub-editenv")
@pytest.mark.parametrize("seed", range(4))
def test_each_reads_what_the_other_wrote(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    env = {name: random_value(rng) for name in rng.sample(NAMES, 5)}
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    grubenv.write_env(ours, env)
    assert editenv_list(ours) == listing(env)
    editenv(theirs, "create")
    editenv(theirs, "set", *(f"{key}={value}" for key, value in env.items()))
    assert grubenv.read_env(theirs) == env


@pytest.mark.needs_tool("grub-editenv")
def test_a_block_filled_to_the_last_byte_is_accepted_by_both(tmp_path: Path) -> None:
    room = grubenv.BLOCK_SIZE - len(grubenv.HEADER) - len("x=\n")
    env = {"x": "v" * room}
    editenv(tmp_path / "theirs", "create")
    assert editenv(tmp_path / "theirs", "set", f"x={env['x']}").returncode == 0
    assert grubenv.render(env) == (tmp_path / "theirs").read_bytes()
    assert grubenv.read_env(tmp_path / "theirs") == env


@pytest.mark.needs_tool("grub-editenv")
def test_overflow_is_refused_like_grub_editenv_refuses_it(tmp_path: Path) -> None:
    room = grubenv.BLOCK_SIZE - len(grubenv.HEADER) - len("x=\n")
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    editenv(theirs, "create")
    editenv(theirs, "set", "keep=me")
    grubenv.edit(ours, set={"keep": "me"})
    before = ours.read_bytes()
    refused = editenv(theirs, "set", f"x={'v' * room}")
    assert refused.returncode == 1
    assert b"environment block too small" in refused.stderr
    with pytest.raises(BootEnvError, match="environment block too small"):
        grubenv.edit(ours, set={"x": "v" * room})
    assert ours.read_bytes() == before == theirs.read_bytes()


@pytest.mark.needs_tool("grub-editenv")
def test_escaped_backslashes_and_newlines_count_toward_the_size_as_grub_editenv_counts(
    tmp_path: Path,
) -> None:
    room = grubenv.BLOCK_SIZE - len(grubenv.HEADER) - len("x=\n")
    fits, too_big = "\\" * (room // 2), "\\" * (room // 2 + 1)
    editenv(tmp_path / "t", "create")
    assert editenv(tmp_path / "t", "set", f"x={fits}").returncode == 0
    assert grubenv.render({"x": fits}) == (tmp_path / "t").read_bytes()
    assert editenv(tmp_path / "t", "set", f"x={too_big}").returncode == 1
    with pytest.raises(BootEnvError):
        grubenv.render({"x": too_big})


def test_set_replaces_in_place_and_unset_drops_the_line(tmp_path: Path) -> None:
    path = tmp_path / "env"
    grubenv.edit(path, set={"a": "1", "b": "2", "c": "3"})
    grubenv.edit(path, set={"a": "long value"}, unset=["b"])
    assert list(grubenv.read_env(path).items()) == [("a", "long value"), ("c", "3")]


def test_values_round_trip_with_escapes_and_unicode() -> None:
    env = {"a": "x=y", "b": "back\\slash\\", "c": "two\nlines\n", "d": "", "e": "日本 €"}
    raw = grubenv.render(env)
    assert b"b=back\\\\slash\\\\\n" in raw and b"c=two\\\nlines\\\n\n" in raw
    assert grubenv.parse(raw) == env


def test_foreign_bytes_that_are_not_utf8_survive_an_edit(tmp_path: Path) -> None:
    raw = grubenv.HEADER + b"foreign=\xff\xfe\n"
    (tmp_path / "env").write_bytes(raw + b"#" * (grubenv.BLOCK_SIZE - len(raw)))
    grubenv.edit(tmp_path / "env", set={"ours": "1"})
    assert (tmp_path / "env").read_bytes().startswith(raw + b"ours=1\n")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"#" * grubenv.BLOCK_SIZE, "header"),
        (grubenv.SIGNATURE[:-1], "header"),
        (grubenv.SIGNATURE, "header"),  # grub-editenv refuses the signature alone too
        (grubenv.HEADER + b"noequals\n" + b"#" * (1024 - len(grubenv.HEADER) - 9), "no '='"),
        (grubenv.HEADER + b"=v\n" + b"#" * (1024 - len(grubenv.HEADER) - 3), "empty name"),
        (grubenv.HEADER + b"x=a\0b\n" + b"#" * (1024 - len(grubenv.HEADER) - 6), "NUL byte"),
        (grubenv.render({}) + b"#", "1025 bytes, more than a GRUB env holds"),
        (b"", "header"),
    ],
)
def test_a_corrupt_block_is_refused_naming_the_file(
    tmp_path: Path, raw: bytes, problem: str
) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(raw)
    with pytest.raises(BootEnvError, match=f"grub env {path}: .*{problem}"):
        grubenv.read_env(path)


@pytest.mark.parametrize("name", ["", "a=b", "#x", "new\nline"])
def test_names_grub_could_not_read_back_are_refused(name: str) -> None:
    with pytest.raises(BootEnvError, match="invalid grub env variable name"):
        grubenv.render({name: "v"})


def test_an_overflowing_edit_leaves_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "env"
    grubenv.edit(path, set={"a": "1"})
    before = path.read_bytes()
    with pytest.raises(BootEnvError, match="environment block too small"):
        grubenv.edit(path, set={"b": "2", "c": "x" * 2000})
    assert path.read_bytes() == before


def test_a_value_no_bytes_stand_for_is_refused_as_a_boot_env_error() -> None:
    with pytest.raises(BootEnvError, match="not writable as UTF-8"):
        grubenv.render({"x": "\ud800"})


def test_a_needless_escape_reads_as_the_byte_and_is_written_back_the_same() -> None:
    raw = grubenv.HEADER + b"odd=\\x\\\n\xff\n"
    block = raw + b"#" * (grubenv.BLOCK_SIZE - len(raw))
    env = grubenv.parse(block)
    assert grubenv.parse(grubenv.render(env)) == env == {"odd": "x\n\udcff"}


def test_a_huge_env_file_is_refused_by_its_size_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    with open(path, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that would not fit in memory
    with pytest.raises(BootEnvError, match=f"grub env {path}: 8589934592 bytes, more than"):
        grubenv.read_env(path)


@pytest.mark.needs_tool("grub-editenv")
@pytest.mark.parametrize("cut", [len(grubenv.SIGNATURE) + 1, 80, 100, 113, 125, 600, 1023])
def test_an_env_cut_short_reads_as_grub_editenv_reads_it(tmp_path: Path, cut: int) -> None:
    """GRUB reads a block of any size that starts with its signature, ignoring a last
    line cut short: so does the backend (the daemon decides by what GRUB boots by)."""
    full = tmp_path / "full"
    subprocess.run(["grub-editenv", str(full), "create"], check=True)
    subprocess.run(["grub-editenv", str(full), "set", "kruxos_default=B", "long=" + "v" * 30,
                    "kruxos_b=good"], check=True)
    cut_path = tmp_path / "cut"
    cut_path.write_bytes(full.read_bytes()[:cut])
    listed = subprocess.run(["grub-editenv", str(cut_path), "list"], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    read = grubenv.read_env(cut_path)
    assert [f"{k}={v}" for k, v in read.items()] == listed, (cut, listed)


@pytest.mark.parametrize(("raw", "expected"), [
    (grubenv.HEADER + b"x=" + b"v" * 40, {}),
    (grubenv.HEADER + b"a=1\nx=a\\", {"a": "1"}),
    (grubenv.SIGNATURE + b"x=1\n", {"x": "1"}),
    (grubenv.render({"a": "1"})[:-10] + b"\nb=2\n", {"a": "1", "b": "2"}),
])
def test_a_last_line_cut_short_is_ignored_and_any_size_is_read(
        raw: bytes, expected: dict[str, str]) -> None:
    assert grubenv.parse(raw) == expected


# -- where the block is written: GRUB reads the file's sectors, never the ext4 journal ------


def test_an_existing_block_is_overwritten_in_place_and_fsynced_before_the_write_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same inode, no temporary file, an fsync of that inode: GRUB (which never replays
    the journal of /boot) reads the new block from the sectors it always read.

    A rename would give GRUB, after a power cut, the old directory entry and the
    old block until the kernel checkpoints the journal."""
    path = tmp_path / "grubenv"
    grubenv.write_env(path, {"KRUXOS_DEFAULT": "A"})
    inode = path.stat().st_ino
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr("reconciler.boot.grubenv.os.fsync", fsync)
    monkeypatch.setattr("reconciler.durable.os.replace",
                        lambda *a: pytest.fail("renamed, not in place"))
    grubenv.write_env(path, {"KRUXOS_DEFAULT": "B", "KRUXOS_TRIAL": ""})
    assert path.stat().st_ino == inode
    assert synced == [inode]
    assert grubenv.read_env(path) == {"KRUXOS_DEFAULT": "B", "KRUXOS_TRIAL": ""}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grubenv"]


@pytest.mark.parametrize("content", [None, b"# GRUB Environment Block\n", b"x" * 2048],
                         ids=["missing", "shorter than a block", "longer than a block"])
def test_a_missing_env_or_one_not_a_block_long_is_replaced_whole(
        tmp_path: Path, content: bytes | None) -> None:
    """Only a whole 1024-byte block is overwritten in place; anything else would leave
    part of the old file behind, so it is replaced by an atomic rename."""
    path = tmp_path / "grubenv"
    if content is not None:
        path.write_bytes(content)
    grubenv.write_env(path, {"KRUXOS_DEFAULT": "B"})
    assert path.stat().st_size == grubenv.BLOCK_SIZE
    assert grubenv.read_env(path) == {"KRUXOS_DEFAULT": "B"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grubenv"]


def test_a_symlinked_env_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(grubenv.render({"KRUXOS_DEFAULT": "A"}))
    path = tmp_path / "grubenv"
    path.symlink_to(target)
    grubenv.write_env(path, {"KRUXOS_DEFAULT": "B"})
    assert not path.is_symlink()
    assert grubenv.read_env(target) == {"KRUXOS_DEFAULT": "A"}
