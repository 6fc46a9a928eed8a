"""The device's service store: blocks verified before they are written, overlays kept per
root image, and a switch that a SIGKILL at any step leaves resolvable by the next open.

The crash tests run each step in a child process armed with ``KRUXOS_FAILPOINTS``
(a real SIGKILL, no ``finally``), then open the store in this process and
check what it sees: the old state or the new one, never a mix, and the flow
finishes from there.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import failpoints
from reconciler.errors import ReleaseError, StateError
from reconciler.release.metadata import ServiceArtifact
from reconciler.services import ServiceStore, sim_dir

REPO = Path(__file__).resolve().parents[1]
BLOCK = 1024
ROOT_A, ROOT_B = "a" * 64, "b" * 64
V1 = bytes(range(256)) * 9          # 2304 bytes: three blocks, the last short
V2 = b"gateway 1.0.2\n" * 300       # 4200 bytes: five blocks


def artifact(body: bytes, version: str, name: str = "gateway",
             sha256: str | None = None) -> ServiceArtifact:
    """The signed description of ``body`` (``sha256`` overrides the whole hash)."""
    blocks = tuple(hashlib.sha256(body[i:i + BLOCK]).hexdigest()
                   for i in range(0, len(body), BLOCK))
    return ServiceArtifact(name, version, f"{name}-{version}.svc", len(body),
                           sha256 or hashlib.sha256(body).hexdigest(), BLOCK, blocks)


GW1, GW2 = artifact(V1, "1.0.1"), artifact(V2, "1.0.2")


def _installed(directory: Path) -> ServiceStore:
    """A store whose gateway 1.0.1 is current and committed on root A."""
    store = ServiceStore(directory)
    store.stage(GW1, io.BytesIO(V1).read)
    store.switch(ROOT_A, "1.0.1", "gateway", GW1)
    store.commit(ROOT_A, "gateway")
    return store


def _switched(directory: Path) -> ServiceStore:
    """Gateway 1.0.2 switched to on root A, uncommitted; 1.0.1 the previous."""
    store = _installed(directory)
    store.stage(GW2, io.BytesIO(V2).read)
    store.switch(ROOT_A, "1.0.2", "gateway", GW2)
    return store


# ---- staging: every block verified before it is written -----------------------------------

def test_an_artifact_is_staged_whole_and_named_by_its_content(tmp_path: Path) -> None:
    store = ServiceStore(tmp_path / "services")
    chunks = io.BytesIO(V2)
    path = store.stage(GW2, lambda n: chunks.read(min(n, 100)))  # a stream: 100 bytes a call
    assert path == tmp_path / "services" / "objects" / GW2.sha256
    assert path.read_bytes() == V2 and store.has(GW2.sha256)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_block_that_does_not_match_its_signed_hash_is_not_written(tmp_path: Path) -> None:
    store = ServiceStore(tmp_path / "services")
    bad = V2[:BLOCK] + b"X" + V2[BLOCK + 1:]
    with pytest.raises(ReleaseError) as caught:
        store.stage(GW2, io.BytesIO(bad).read)
    assert str(caught.value) == ("service gateway 1.0.2: block 1 (bytes 1024-2047) does not "
                                 "match its signed hash; the block was not written")
    assert os.listdir(tmp_path / "services" / "objects") == []


def test_the_whole_sha256_is_checked_before_an_artifact_can_become_current(
    tmp_path: Path,
) -> None:
    store = ServiceStore(tmp_path / "services")
    lying = artifact(V2, "1.0.2", sha256="f" * 64)  # every block right, the whole hash not
    with pytest.raises(ReleaseError, match=r"the whole artifact's SHA-256 \w+… is not the "
                                           r"signed ffffffffffffffff…; it was not installed"):
        store.stage(lying, io.BytesIO(V2).read)
    assert os.listdir(tmp_path / "services" / "objects") == []
    with pytest.raises(StateError, match="gateway 1.0.2 is not staged"):
        store.switch(ROOT_A, "1.0.1", "gateway", lying)


@pytest.mark.parametrize("body, reason", [
    (V2[:-1], "the artifact ends at byte 4199, its signed size is 4200"),
    (V2 + b"!", "the artifact is longer than its signed size 4200"),
])
def test_an_artifact_of_another_length_is_refused(tmp_path: Path, body: bytes,
                                                  reason: str) -> None:
    store = ServiceStore(tmp_path / "services")
    with pytest.raises(ReleaseError, match=reason):
        store.stage(GW2, io.BytesIO(body).read)
    assert os.listdir(tmp_path / "services" / "objects") == []


def test_an_artifact_already_in_the_store_is_not_fetched_again(tmp_path: Path) -> None:
    store = _installed(tmp_path / "services")

    def no_read(n: int) -> bytes:
        raise AssertionError("the source was read")

    assert store.stage(GW1, no_read).read_bytes() == V1


# ---- where the store lives -----------------------------------------------------------------

def test_the_store_refuses_to_live_inside_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="is inside the data dir"):
        ServiceStore(tmp_path / "data" / "services", data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_the_simulated_device_keeps_it_beside_the_data_dir(tmp_path: Path) -> None:
    store = ServiceStore(sim_dir(tmp_path), data_dir=tmp_path / "data")
    assert store.directory == tmp_path / "services"


# ---- switching, committing, restoring ------------------------------------------------------

def test_a_switch_makes_the_new_artifact_current_and_keeps_the_old_one_as_previous(
    tmp_path: Path,
) -> None:
    store = _switched(tmp_path / "services")
    record = store.record(ROOT_A, "gateway")
    assert record is not None and record.uncommitted
    assert (record.current and record.current.version, record.previous
            and record.previous.version) == ("1.0.2", "1.0.1")
    assert record.current is not None and record.current.root_version == "1.0.2"
    assert store.path_of(ROOT_A, "gateway").read_bytes() == V2
    with pytest.raises(StateError, match="the switch to 1.0.2 is not committed or restored"):
        store.switch(ROOT_A, "1.0.2", "gateway", GW1)


def test_commit_keeps_the_new_one_and_restore_brings_the_previous_back(tmp_path: Path) -> None:
    store = _switched(tmp_path / "a")
    committed = store.commit(ROOT_A, "gateway")
    assert not committed.uncommitted and committed.current is not None
    assert committed.current.version == "1.0.2"
    assert store.path_of(ROOT_A, "gateway").read_bytes() == V2
    with pytest.raises(StateError, match="gateway has no uncommitted switch"):
        store.restore(ROOT_A, "gateway")
    store = _switched(tmp_path / "b")
    restored = store.restore(ROOT_A, "gateway")
    assert restored.current is not None and restored.current.version == "1.0.1"
    assert not restored.uncommitted and restored.previous is None
    assert store.path_of(ROOT_A, "gateway").read_bytes() == V1


def test_a_service_removed_by_an_update_comes_back_on_restore(tmp_path: Path) -> None:
    store = _installed(tmp_path / "services")
    removed = store.switch(ROOT_A, "1.0.2", "gateway", None)
    assert removed.current is None and removed.uncommitted
    assert not os.path.lexists(store.path_of(ROOT_A, "gateway"))
    store.restore(ROOT_A, "gateway")
    assert store.path_of(ROOT_A, "gateway").read_bytes() == V1


def test_overlays_belong_to_the_root_image_they_were_made_on(tmp_path: Path) -> None:
    store = _installed(tmp_path / "services")          # gateway 1.0.1 on root A
    store.stage(GW2, io.BytesIO(V2).read)
    store.switch(ROOT_B, "1.1.0", "gateway", GW2)      # after a slot update to root B
    store.commit(ROOT_B, "gateway")
    on_a, on_b = store.overlays(ROOT_A), store.overlays(ROOT_B)
    assert on_a["gateway"].current is not None and on_a["gateway"].current.version == "1.0.1"
    assert on_b["gateway"].current is not None and on_b["gateway"].current.root_version == "1.1.0"
    assert on_b["gateway"].previous is None            # root A's overlay is not B's previous
    assert store.overlays("c" * 64) == {}
    assert store.retire({ROOT_B}) == [f"roots/{ROOT_A}", f"objects/{GW1.sha256}"]
    assert store.overlays(ROOT_A) == {} and store.has(GW2.sha256) and not store.has(GW1.sha256)
    assert store.path_of(ROOT_B, "gateway").read_bytes() == V2


# ---- a SIGKILL at each step of the switch --------------------------------------------------

_CHILD = """\
import io, sys
from pathlib import Path
from reconciler.services import ServiceStore
from tests.test_service_store import GW2, ROOT_A, V2
store = ServiceStore(Path(sys.argv[1]))
flow = sys.argv[2]
if flow == "update":
    store.stage(GW2, io.BytesIO(V2).read)
    store.switch(ROOT_A, "1.0.2", "gateway", GW2)
