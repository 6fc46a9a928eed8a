"""The streaming installer against a real HTTP server process with injected faults."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ChannelUnavailable, ReleaseError
from reconciler.release.channel import add_release, init_channel, sign_channel
from reconciler.release.client import fetch_metadata
from reconciler.release.identity import Origin, read_identity, verify_slot
from reconciler.release.installer import (
    InstallProgress,
    InstallResult,
    Retry,
    describe_faults,
    install,
)
from reconciler.release.keys import generate_keypair, load_trusted_keys
from reconciler.release.metadata import Release
from reconciler.sim.image import build_sim_image
from tests.httpserver import ChannelServer, fault_plan
from tests.slots import claim, legacy_header, write_at

BLOCK = 64 * 1024
SIZE = 20 * BLOCK + 5000  # 21 blocks, the last one short
SLOT_SIZE = 2 * 1024 * 1024
PATTERN = b"\x5a"
ORIGIN = Origin("stable", 1)
RECORD = 4096
#: Resumes inside a call without waiting long (the backoff's jitter seeded).
FAST = Retry(base=0.01, cap=0.05, seed=0)
#: No resume inside a call: the first network failure ends it.
ONCE = Retry(attempts=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChannelServer, Release]]:
    root = tmp_path_factory.mktemp("release")
    key, pub = generate_keypair(root / "keys", "release")
    chan = root / "channel"
    init_channel(chan, "stable")
    image = build_sim_image(root / "image.img", "1.1.0", size=SIZE)
    add_release(chan, image, "1.1.0", ["a change"], block_size=BLOCK)
    sign_channel(chan, [key])
    (chan / "kruxos-1.0.9.img").write_bytes(_OLD_IMAGE)
    server = ChannelServer(chan)
    try:
        meta = fetch_metadata(server.url, load_trusted_keys([pub]), frozenset(),
                              datetime.now(UTC), None, None)
        release = meta.find("1.1.0")
        assert release is not None
        yield server, release
    finally:
        server.stop()


#: An image of the old layout (a header at byte 0), served beside the release.
_OLD_IMAGE = legacy_header("1.0.9") + b"\x33" * (3 * BLOCK)


def _old_layout_release() -> Release:
    """1.0.9 as an old publisher signed it: the hashes match the image with its header."""
    data = _OLD_IMAGE
    return Release("1.0.9", "2030-01-01", (), "kruxos-1.0.9.img", len(data),
                   hashlib.sha256(data).hexdigest(), BLOCK,
                   tuple(hashlib.sha256(data[i:i + BLOCK]).hexdigest()
                         for i in range(0, len(data), BLOCK)))


@dataclass
class Device:
    """A slot pair on disk and what the installer told it."""

    tmp: Path
    server: ChannelServer
    release: Release
    slot: Path = field(init=False)
    booted: Path = field(init=False)
    events: list[InstallProgress] = field(default_factory=list)
    marked_bad: int = 0
    log_from: int = 0

    def __post_init__(self) -> None:
        self.slot, self.booted = self.tmp / "slot-B", self.tmp / "slot-A"
        self.slot.write_bytes(PATTERN * SLOT_SIZE)
        self.booted.write_bytes(b"booted" * 100)
        self.server.set_faults()
        self.log_from = len(self.server.requests())

    @property
    def resume_file(self) -> Path:
        return self.tmp / "resume.json"

    def install(self, **kw: Any) -> InstallResult:
        def mark_bad() -> None:
            assert self.slot.read_bytes()[:SIZE] == PATTERN * SIZE or self.marked_bad
            self.marked_bad += 1

        args: dict[str, Any] = dict(
            origin=ORIGIN, booted_slot_path=self.booted, before_first_write=mark_bad,
            progress=self.events.append, should_stop=lambda: False,
            resume_file=self.resume_file, timeout=5.0, retry=FAST)
        args.update(kw)
        slot = args.pop("slot", self.slot)
        slot_size = args.pop("slot_size", SLOT_SIZE)
        release = args.pop("release", self.release)
        return install(release, self.server.url, slot, slot_size, **args)

    def image_requests(self) -> list[dict[str, Any]]:
        log = self.server.requests()[self.log_from:]
        return [r for r in log if r["path"].endswith(".img")]

    def block(self, index: int) -> bytes:
        start, end = self.release.block_range(index)
        return self.slot.read_bytes()[start:end]

    def image(self) -> bytes:
        return self.slot.read_bytes()[:SIZE]


@pytest.fixture()
def device(served: tuple[ChannelServer, Release], tmp_path: Path) -> Device:
    return Device(tmp_path, *served)


def _expected_image(device: Device) -> bytes:
    return build_sim_image(device.tmp / "expected.img", "1.1.0", size=SIZE).read_bytes()


def test_install_writes_the_image_and_verifies_it_by_reading_the_slot_back(
    device: Device,
) -> None:
    result = device.install()
    assert result.complete and result.resumed_from == 0
    assert device.image() == _expected_image(device)
    assert device.slot.read_bytes()[SIZE:-RECORD] == PATTERN * (SLOT_SIZE - SIZE - RECORD)
    assert device.marked_bad == 1
    last = device.events[-1]
    assert (last.phase, last.verified, last.written, last.read_back, last.total) == (
        "done", SIZE, SIZE, SIZE, SIZE)
    # the resume point says every block is written until the caller marks the slot
    # staged (and removes it): a kill in between costs a read-back, not a download
    assert json.loads(device.resume_file.read_text())["next_block"] == result.blocks
    again = device.install()
    assert again.complete and again.fetched == 0, again
    assert device.image() == _expected_image(device)


def test_progress_events_count_fetched_verified_and_written_bytes(device: Device) -> None:
    device.install()
    downloads = [e for e in device.events if e.phase == "download"]
    assert len(downloads) == len(device.release.blocks)
    assert [e.verified for e in downloads] == sorted(e.verified for e in downloads)
    assert downloads[-1].fetched == SIZE and downloads[-1].written == SIZE


def test_a_tampered_block_is_refused_before_it_is_written(device: Device) -> None:
    device.server.set_faults(tamper_at=5 * BLOCK + 100)
    with pytest.raises(ReleaseError, match=r"block 5 \(bytes 327680-393215\) hash mismatch"):
        device.install()
    assert device.block(5) == PATTERN * BLOCK
    assert device.block(4) == _expected_image(device)[4 * BLOCK:5 * BLOCK]
    assert json.loads(device.resume_file.read_text())["next_block"] == 5


def test_endless_data_is_read_only_to_the_declared_size_and_refused(device: Device) -> None:
    device.server.set_faults(endless=True)
    with pytest.raises(ReleaseError, match="longer than its declared size"):
        device.install()
    assert device.events[-1].fetched <= SIZE + 256 * 1024


def test_an_image_longer_than_declared_is_refused_before_any_write(device: Device) -> None:
    device.server.set_faults(extra=1000)
    with pytest.raises(ReleaseError, match="longer than its declared size"):
        device.install()
    assert device.image() == PATTERN * SIZE


def test_an_image_larger_than_the_slot_is_refused_before_the_first_write(
    device: Device,
) -> None:
    with pytest.raises(ReleaseError, match=f"is {SIZE} bytes, slot .* holds only 0 "
                       r"\(its 4096 bytes less the 4096-byte slot identity\); nothing was written"):
        device.install(slot_size=4096)
    assert device.marked_bad == 0 and device.image_requests() == []


def test_an_image_that_would_reach_into_the_identity_record_is_refused(
    device: Device,
) -> None:
    tight = device.tmp / "tight"
    tight.write_bytes(PATTERN * (SIZE + RECORD - 1))
    with pytest.raises(ReleaseError, match=f"holds only {SIZE - 1} "):
        device.install(slot=tight, slot_size=SIZE + RECORD - 1)
    assert device.marked_bad == 0 and tight.read_bytes() == PATTERN * (SIZE + RECORD - 1)
    tight.write_bytes(PATTERN * (SIZE + RECORD))  # exactly the image and its record
    assert device.install(slot=tight, slot_size=SIZE + RECORD).complete
    assert read_identity(tight)[0] is not None and verify_slot(tight).state == "ok"


def test_the_booted_slot_is_never_written_even_through_a_symlink(device: Device) -> None:
    alias = device.tmp / "other-name"
    alias.symlink_to(device.booted)
    with pytest.raises(ReleaseError, match="booted slot"):
        device.install(slot=alias)
    assert device.marked_bad == 0 and device.image_requests() == []
    assert device.booted.read_bytes() == b"booted" * 100


def test_a_cut_connection_resumes_with_a_range_from_the_last_verified_block(
    device: Device,
) -> None:
    device.server.set_faults(cut_at=7 * BLOCK + 1234)
    with pytest.raises(ChannelUnavailable, match="failed at block 7"):
        device.install(retry=ONCE)
    assert json.loads(device.resume_file.read_text())["next_block"] == 7
    result = device.install()
    first, second = device.image_requests()
    assert first["fault"] == f"cut at {7 * BLOCK + 1234}"
    assert (second["range"], second["status"]) == (f"bytes={7 * BLOCK}-", 206)
    assert result.complete and result.resumed_from == 7 * BLOCK
    assert result.fetched == SIZE - 7 * BLOCK
    assert device.image() == _expected_image(device)


def test_a_server_that_ignores_range_still_gives_a_complete_install(device: Device) -> None:
    device.server.set_faults(cut_at=3 * BLOCK + 10)
    with pytest.raises(ChannelUnavailable):
        device.install(retry=ONCE)
    device.server.set_faults(ignore_range=True)
    result = device.install()
    second = device.image_requests()[-1]
    assert (second["range"], second["status"]) == (f"bytes={3 * BLOCK}-", 200)
    assert result.complete and result.fetched == SIZE
    assert device.image() == _expected_image(device)


def test_a_stop_request_is_honoured_at_a_block_boundary_and_resumed_later(
    device: Device,
) -> None:
    result = device.install(should_stop=lambda: len(device.events) >= 3)
    assert not result.complete and result.next_block == 3
    assert "stopped at block 3 of 21" in result.message
    assert device.block(3) == PATTERN * BLOCK
    assert json.loads(device.resume_file.read_text())["next_block"] == 3
    assert device.install().complete
    assert device.image_requests()[-1]["range"] == f"bytes={3 * BLOCK}-"
    assert device.image() == _expected_image(device)


def test_a_stalled_connection_times_out_and_keeps_the_verified_blocks(device: Device) -> None:
    device.server.set_faults(stall_at=2 * BLOCK, stall_seconds=30)
    with pytest.raises(ChannelUnavailable, match=r"failed at block 2 \(.*timed out"):
        device.install(timeout=0.5, retry=ONCE)
    assert json.loads(device.resume_file.read_text())["next_block"] == 2


def test_a_trickling_server_is_cut_off_as_slow_retrieval(device: Device) -> None:
    device.server.set_faults(trickle_at=BLOCK + 10)
    with pytest.raises(ChannelUnavailable, match="block 1 took more than .*slow retrieval"):
        device.install(timeout=0.5, min_rate=1 << 20, retry=ONCE)
    assert json.loads(device.resume_file.read_text())["next_block"] == 1


def test_retry_delay_doubles_while_no_block_gets_through(device: Device) -> None:
    device.server.set_faults(cut_at=100, cut_times=3)
    delays = []
    for _ in range(3):
        with pytest.raises(ChannelUnavailable) as caught:
            device.install(retry=ONCE)
        delays.append(caught.value.delay)
    assert delays == [2.0, 4.0, 8.0]


def test_a_device_that_loses_written_bytes_fails_the_read_back(
    device: Device, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_pwrite = os.pwrite

    def lossy_pwrite(fd: int, data: Any, offset: int) -> int:
        if offset == 2 * BLOCK:
            real_pwrite(fd, b"\0" * 16, offset)
            return len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", lossy_pwrite)
    with pytest.raises(ReleaseError, match="read-back of .* block 2 differs"):
        device.install()
    assert not device.resume_file.exists()


def test_an_image_missing_from_the_server_is_a_temporary_failure(
    device: Device, tmp_path: Path,
) -> None:
    missing = Release("1.1.0", "2030-01-01", (), "kruxos-9.img", SIZE, device.release.sha256,
                      BLOCK, device.release.blocks)
    with pytest.raises(ChannelUnavailable, match="HTTP 404"):
        install(missing, device.server.url, device.slot, SLOT_SIZE, origin=ORIGIN,
                booted_slot_path=device.booted,
                before_first_write=lambda: None, progress=lambda e: None,
                should_stop=lambda: False, resume_file=tmp_path / "r.json")


def test_a_resume_point_is_recorded_only_after_its_blocks_are_durable(
    device: Device, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.release import installer

    calls: list[tuple[str, int]] = []
    real_pwrite, real_fdatasync, real_record = os.pwrite, os.fdatasync, installer.atomic_write_json  # type: ignore[attr-defined]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        n = real_pwrite(fd, data, offset)
        calls.append(("write", (offset + n - 1) // BLOCK))
        return n

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        calls.append(("sync", -1))

    def record(path: Path, doc: Any, **kwargs: Any) -> None:
        calls.append(("resume", doc["next_block"]))
        real_record(path, doc, **kwargs)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(installer, "atomic_write_json", record)
    device.server.set_faults(cut_at=15 * BLOCK + 99)
    with pytest.raises(ChannelUnavailable, match="failed at block 15"):
        device.install(retry=ONCE, resume_bytes=4 * BLOCK, resume_seconds=math.inf)
    resumes = [(i, n) for i, (what, n) in enumerate(calls) if what == "resume"]
    assert [n for _, n in resumes] == [4, 8, 12, 15]
    for at, next_block in resumes:
        written = [i for i, (what, _) in enumerate(calls[:at]) if what == "write"
                   and calls[i][1] == next_block - 1]
        assert written, f"resume {next_block} recorded before block {next_block - 1} was written"
        synced = [i for i, (what, _) in enumerate(calls[:at]) if what == "sync"
                  and i > written[-1]]
        assert synced, f"resume {next_block} recorded before block {next_block - 1} was synced"


def test_blocks_travel_in_a_fixed_pool_of_buffers_whatever_the_image_size(
    device: Device, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.release import installer

    buffers: set[int] = set()
    real = installer._write_block

    def write(session: Any, index: int, block: memoryview) -> None:
        buffers.add(id(block.obj))
        real(session, index, block)

    monkeypatch.setattr(installer, "_write_block", write)
    assert device.install().complete
    assert len(device.release.blocks) == 21
    assert 1 < len(buffers) <= installer.QUEUE_BLOCKS + 2
    assert device.image() == _expected_image(device)


# ---- the slot identity: destroyed before the first block, written after the read-back ----

def test_a_complete_install_names_the_release_in_the_slots_last_4_kib(device: Device) -> None:
    assert device.install().complete
    identity, problem = read_identity(device.slot)
    assert problem is None and identity is not None
    assert (identity.version, identity.size, identity.sha256, identity.channel,
            identity.serial) == ("1.1.0", SIZE, device.release.sha256, "stable", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", identity.written)
    assert verify_slot(device.slot).state == "ok"


def test_the_old_identity_is_gone_before_the_first_block_and_back_only_at_the_end(
    device: Device,
) -> None:
    claim(device.slot, "1.0.0")
    seen: list[str | None] = []

    def progress(event: InstallProgress) -> None:
        identity = read_identity(device.slot)[0]
        seen.append(identity.version if identity else None)

    def mark_bad() -> None:
        assert read_identity(device.slot)[0] is not None  # marked bad first, then destroyed
        device.marked_bad += 1

    assert device.install(progress=progress, before_first_write=mark_bad).complete
    assert device.marked_bad == 1
    assert seen[-1] == "1.1.0" and set(seen[:-1]) == {None}, seen
    assert len(seen) == len(device.release.blocks) + 21 + 1  # downloads, read-back, done


def test_a_stopped_install_claims_nothing_until_it_resumes_and_finishes(
    device: Device,
) -> None:
    claim(device.slot, "1.0.0")
    result = device.install(should_stop=lambda: len(device.events) >= 5)
    assert not result.complete
    assert read_identity(device.slot) == (None, None)
    assert device.install().complete
    assert read_identity(device.slot)[0] is not None
    assert verify_slot(device.slot).state == "ok"


def test_an_old_layout_header_at_byte_0_is_destroyed_with_the_identity(
    device: Device,
) -> None:
    write_at(device.slot, 0, legacy_header("1.0.0"))  # and no record at the end
    write_at(device.slot, -RECORD, bytes(RECORD))
    assert read_identity(device.slot)[0] is not None
    device.server.set_faults(tamper_at=100)  # block 0 is refused: nothing of it is written
    with pytest.raises(ReleaseError, match="block 0 .* hash mismatch"):
        device.install(before_first_write=lambda: None)
    assert read_identity(device.slot) == (None, None)
    assert device.slot.read_bytes()[:RECORD] == bytes(RECORD)


def test_an_image_of_the_old_layout_is_refused_before_its_first_block_is_written(
    device: Device,
) -> None:
    with pytest.raises(ReleaseError, match=r"kruxos-1\.0\.9\.img: the image starts with an "
                       r"old-layout KruxOS image header; .*the block was not written"):
        device.install(release=_old_layout_release())
    assert device.slot.read_bytes()[:-RECORD] == PATTERN * (SLOT_SIZE - RECORD)
    assert read_identity(device.slot) == (None, None)


def test_verify_finds_a_changed_byte_in_the_image_and_a_damaged_record(device: Device) -> None:
    assert device.install().complete
    write_at(device.slot, SIZE - 1, bytes([device.image()[-1] ^ 1]))
    check = verify_slot(device.slot)
    assert check.state == "mismatch" and check.failed
    assert f"the first {SIZE} bytes do not match 1.1.0" in check.message
    write_at(device.slot, SIZE - 1, _expected_image(device)[-1:])
    assert verify_slot(device.slot).state == "ok"
    write_at(device.slot, -RECORD + 20, b"9")
    check = verify_slot(device.slot)
    assert check.state == "problem" and "checksum does not match" in check.message


#: Runs ``install`` in a process of its own, so a failpoint's SIGKILL is a real crash.
_CHILD = """
import json, sys
from pathlib import Path
from reconciler.release.identity import Origin
from reconciler.release.installer import install
from reconciler.release.metadata import Release

