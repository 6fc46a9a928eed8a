"""The audit trail at the size a busy device reaches in a year (100,000 records).

Builds a trail of N records (default 100,000: decisions with their outcomes, as a
trial's probes write them) with the real writer, then times:

- ``audit verify`` (the reader's ``verify``): target <= 1 s;
- ``audit list --since 1h`` and ``audit show SEQ`` (the reader's ``records`` and
  ``get``): target <= 0.2 s;
- the same three as commands (``kruxos audit ...``), against the command's own
  start-up (``kruxos --help``) measured in the same run.

The baseline measured in the same run is one plain parse of every line
(``json.loads``): the least any reader that looks at each record must pay.
Ratios against it are printed, so a noisy machine shows as noise in both.

    .venv/bin/python bench/audit_bench.py [--records N] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler import audit as audit_module
from reconciler.audit import AuditReader, AuditTrail
from reconciler.store import StateStore

REPO = Path(__file__).resolve().parent.parent


def build(data: Path, count: int) -> datetime:
    """A trail of ``count`` records, five minutes apart; fsync is skipped while building."""
    moment = [datetime(2026, 1, 1, tzinfo=UTC)]
    real_fsync, real_dir = os.fsync, audit_module.fsync_dir
    os.fsync = lambda fd: None  # type: ignore[assignment]
    audit_module.fsync_dir = lambda path: None  # type: ignore[assignment]
    try:
        trail = AuditTrail(StateStore(data), clock=lambda: moment[0])
        observed = {"booted": "B", "version": "1.0.1", "boot_status": "PENDING",
                    "other": {"slot": "A", "version": "1.0.0", "mark": "good"},
                    "trial": "B", "tries_left": 2}
        for n in range(count // 2):
            moment[0] += timedelta(minutes=5)
            record, _ = trail.decision("health", "probe", f"slot B on trial: probe {n}",
                                       dedupe=False, observed=observed,
                                       spec_revision="abcdef123456",
                                       spec_file="/etc/kruxos/update.yaml")
            trail.outcome(record.seq, "health", "probe", f"ok: 200 healthy ({n})", 0.01,
                          spec_revision="abcdef123456")
    finally:
        os.fsync = real_fsync  # type: ignore[assignment]
        audit_module.fsync_dir = real_dir  # type: ignore[assignment]
    return moment[0]


def timed(runs: int, step: object) -> float:
    """The median of ``runs`` timings of ``step()``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        end = build(data, args.records)
        print(f"built {args.records} records in {time.perf_counter() - started:.1f} s")
        reader = AuditReader(StateStore(data))
        files = reader.files()
        size = sum(path.stat().st_size for _, path in files)
        print(f"trail: {len(files)} files, {size / 1e6:.1f} MB")

        def baseline() -> None:
            for _, path in files:
                for line in path.read_bytes().splitlines():
                    json.loads(line)

        since = end - timedelta(hours=1)
        middle = args.records // 2
        base = timed(args.runs, baseline)
        verify = timed(args.runs, lambda: reader.verify())
        listed = timed(args.runs, lambda: list(reader.records(since=since)))
        shown = timed(args.runs, lambda: reader.get(middle))
        assert reader.verify().ok
        print(f"baseline (json.loads of every line): {base:.3f} s")
        for name, value, target in (("verify", verify, 1.0), ("list --since 1h", listed, 0.2),
                                    (f"show {middle}", shown, 0.2)):
            print(f"{name:>18}: {value:.3f} s  ({value / base:.2f}x baseline; "
                  f"target {target} s: {'met' if value <= target else 'MISSED'})")

        device = Path(tmp) / "device.yaml"
        device.write_text(_device_config(data))
        env = dict(os.environ, KRUXOS_CONFIG=str(device))
        kruxos = [sys.executable, "-m", "reconciler.cli.main"]

        def command(*argv: str) -> None:
            subprocess.run([*kruxos, *argv], env=env, check=False, capture_output=True)

        start_up = timed(args.runs, lambda: command("--help"))
        print(f"command start-up (kruxos --help): {start_up:.3f} s")
        for name, argv in (("audit verify", ("audit", "verify")),
                           ("audit list --since 1h", ("audit", "list", "--since",
                                                       since.isoformat())),
                           (f"audit show {middle}", ("audit", "show", str(middle)))):
            value = timed(args.runs, lambda argv=argv: command(*argv))
            print(f"{name:>22}: {value:.3f} s, {value - start_up:.3f} s past start-up")
    return 0


def _device_config(data: Path) -> str:
    return (f"slots:\n  A: {{device: {data}/a}}\n  B: {{device: {data}/b}}\n"
            f"trustedKeys: [{data}/none.pub]\ndataDir: {data}\n")


if __name__ == "__main__":
    sys.exit(main())
