"""Stage one release into a slot file, as the device does, and print what it took.

Run by ``bench/stage_bench.py`` as its own process, so its peak RSS is its own
(not mixed with the benchmark's). It fetches and verifies the signed
metadata with the product's ``fetch_metadata``, then calls the product's
``install`` (verify each block, write, fsync, read back from the device).
Prints one JSON line with the phase times measured from the progress events
and its own peak RSS (VmHWM).

    python bench/stage_once.py BASE_URL PUBKEY VERSION SLOT BOOTED RESUME [--profile OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from reconciler.release.client import fetch_metadata
from reconciler.release.identity import Origin
from reconciler.release.installer import InstallProgress, install
from reconciler.release.keys import load_trusted_keys


class _Clock:
    """Times the installer's phases from its own progress events."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def __call__(self, event: InstallProgress) -> None:
        now = time.perf_counter()
        if event.phase == "download":
            self.marks["last_download"] = now
        elif event.phase == "read-back":
            self.marks.setdefault("first_read_back", now)
        elif event.phase == "done":
            self.marks["done"] = now


def stage(args: argparse.Namespace) -> dict[str, object]:
    """Fetch, verify and install; return the phase times in seconds."""
    t0 = time.perf_counter()
    transport = httpx.HTTPTransport()  # one pool, one TLS context, as the device's stager
    meta = fetch_metadata(args.base_url, load_trusted_keys([Path(args.pubkey)]),
                          frozenset(), datetime.now(UTC), None, None, transport=transport)
    release = meta.find(args.version)
    if release is None:
        raise SystemExit(f"stage_once: {args.version} is not in the channel")
    slot = Path(args.slot)
    rss_metadata = _status_mib("VmRSS:")
    clock = _Clock()
    t1 = time.perf_counter()
    result = install(release, args.base_url, slot, slot.stat().st_size,
                     origin=Origin(meta.channel, meta.serial),
                     booted_slot_path=Path(args.booted), before_first_write=lambda: None,
                     progress=clock, should_stop=lambda: False,
                     resume_file=Path(args.resume), transport=transport)
    t2 = time.perf_counter()
    if not result.complete:
        raise SystemExit(f"stage_once: install did not complete: {result.message}")
    m = clock.marks
    return {"metadata_s": t1 - t0, "install_s": t2 - t1,
            "download_verify_write_s": m["last_download"] - t1,
            "fsync_s": m["first_read_back"] - m["last_download"],
            "read_back_s": m["done"] - m["first_read_back"],
            "bytes": release.size, "peak_rss_mib": _status_mib("VmHWM:"),
            "rss_after_metadata_mib": rss_metadata}


def _status_mib(field: str) -> float:
    """A memory figure of this process (``VmHWM:`` is the peak RSS since its exec).

    ``ru_maxrss`` as the parent sees it through ``wait4`` is not used: Linux
    folds the RSS of the process that forked the child (the benchmark, which
    held a 256 MiB buffer) into it at exec time.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"stage_once: no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("base_url", "pubkey", "version", "slot", "booted", "resume"):
        parser.add_argument(name)
    parser.add_argument("--profile", help="write a cProfile dump of the staging here")
    args = parser.parse_args()
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        out = profiler.runcall(stage, args)
        profiler.dump_stats(args.profile)
    else:
        out = stage(args)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
