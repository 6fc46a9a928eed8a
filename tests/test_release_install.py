"""The streaming installer against a real HTTP server process with injected faults."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ChannelUnavailable, ReleaseError
from reconciler.release.channel import add_release, build_sim_image, init_channel, sign_channel
from reconciler.release.client import fetch_metadata
from reconciler.release.installer import InstallProgress, InstallResult, install
from reconciler.release.keys import generate_keypair, load_trusted_keys
from reconciler.release.metadata import Release
from tests.httpserver import ChannelServer

BLOCK = 64 * 1024
SIZE = 20 * BLOCK + 5000  # 21 blocks, the last one short
SLOT_SIZE = 2 * 1024 * 1024
PATTERN = b"\x5a"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChannelServer, Release]]:
    root = tmp_path_factory.mktemp("release")
    key, pub = generate_keypair(root / "keys", "release")
    chan = root / "channel"
    init_channel(chan, "stable")
    image = build_sim_image(root / "image.img", "1.1.0", size=SIZE)
    add_release(chan, image, "1.1.0", ["a change"], block_size=BLOCK)
    sign_channel(chan, [key])
    server = ChannelServer(chan)
    try:
        meta = fetch_metadata(server.url, load_trusted_keys([pub]), frozenset(),
                              datetime.now(UTC), None, None)
        release = meta.find("1.1.0")
        assert release is not None
        yield server, release
    finally:
        server.stop()


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
            booted_slot_path=self.booted, before_first_write=mark_bad,
            progress=self.events.append, should_stop=lambda: False,
            resume_file=self.resume_file, timeout=5.0)
        args.update(kw)
        slot = args.pop("slot", self.slot)
        slot_size = args.pop("slot_size", SLOT_SIZE)
        return install(self.release, self.server.url, slot, slot_size, **args)

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
    assert device.slot.read_bytes()[SIZE:] == PATTERN * (SLOT_SIZE - SIZE)
    assert device.marked_bad == 1
    last = device.events[-1]
    assert (last.phase, last.verified, last.written, last.read_back, last.total) == (
        "done", SIZE, SIZE, SIZE, SIZE)
    assert not device.resume_file.exists()


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
    with pytest.raises(ReleaseError, match=f"is {SIZE} bytes, slot .* holds only 4096"):
        device.install(slot_size=4096)
    assert device.marked_bad == 0 and device.image_requests() == []


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
        device.install()
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
        device.install()
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
        device.install(timeout=0.5)
    assert json.loads(device.resume_file.read_text())["next_block"] == 2


def test_a_trickling_server_is_cut_off_as_slow_retrieval(device: Device) -> None:
    device.server.set_faults(trickle_at=BLOCK + 10)
    with pytest.raises(ChannelUnavailable, match="block 1 took more than .*slow retrieval"):
        device.install(timeout=0.5, min_rate=1 << 20)
    assert json.loads(device.resume_file.read_text())["next_block"] == 1


def test_retry_delay_doubles_while_no_block_gets_through(device: Device) -> None:
    device.server.set_faults(cut_at=100, cut_times=3)
    delays = []
    for _ in range(3):
        with pytest.raises(ChannelUnavailable) as caught:
            device.install()
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
        install(missing, device.server.url, device.slot, SLOT_SIZE, booted_slot_path=device.booted,
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

    def record(path: Path, doc: Any) -> None:
        calls.append(("resume", doc["next_block"]))
        real_record(path, doc)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(installer, "atomic_write_json", record)
    monkeypatch.setattr(installer, "RESUME_EVERY", 4)
    device.server.set_faults(cut_at=15 * BLOCK + 99)
    with pytest.raises(ChannelUnavailable, match="failed at block 15"):
        device.install()
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