else:
    getattr(store, flow)(ROOT_A, "gateway")
print("survived", flush=True)
"""

OLD, NEW, NEW_COMMITTED, BACK = "1.0.1 committed", "1.0.2 uncommitted", "1.0.2 committed", \
    "1.0.1 restored"
# (flow, point, what the next open sees)
KILLS = [
    ("update", "service.block-written=kill@2", OLD),
    ("update", "service.staged=kill", OLD),
    ("update", "service-record.temp-written=kill", OLD),
    ("update", "service-record.renamed=kill", NEW),
    ("update", "service-link.temp-written=kill", NEW),
    ("update", "service-link.renamed=kill", NEW),
    ("commit", "service-record.temp-written=kill", NEW),
    ("commit", "service-record.renamed=kill", NEW_COMMITTED),
    ("commit", "service-link.temp-written=kill", NEW_COMMITTED),
    ("commit", "service-link.renamed=kill", NEW_COMMITTED),
    ("restore", "service-record.temp-written=kill", NEW),
    ("restore", "service-record.renamed=kill", BACK),
    ("restore", "service-link.temp-written=kill", BACK),
    ("restore", "service-link.renamed=kill", BACK),
]


def _kill_at(directory: Path, flow: str, armed: str) -> None:
    env = dict(os.environ)
    env[failpoints.ENV] = armed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", _CHILD, str(directory), flow], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result
    assert "survived" not in result.stdout


def _assert_whole(store: ServiceStore) -> None:
    """No half state: the link names what the record says, whose bytes match its hash, and
    nothing partial or temporary is left anywhere in the store."""
    record = store.record(ROOT_A, "gateway")
    assert record is not None and record.current is not None
    link = store.path_of(ROOT_A, "gateway")
    assert Path(os.readlink(link)).name == record.current.sha256
    assert hashlib.sha256(link.read_bytes()).hexdigest() == record.current.sha256
    leftovers = [p.name for p in store.directory.rglob(".*")]
    assert leftovers == [], leftovers


@pytest.mark.parametrize(("flow", "armed", "expected"), KILLS,
                         ids=[f"{flow}-{armed.partition('=')[0]}" for flow, armed, _ in KILLS])
def test_a_kill_at_each_step_of_the_switch_is_resolved_by_the_next_open(
    tmp_path: Path, flow: str, armed: str, expected: str,
) -> None:
    directory = tmp_path / "services"
    (_installed if flow == "update" else _switched)(directory)
    _kill_at(directory, flow, armed)
    link_before = Path(os.readlink(directory / "roots" / ROOT_A / "gateway" / "current")).name
    store = ServiceStore(directory)
    record = store.record(ROOT_A, "gateway")
    assert record is not None and record.current is not None
    state = f"{record.current.version} {'uncommitted' if record.uncommitted else 'committed'}"
    if expected == BACK:
        assert state == "1.0.1 committed" and record.previous is None
    else:
        assert state == expected
    if expected == OLD:
        assert record.previous is None
    _assert_whole(store)
    rolled_forward = link_before != record.current.sha256
    assert rolled_forward == any("made to agree with its record" in line
                                 for line in store.recovered)
    if armed.startswith("service-record.renamed") and flow != "commit":
        assert rolled_forward, "the record was renamed before its link: the open rolls forward"
    _finish(store, flow, expected)


def _finish(store: ServiceStore, flow: str, expected: str) -> None:
    """The next pass takes the flow to its end from what the open saw."""
    if flow == "update" and expected == OLD:
        store.stage(GW2, io.BytesIO(V2).read)
        store.switch(ROOT_A, "1.0.2", "gateway", GW2)
    elif flow == "commit" and expected == NEW:
        store.commit(ROOT_A, "gateway")
    elif flow == "restore" and expected == NEW:
        store.restore(ROOT_A, "gateway")
    record = store.record(ROOT_A, "gateway")
    assert record is not None and record.current is not None
    want = {"update": ("1.0.2", True), "commit": ("1.0.2", False),
            "restore": ("1.0.1", False)}[flow]
    assert (record.current.version, record.uncommitted) == want
    _assert_whole(store)


def test_a_kill_mid_artifact_leaves_a_partial_file_that_the_next_open_removes(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "services"
    _installed(directory)
    _kill_at(directory, "update", "service.block-written=kill@3")
    partial = directory / "objects" / f".{GW2.sha256}.partial"
    assert partial.read_bytes() == V2[:3 * BLOCK]  # three verified blocks, nothing else
    store = ServiceStore(directory)
    assert not partial.exists() and not store.has(GW2.sha256)
    assert store.recovered == [f"removed the partial artifact .{GW2.sha256}.partial"]
