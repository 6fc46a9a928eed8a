"""What a durable resume point costs: staging with one every 1, 4, 16 blocks, or time-bound.

Each resume point is an ``fdatasync`` of the slot and an atomic write of the
resume file (temp file, fsync, rename, fsync of the directory): the writer
stops until the disk has the blocks. This runs the product's ``install`` on
this machine's disk (``/var/tmp`` or ``build/``, never a tmpfs) against the
tests' channel server on 127.0.0.1, alternating the variants round by round,
and prints each one's staging time as a ratio against the baseline measured
in the same run: no resume point until the end (what the download costs
without any).

    .venv/bin/python -m bench.resume_cadence [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.stage_bench import evict, fs_type, make_channel, pick_base, publish, sparse_file
from reconciler.release import installer
from reconciler.release.client import fetch_metadata
from reconciler.release.identity import Origin
from reconciler.release.installer import InstallProgress, install
from reconciler.release.keys import load_trusted_keys
from reconciler.release.metadata import Release
from tests.httpserver import ChannelServer

MIB = 1 << 20
NEVER = 1 << 40


@dataclass(frozen=True)
class Variant:
    """One cadence: a resume point every ``blocks`` blocks or ``seconds``, whichever first."""

    name: str
    blocks: int
    seconds: float = math.inf


VARIANTS = [Variant("baseline: at the end only", NEVER), Variant("every 16 blocks", 16),
            Variant("every 4 blocks", 4), Variant("every block", 1),
            Variant("every 4 blocks or 1 s", 4, 1.0)]


@dataclass
class Run:
    download_s: float
    total_s: float
    saves: int
    save_s: float


class _SaveClock:
    """Time spent making resume points durable (the slot's fdatasync and the file)."""

    def __init__(self) -> None:
        self.seconds, self.count = 0.0, 0
        real = installer._Session.save

        def save(session: installer._Session) -> None:
            began = time.perf_counter()
            real(session)
            self.seconds += time.perf_counter() - began
            self.count += 1

        installer._Session.save = save  # type: ignore[method-assign]


SAVES = _SaveClock()


def stage(release: Release, url: str, slot: Path, booted: Path, resume: Path,
          variant: Variant, transport: httpx.BaseTransport) -> Run:
    """One staging from a fresh sparse slot; the download phase timed from its events."""
    sparse_file(slot, release.size + 8 * MIB)
    resume.unlink(missing_ok=True)
    marks: dict[str, float] = {}

    def progress(event: InstallProgress) -> None:
        if event.phase == "download":
            marks["download"] = time.perf_counter()

    SAVES.seconds, SAVES.count = 0.0, 0
    began = time.perf_counter()
    result = install(release, url, slot, slot.stat().st_size, origin=Origin("bench", 1),
                     booted_slot_path=booted, before_first_write=lambda: None,
                     progress=progress, should_stop=lambda: False, resume_file=resume,
                     transport=transport, resume_bytes=variant.blocks * release.block_size,
                     resume_seconds=variant.seconds)
    ended = time.perf_counter()
    if not result.complete:
        raise SystemExit(f"bench: staging did not complete: {result.message}")
    evict(slot)
    return Run(marks["download"] - began, ended - began, SAVES.count, SAVES.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = pick_base()
    with tempfile.TemporaryDirectory(prefix="kruxos-cadence-", dir=base) as tmp:
        work = Path(tmp)
        chan = make_channel(work)
        publish(chan, "9.0.0", args.size_mib * MIB)
        server = ChannelServer(chan.root)
        try:
            transport = httpx.HTTPTransport()
            meta = fetch_metadata(server.url, load_trusted_keys([chan.pub]), frozenset(),
                                  datetime.now(UTC), None, None, transport=transport)
            release = meta.find("9.0.0")
            assert release is not None
            booted = work / "booted"
            booted.write_bytes(b"booted")
            print(f"image {args.size_mib} MiB in {len(release.blocks)} blocks of "
                  f"{release.block_size // MIB} MiB; slot on {work} ({fs_type(work)}); "
                  f"{args.rounds} rounds, variants alternating", flush=True)
            runs: dict[str, list[Run]] = {v.name: [] for v in VARIANTS}
            for r in range(args.rounds):
                order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
                for v in order:
                    runs[v.name].append(stage(release, server.url, work / "slot", booted,
                                              work / "resume.json", v, transport))
            report(runs, release.size)
        finally:
            server.stop()


def report(runs: dict[str, list[Run]], size: int) -> None:
    """Median times, throughput and the ratio of each variant to the baseline."""
    base = statistics.median(r.download_s for r in runs[VARIANTS[0].name])
    print(f"{'variant':28} {'saves':>5} {'in saves s':>10} {'download s':>10} {'MB/s':>7} "
          f"{'ratio':>6} {'total s':>8}  (medians; ratio = baseline download time / this one)")
    for v in VARIANTS:
        rs = runs[v.name]
        down = statistics.median(r.download_s for r in rs)
        total = statistics.median(r.total_s for r in rs)
        saving = statistics.median(r.save_s for r in rs)
        print(f"{v.name:28} {rs[0].saves:5d} {saving:10.2f} {down:10.2f} {size / down / 1e6:7.0f} "
              f"{base / down:6.2f} {total:8.2f}   runs: "
              + " ".join(f"{r.download_s:.2f}" for r in rs))


if __name__ == "__main__":
    main()
