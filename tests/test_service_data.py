"""A service's data: copied whole before its switch, put back exactly on a restore, and a
SIGKILL at each step of either leaves what the next pass finishes.

The crash tests run the step in a child process armed with ``KRUXOS_FAILPOINTS``
(a real SIGKILL, no ``finally``), then open the store in this process (which
removes an unfinished copy), run the step again as the next pass would, and
compare the service's data byte for byte with what it must be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import failpoints
from reconciler.service_data import DataCopies
from reconciler.services import ServiceStore

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str | bytes]:
    """Every entry under ``root``: a file's bytes, ``dir``, or ``-> TARGET`` for a link."""
    found: dict[str, str | bytes] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = path.read_bytes()
    return found


def old_data(live: Path) -> dict[str, str | bytes]:
    """The service's data while 1.0.1 runs: nested files, an empty dir, a link."""
    (live / "db" / "empty").mkdir(parents=True)
    (live / "schema").write_bytes(b"1.0.1\n")
    (live / "db" / "rows.bin").write_bytes(os.urandom(70_000))
    (live / "db" / ".wal.tmp-1").write_bytes(b"the service's own file, not the store's")
    (live / "current").symlink_to("db/rows.bin")
    return tree(live)


def migrate(live: Path) -> None:
    """What 1.0.2 does to the data when it starts."""
    (live / "schema").write_bytes(b"1.0.2\n")
    (live / "db" / "rows.bin").write_bytes(b"converted")
    (live / "db" / "index").write_bytes(b"new in 1.0.2")


def test_a_copy_is_the_data_byte_for_byte_and_a_missing_dir_copies_as_empty(
    tmp_path: Path,
) -> None:
    live = tmp_path / "service-data" / "gateway"
    before = old_data(live)
    copies = DataCopies(tmp_path / "services")
    copy = copies.copy("gateway", "1.0.1", live)
    assert copy == tmp_path / "services" / "copies" / "gateway" / "1.0.1"
    assert tree(copy) == before and copies.has("gateway", "1.0.1")
    empty = copies.copy("db", "1.0.1", tmp_path / "service-data" / "db")
    assert tree(empty) == {} and not (tmp_path / "service-data" / "db").exists()


def test_put_back_brings_the_old_bytes_back_once_and_no_more(tmp_path: Path) -> None:
    live = tmp_path / "service-data" / "gateway"
    before = old_data(live)
    copies = DataCopies(tmp_path / "services")
    copies.copy("gateway", "1.0.1", live)
    migrate(live)
    assert tree(live) != before
    assert copies.put_back("gateway", "1.0.1", live) is True
    assert tree(live) == before
    assert not copies.has("gateway", "1.0.1")
    assert sorted(os.listdir(copies.directory / "gateway")) == []  # nothing left aside
    (live / "schema").write_bytes(b"1.0.1 ran again\n")
    assert copies.put_back("gateway", "1.0.1", live) is False  # done: the data stays
    assert (live / "schema").read_bytes() == b"1.0.1 ran again\n"


def test_a_newer_copy_of_a_version_replaces_the_older_and_prune_keeps_what_is_named(
    tmp_path: Path,
) -> None:
    live = tmp_path / "service-data" / "gateway"
    old_data(live)
    copies = DataCopies(tmp_path / "services")
    copies.copy("gateway", "1.0.0", live)
    copies.copy("gateway", "1.0.1", live)
    (live / "schema").write_bytes(b"later\n")
    copies.copy("gateway", "1.0.1", live)
    assert (copies.path("gateway", "1.0.1") / "schema").read_bytes() == b"later\n"
    assert copies.prune("gateway", {"1.0.1"}) == ["copies/gateway/1.0.0"]
    assert sorted(os.listdir(copies.directory / "gateway")) == ["1.0.1"]


# ---- a SIGKILL at each step of the copy and of the put-back ---------------------------------

_CHILD = """\
import sys
from pathlib import Path
from reconciler.service_data import DataCopies
copies = DataCopies(Path(sys.argv[1]))
live = Path(sys.argv[2])
if sys.argv[3] == "copy":
    copies.copy("gateway", "1.0.1", live)
else:
    copies.put_back("gateway", "1.0.1", live)
print("survived", flush=True)
"""

KILLS = [
    ("copy", "service-data.copied", "no copy"),
    ("copy", "service-data.renamed", "copied"),
    ("put-back", "service-data.moved-aside", "no data dir"),
    ("put-back", "service-data.put-back", "put back"),
]


def _kill_at(store: Path, live: Path, flow: str, point: str) -> None:
    env = dict(os.environ)
    env[failpoints.ENV] = f"{point}=kill"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", _CHILD, str(store), str(live), flow],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result
    assert "survived" not in result.stdout


@pytest.mark.parametrize(("flow", "point", "seen"), KILLS,
                         ids=[f"{flow}-{point}" for flow, point, _ in KILLS])
def test_a_kill_at_each_step_of_a_data_copy_is_finished_by_the_next_pass(
    tmp_path: Path, flow: str, point: str, seen: str,
) -> None:
    store_dir, live = tmp_path / "services", tmp_path / "service-data" / "gateway"
    before = old_data(live)
    copies = DataCopies(store_dir)
    if flow == "put-back":
        copies.copy("gateway", "1.0.1", live)
        migrate(live)
    _kill_at(store_dir, live, flow, point)

    store = ServiceStore(store_dir)  # the next pass opens the store first
    if seen == "no copy":
        assert not store.copies.has("gateway", "1.0.1")
        assert store.recovered == [f"removed the unfinished data copy gateway/"
                                   f".1.0.1.tmp-{_only_pid(store.recovered)}"]
        assert tree(live) == before  # the data never left; no switch happened either
    elif seen == "copied":
        assert tree(store.copies.path("gateway", "1.0.1")) == before
    elif seen == "no data dir":
        assert not live.exists() and store.copies.has("gateway", "1.0.1")
    else:
        assert tree(live) == before and not store.copies.has("gateway", "1.0.1")
    assert (live / "db" / ".wal.tmp-1").exists() or seen == "no data dir"  # never swept

    if flow == "copy":  # the switch runs again: it copies again
        store.copies.copy("gateway", "1.0.1", live)
        assert tree(store.copies.path("gateway", "1.0.1")) == before
    else:  # the restore runs again: the data is what it was under 1.0.1
        store.copies.put_back("gateway", "1.0.1", live)
        assert tree(live) == before
        assert os.listdir(store.copies.directory / "gateway") == []


def _only_pid(lines: list[str]) -> str:
    assert len(lines) == 1, lines
    return lines[0].rsplit("-", 1)[1]