a = json.loads(sys.argv[1])
rel = dict(a["release"], changes=tuple(a["release"]["changes"]),
           blocks=tuple(a["release"]["blocks"]))

def mark_bad():
    with open(a["marks"], "a") as f:
        f.write("bad\\n")

install(Release(**rel), a["url"], Path(a["slot"]), a["slot_size"], origin=Origin("stable", 1),
        booted_slot_path=Path(a["booted"]), before_first_write=mark_bad,
        progress=lambda event: None, should_stop=lambda: False,
        resume_file=Path(a["resume"]), timeout=10.0, **a["cadence"])
with open(a["marks"], "a") as f:
    f.write("staged\\n")
"""


def _killed_install(device: Device, failpoint: str,
                    **cadence: float) -> subprocess.CompletedProcess[str]:
    marks = device.tmp / "marks"
    args = {"release": device.release.to_json(), "url": device.server.url,
            "slot": str(device.slot), "slot_size": SLOT_SIZE, "booted": str(device.booted),
            "resume": str(device.resume_file), "marks": str(marks),
            "cadence": cadence or {"resume_bytes": 16 * BLOCK, "resume_seconds": 1e9}}
    env = dict(os.environ, KRUXOS_FAILPOINTS=failpoint)
    return subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("failpoint", "image_complete"), [
    ("install.invalidated=kill@1", False),     # before the first block
    ("install.block-written=kill@18", False),  # mid-image, after a resume point
    ("install.read-back=kill@1", True),        # after the last block, before the record
])
def test_a_slot_killed_before_its_record_claims_no_release_old_or_new(
    device: Device, failpoint: str, image_complete: bool,
) -> None:
    claim(device.slot, "1.0.0")
    killed = _killed_install(device, failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (device.tmp / "marks").read_text() == "bad\n"
    assert read_identity(device.slot) == (None, None)
    assert verify_slot(device.slot).state == "empty"
    assert (device.image() == _expected_image(device)) is image_complete
    result = device.install(before_first_write=lambda: None)  # the next staging resumes
    assert result.complete
    assert read_identity(device.slot)[0] is not None and verify_slot(device.slot).state == "ok"
    if "block-written" in failpoint:
        assert result.resumed_from == 16 * BLOCK
    if "read-back" in failpoint:  # every block was durable: a read-back, no download
        assert (result.resumed_from, result.fetched) == (device.release.size, 0), result


def test_a_slot_killed_after_its_record_claims_the_release_it_fully_holds(
    device: Device,
) -> None:
    claim(device.slot, "1.0.0")
    killed = _killed_install(device, "install.identity-written=kill@1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (device.tmp / "marks").read_text() == "bad\n"  # never marked staged
    identity = read_identity(device.slot)[0]
    assert identity is not None and identity.version == "1.1.0"
    assert verify_slot(device.slot).state == "ok"
    assert device.image() == _expected_image(device)


# ---- network faults: resumed inside one call, a bounded number of times ----

#: How the server's log names a fault, as the installer counts it.
_KIND_OF_LOG = (("cut at", "cut"), ("stalled at", "stall"), ("status 503", "http 503"))


def _faults_logged(requests: list[dict[str, Any]]) -> list[str]:
    return [kind for r in requests for prefix, kind in _KIND_OF_LOG
            if r["fault"].startswith(prefix)]


def _fresh(device: Device) -> None:
    """The slot and the resume file as before any install; the log read from here on."""
    device.slot.write_bytes(PATTERN * SLOT_SIZE)
    device.resume_file.unlink(missing_ok=True)
    device.log_from = len(device.server.requests())


def test_cuts_at_seeded_offsets_are_resumed_from_the_last_verified_block_in_one_call(
    device: Device,
) -> None:
    device.server.set_faults(plan=fault_plan(seed=11, faults=4, most=SIZE // 5,
                                             kinds=("cut",)))
    result = device.install()
    requests = device.image_requests()
    cuts = [r for r in requests if r["fault"].startswith("cut at")]
    assert len(cuts) == 4 and len(requests) == 5, requests
    assert result.complete and result.faults == ("cut",) * 4
    assert result.message.endswith(" after 4 resumes (4 cut connections)")
    for cut, resumed in zip(requests, requests[1:], strict=False):
        cut_at = cut["start"] + cut["sent"]  # each resume starts at the block the cut was in
        assert resumed["range"] == f"bytes={cut_at // BLOCK * BLOCK}-", (cut, resumed)
    served = sum(r["sent"] for r in requests)
    assert served <= SIZE + len(cuts) * BLOCK, served
    assert device.image() == _expected_image(device)


@pytest.mark.parametrize("seed", [3, 7, 12])
def test_seeded_cuts_503s_and_stalls_are_ridden_out_and_the_same_seed_faults_the_same(
    device: Device, seed: int,
) -> None:
    def run() -> tuple[InstallResult, list[tuple[Any, ...]]]:
        _fresh(device)
        device.server.set_faults(plan=fault_plan(seed, faults=5, most=SIZE // 6,
                                                 stall_seconds=5))
        result = device.install(timeout=1.0)  # each stall costs this wait
        return result, [(r["range"], r["status"], r["fault"]) for r in device.image_requests()]

    result, log = run()
    requests = device.image_requests()
    assert result.complete and device.image() == _expected_image(device)
    assert list(result.faults) == _faults_logged(requests) and len(result.faults) == 5, log
    assert result.message.endswith(f" after 5 resumes ({describe_faults(result.faults)})")
    broken = [r for r in requests if r["fault"].startswith(("cut at", "stalled at"))]
    assert sum(r["sent"] for r in requests) <= SIZE + len(broken) * BLOCK
    if seed == 3:  # once is enough to show that a seed reproduces its run
        again, log_again = run()
        assert log_again == log and again.faults == result.faults


def test_past_the_bound_the_call_fails_naming_the_faults_and_the_next_one_resumes(
    device: Device,
) -> None:
    device.server.set_faults(plan=[{"cut_after": 3 * BLOCK + 7}] + [{"status": 503}] * 9)
    with pytest.raises(ChannelUnavailable) as caught:
        device.install(retry=Retry(attempts=3, base=0.01, seed=0))
    assert str(caught.value) == (
        f"channel: downloading {device.server.url}/kruxos-1.1.0.img failed at block 3 "
        f"(channel: {device.server.url}/kruxos-1.1.0.img answered HTTP 503) after 3 failures "
        "in this call (1 cut connection, 2 server errors 503); will resume there")
    assert caught.value.delay == 2.0  # blocks got through: the next pass's delay starts over
    assert len(device.image_requests()) == 3
    saved = json.loads(device.resume_file.read_text())
    assert (saved["next_block"], saved["failures"]) == (3, 1)
    device.server.set_faults()
    result = device.install()
    assert result.complete and result.resumed_from == 3 * BLOCK and result.faults == ()
    assert device.image() == _expected_image(device)


def test_resumes_in_all_are_bounded_even_when_each_one_makes_progress(device: Device) -> None:
    device.server.set_faults(plan=[{"cut_after": 2 * BLOCK + 5}] * 6)
    with pytest.raises(ChannelUnavailable, match=r"failed at block 8 .* after 4 failures "
                       r"in this call \(4 cut connections\)"):
        device.install(retry=Retry(resumes=3, base=0.01, seed=0))
    assert len(device.image_requests()) == 4
    assert json.loads(device.resume_file.read_text())["next_block"] == 8


def test_a_stop_asked_for_during_the_backoff_ends_the_call_before_the_next_attempt(
    device: Device,
) -> None:
    device.server.set_faults(plan=[{"status": 503}])
    result = device.install(retry=Retry(base=60.0, cap=60.0, seed=0),
                            should_stop=lambda: bool(device.image_requests()))
    assert not result.complete and result.next_block == 0 and result.faults == ()
    assert len(device.image_requests()) == 1
    assert json.loads(device.resume_file.read_text())["next_block"] == 0


def test_the_backoff_doubles_is_capped_and_its_jitter_is_seeded() -> None:
    retry = Retry(base=1.0, cap=8.0, seed=5)
    delays = [retry.delay(n, random.Random(5)) for n in range(1, 7)]
    for n, delay in enumerate(delays, start=1):
        full = min(2.0 ** (n - 1), 8.0)
        assert full / 2 <= delay < full, (n, delay)
    assert delays == [retry.delay(n, random.Random(5)) for n in range(1, 7)]
    assert describe_faults(["cut", "http 503", "cut", "stall", "http 500"]) == (
        "2 cut connections, 1 server error 503, 1 stall, 1 server error 500")


# ---- the resume point's cadence: what a crash costs, measured by the bytes served ----

@pytest.mark.parametrize(("killed_after", "resume_bytes", "resume_seconds", "resumes_at"), [
    (3, 4 * BLOCK, 1e9, 0),        # before the first resume point: all 3 blocks again
    (11, 4 * BLOCK, 1e9, 8),       # 3 blocks past the resume point at 8
    (20, 4 * BLOCK, 1e9, 20),      # right at a resume point: nothing again
    (13, 1 << 30, 0.0, 13),        # the time bound alone: every block durable at once
])
def test_a_kill_at_a_block_boundary_fetches_again_at_most_the_unsaved_blocks(
    device: Device, killed_after: int, resume_bytes: int, resume_seconds: float,
    resumes_at: int,
) -> None:
    killed = _killed_install(device, f"install.block-written=kill@{killed_after}",
                             resume_bytes=resume_bytes, resume_seconds=resume_seconds)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert device.image()[:killed_after * BLOCK] == _expected_image(device)[:killed_after * BLOCK]
    result = device.install(before_first_write=lambda: None)
    assert result.complete and device.image() == _expected_image(device)
    resumed = device.image_requests()[-1]
    assert resumed["start"] == resumes_at * BLOCK == result.resumed_from
    assert resumed["sent"] == SIZE - resumes_at * BLOCK  # served: the image from there, once
    fetched_again = killed_after * BLOCK - resumed["start"]  # verified and written before
    assert fetched_again <= max(resume_bytes - BLOCK, 0) or resume_seconds == 0.0
    assert fetched_again <= resume_bytes


def test_the_durable_progress_is_what_the_resume_file_records_at_each_event(
    device: Device,
) -> None:
    seen: list[tuple[int, int, int]] = []

    def progress(event: InstallProgress) -> None:
        if event.phase == "download":
            kept = device.resume_file.exists()  # none before the first resume point
            saved = json.loads(device.resume_file.read_text())["next_block"] * BLOCK if kept else 0
            seen.append((event.written, event.durable, min(saved, SIZE)))

    assert device.install(progress=progress, resume_bytes=4 * BLOCK,
                          resume_seconds=1e9).complete
    assert all(durable == saved for _, durable, saved in seen), seen
    assert all(0 <= written - durable < 4 * BLOCK for written, durable, _ in seen), seen
    assert [d for _, d, _ in seen][3:8] == [4 * BLOCK] * 4 + [8 * BLOCK]


@pytest.mark.parametrize(("faults", "error", "says"), [
    ({"status": 503}, ChannelUnavailable, "answered HTTP 503"),
    ({"status": 416}, ChannelUnavailable, "refused the range from byte 0"),
    ({"extra": 10}, ReleaseError, "image longer than its declared size"),  # not wrapped
])
def test_a_refusal_of_the_image_names_its_url_without_a_secret_in_it(
        device: Device, faults: dict[str, Any], error: type[Exception], says: str) -> None:
    from reconciler.redact import register_secret

    token = "s3cret-capability-4711"  # a channel at a secret path, its secret registered
    register_secret(token)
    secret_path = device.server.root / token
    secret_path.symlink_to(".")
    device.server.set_faults(**faults)
    try:
        with pytest.raises(error) as refused:
            install(device.release, f"{device.server.url}/{token}/", device.slot, SLOT_SIZE,
                    origin=ORIGIN, booted_slot_path=device.booted,
                    before_first_write=lambda: None, progress=device.events.append,
                    should_stop=lambda: False, resume_file=device.resume_file, timeout=5.0,
                    retry=ONCE)
    finally:
        secret_path.unlink()
    message = str(refused.value)
    assert token not in message, message
    assert f"{device.server.url}/***/" in message and says in message, message
