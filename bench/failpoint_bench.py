"""What an unarmed failpoint costs: a call of ``failpoint(name)`` against an empty function.

The crash matrix needs points on the hottest path of the product (a point per
block of a download); they must cost nothing when ``KRUXOS_FAILPOINTS`` is
unset. Measured in a child process per case, so the variable is read at import
as in the daemon:

- **(a) unarmed**: ``KRUXOS_FAILPOINTS`` unset, ``failpoint("install.block-written")``;
- **(b) baseline**: an empty function of one argument, defined in the same child;
- **(c) armed elsewhere**: the variable names another point (a crash test's
  daemon passing every point but the one it dies at).

Prints nanoseconds per call (best of ``--repeat`` rounds of ``--calls`` calls)
and the ratios a/b and c/b. Usage: ``.venv/bin/python bench/failpoint_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, timeit
from reconciler.failpoints import failpoint
def empty(name):
    pass
calls, repeat = int(sys.argv[1]), int(sys.argv[2])
point = min(timeit.repeat(lambda: failpoint("install.block-written"), number=calls,
                          repeat=repeat))
base = min(timeit.repeat(lambda: empty("install.block-written"), number=calls, repeat=repeat))
print(json.dumps({"point": point / calls * 1e9, "empty": base / calls * 1e9}))
"""


def measure(armed: str | None, calls: int, repeat: int) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("KRUXOS_FAILPOINTS", None)
    if armed is not None:
        env["KRUXOS_FAILPOINTS"] = armed
    out = subprocess.run([sys.executable, "-c", CHILD, str(calls), str(repeat)], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True, timeout=300)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    unarmed = measure(None, args.calls, args.repeat)
    elsewhere = measure("decided.stage=kill", args.calls, args.repeat)
    print(f"failpoint, unarmed:        {unarmed['point']:6.1f} ns a call")
    print(f"empty function (baseline): {unarmed['empty']:6.1f} ns a call")
    print(f"failpoint, armed elsewhere:{elsewhere['point']:6.1f} ns a call "
          f"(baseline {elsewhere['empty']:.1f})")
    print(f"ratio unarmed/baseline: {unarmed['point'] / unarmed['empty']:.2f}; "
          f"armed elsewhere/baseline: {elsewhere['point'] / elsewhere['empty']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
