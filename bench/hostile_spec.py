"""Hostile-spec benchmark: the worst time and memory of reading a spec built to hurt.

Each document is written to a file and read by ``load_spec`` (what the daemon
and ``kruxos spec validate`` do) in a fresh child process, ``--runs`` times
after one read of the example spec (so the libraries' one-time set-up is not
counted); the child reports the slowest run and its peak RSS (``ru_maxrss``). The
baseline, measured in the same run, is the example spec ``specs/update.yaml``:
times are shown against it, memory as the peak above the baseline child's
(which holds the interpreter and the libraries).

Targets (reported, not asserted): every document answered within 1 s, peak
memory at most 100 MB above the baseline. Run it on a quiet machine:

    .venv/bin/python bench/hostile_spec.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "specs" / "update.yaml"
TARGET_SECONDS, TARGET_MB = 1.0, 100.0
HEAD = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: gateways
spec:
  version: 1.0.1
  channel:
    url: http://updates.example.com/stable/
"""


def billion_laughs() -> str:
    lines = ['lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"lol{i}: &lol{i} [" + ",".join([f"*lol{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + HEAD.replace("version: 1.0.1", "version: *lol9")


def many_windows(target: int) -> str:
    """A *valid* spec of about ``target`` bytes: one window repeated."""
    window = ('      - days: [mon, tue, wed, thu, fri]\n        start: "02:00"\n'
              "        duration: 1h\n        timezone: Europe/Berlin\n")
    return HEAD + "  rollout:\n    windows:\n" + window * (target // len(window))


def _under_limit(line: Callable[[int], str], head: str = "") -> str:
    """A document just under the 256 KiB limit: HEAD, ``head``, then ``line(i)`` repeated."""
    parts, size, index = [HEAD, head], len(HEAD) + len(head), 0
    while size + len(line(index)) <= 256 * 1024 - 8:
        parts.append(line(index))
        size += len(parts[-1])
        index += 1
    return "".join(parts)


DOCUMENTS: dict[str, Callable[[], str]] = {
    "billion laughs (~1 KB)": billion_laughs,
    "flow depth 5,000": lambda: HEAD.replace("version: 1.0.1",
                                             "version: " + "[" * 5000 + "]" * 5000),
    "flow depth 120,000": lambda: HEAD.replace("version: 1.0.1", "version: " + "[" * 120_000),
    "block depth 5,000": lambda: HEAD + "  x:\n    " + "- " * 5000 + "x\n",
    "valid 9.6 MB spec": lambda: many_windows(9_600_000),
    "250 KiB of windows": lambda: many_windows(250 * 1024),
    "256 KiB of flow sequences": lambda: _under_limit(lambda i: "[],", "  x: [") + "]\n",
    "256 KiB of small keys": lambda: _under_limit(lambda i: f"  k{i}: {i}\n"),
    "256 KiB scalar": lambda: _under_limit(lambda i: "y" * 64, "  x: ") + "\n",
    "256 KiB comments": lambda: _under_limit(lambda i: "#" + "c" * 78 + "\n"),
    "200 KB string aliased 600 times": lambda: 'a: &a "' + "x" * 200_000 + '"\nb: &b ['
    + ",".join(["*a"] * 600) + "]\nc: *b\nc: *b\n",
    "aliases just under the cap": lambda: HEAD + "  x: &a [" + ",".join(["1"] * 40) + "]\n"
    + "  y: [" + ",".join(["*a"] * 45) + "]\n",
    "unclosed IPv6 host": lambda: HEAD.replace("http://updates.example.com/stable/",
                                               '"http://[::1"'),
    "5,000-digit integer": lambda: HEAD + "  health:\n    successThreshold: " + "9" * 5000 + "\n",
    "control characters in the name": lambda: HEAD.replace(
        "name: gateways", 'name: "a\\nb\\e[31mred"'),
    "sixteen explicit keys (? ? ...)": lambda: "a: 1\n" + "? " * 16 + "\n",
    "%YAML 1.3 inside the document": lambda: HEAD + "%YAML 1.3\n  x: 1\n",
}


# ---------------------------------------------------------------- child

def child(path: Path, runs: int) -> None:
    """Read ``path`` ``runs`` times as the daemon would; print one JSON line."""
    from reconciler.errors import SpecError
    from reconciler.specfile import load_spec

    load_spec(EXAMPLE)  # the libraries' one-time set-up is not the document's cost
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worst, verdict = 0.0, ""
    for _ in range(runs):
        started = time.perf_counter()
        try:
            load_spec(path)
            verdict = "valid"
        except SpecError as exc:
            verdict = "refused: " + str(exc).splitlines()[0].removeprefix(f"{path}")[:110]
        worst = max(worst, time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"worst": worst, "rss_before_kib": rss_before, "peak_kib": peak,
                      "verdict": verdict}))


# ---------------------------------------------------------------- parent

def measure(path: Path, runs: int) -> dict[str, object]:
    result = subprocess.run([sys.executable, __file__, "--child", str(path), "--runs",
                             str(runs)], capture_output=True, text=True, timeout=600, cwd=REPO)
    if result.returncode != 0:
        return {"worst": float("nan"), "peak_kib": 0, "rss_before_kib": 0,
                "verdict": f"CHILD FAILED (exit {result.returncode}): "
                           f"{result.stderr.strip().splitlines()[-1:]}"}
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def main() -> int:
    args = parse_args()
    if args.child:
        child(Path(args.child), args.runs)
        return 0
    base = measure(EXAMPLE, args.runs)
    base_time, base_peak = float(str(base["worst"])), int(str(base["peak_kib"]))
    print(f"hostile specs: slowest of {args.runs} reads per document, each in a fresh child")
    print(f"baseline {EXAMPLE.relative_to(REPO)}: {base_time * 1000:.2f} ms, "
          f"peak RSS {base_peak / 1024:.1f} MiB ({base['verdict']})")
    print(f"{'document':32} {'bytes':>9} {'worst':>9} {'x base':>7} {'+RSS MiB':>8}  verdict")
    worst_time, worst_mem = 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="kruxos-hostile-") as tmp:
        for name, make in DOCUMENTS.items():
            path = Path(tmp) / "spec.yaml"
            path.write_text(make())
            row = measure(path, args.runs)
            seconds = float(str(row["worst"]))
            extra = (int(str(row["peak_kib"])) - base_peak) / 1024
            worst_time, worst_mem = max(worst_time, seconds), max(worst_mem, extra)
            print(f"{name:32} {path.stat().st_size:9d} {seconds * 1000:7.1f}ms "
                  f"{seconds / base_time:7.1f} {extra:8.1f}  {row['verdict']}")
    print(f"worst time {worst_time * 1000:.0f} ms (target <= {TARGET_SECONDS * 1000:.0f} ms: "
          f"{'met' if worst_time <= TARGET_SECONDS else 'MISSED'}); worst peak RSS "
          f"+{worst_mem:.1f} MiB over the baseline (target <= {TARGET_MB:.0f} MB: "
          f"{'met' if worst_mem * 1.048576 <= TARGET_MB else 'MISSED'})")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="hostile-spec benchmark")
    p.add_argument("--runs", type=int, default=5, help="reads per document (the worst counts)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
