"""How fast a spec edit becomes a decision, against a bare file watcher in the same run.

The end-to-end tests only check that an edit wakes the daemon without waiting
for the resync; the time it takes is measured here, where a noisy machine
shows up as a ratio instead of a failed test.

- **(a) the product**: a simulated device (``kruxos sim init`` + ``sim run``,
  resync 5 min so only the watcher can wake it) is idle; the spec is rewritten
  to ask for 1.0.1, and the time until the audit trail holds the ``stage``
  decision caused by the spec is taken. One fresh device per run.
- **(b) the baseline**: a child process running only ``watchfiles.awatch`` on
  the same kind of directory with the same debounce (50 ms) and step (20 ms);
  the time from the write until it prints the change.

Prints the median, min and max of each side and the ratio a/b of the medians.
Usage: ``.venv/bin/python bench/spec_reaction.py [--runs 5]``.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.device import SimDevice  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

WATCHER = """
import asyncio, sys
from watchfiles import awatch
async def main():
    async for _ in awatch(sys.argv[1], debounce=50, step=20, recursive=False):
        print("changed", flush=True)
print("ready", flush=True)
asyncio.run(main())
"""


def product_once(work: Path) -> float:
    """Seconds from the spec write to the ``stage`` decision it causes."""
    device = SimDevice(work / f"dev-{time.monotonic_ns()}")
    device.cli("sim", "init", str(device.dir))
    device.set_config(resync="5m")
    device.start()
    try:
        log = device.dir / "run" / "daemon.log"
        wait_for(lambda: "watching" in log.read_text(), 60, "the spec watch")
        wait_for(lambda: device.audit_file_records(), 60, "the first decision")
        seen = len(device.audit_file_records())
        started = time.perf_counter()
        device.edit_spec(version="1.0.1")
        wait_for(lambda: [r for r in device.audit_file_records()[seen:]
                          if r["kind"] == "decision" and r["actor"] == "spec"],
                 60, "the spec decision", every=0.002)
        return time.perf_counter() - started
    finally:
        device.stop()
        device.kill_leftovers()


def baseline_once(work: Path) -> float:
    """Seconds from a write until a bare ``awatch`` reports it."""
    directory = work / f"watch-{time.monotonic_ns()}"
    directory.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, str(directory)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the watch registers after "ready"; the bench is not a test
        tmp = directory / ".spec.yaml.tmp"
        started = time.perf_counter()
        tmp.write_text("x")
        os.replace(tmp, directory / "spec.yaml")
        assert proc.stdout.readline().strip() == "changed"
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def describe(name: str, values: list[float]) -> str:
    return (f"{name}: median {statistics.median(values) * 1000:.0f} ms, "
            f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
            f"({len(values)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    product: list[float] = []
    baseline: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kruxos-bench-") as tmp:
        for _ in range(args.runs):  # alternate, so load hits both sides alike
            baseline.append(baseline_once(Path(tmp)))
            product.append(product_once(Path(tmp)))
    print(describe("(a) spec edit -> stage decision", product))
    print(describe("(b) bare watchfiles notification", baseline))
    ratio = statistics.median(product) / statistics.median(baseline)
    print(json.dumps({"a_median_s": round(statistics.median(product), 4),
                      "b_median_s": round(statistics.median(baseline), 4),
                      "a_over_b": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
