"""Figures of a test run, from pytest's JUnit XML: time per area, and the torture record.

``python -m tests.report areas RUN.xml [MORE.xml ...]`` prints the time each
area of the suite took (the areas of the budget table in ``docs/testing.md``),
over every file given that exists (``make test`` writes two: the suite and,
beside it, the whole device under QEMU).
``python -m tests.report torture RUN.xml OUT.md`` writes the dated results of
``make torture`` (each test, its outcome and time), to be committed.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

#: Area of the budget table -> how a test's module path (dotted) starts.
AREAS = (
    ("QEMU rigs (real GRUB, U-Boot, systemd-boot)", lambda m: m.startswith("tests.boot.")
     and m.endswith("_qemu")),
    ("the whole device under QEMU", lambda m: m.startswith("tests.system.")),
    ("per-bootloader device flows", lambda m: m.startswith("tests.boot.") and m.endswith("_sim")),
    ("end-to-end: daemon and flows", lambda m: m.startswith("tests.e2e.")),
    ("end-to-end: update commands", lambda m: m.startswith("tests.e2e_update.")),
    ("parser fuzzing", lambda m: m.startswith("tests.fuzz.")),
    ("power cuts (the power-cut filesystem)", lambda m: m.startswith("tests.powercut.")),
    ("crash matrix (a kill at each failpoint)", lambda m: m.startswith("tests.crash.")),
    ("model check of the core", lambda m: m == "tests.test_model_check"),
    ("executed docs (the operator's contract)", lambda m: m == "tests.test_docs_executed"),
    ("unit and property", lambda m: True),
)


@dataclass
class Case:
    module: str
    name: str
    seconds: float
    outcome: str


def cases(xml: Path) -> list[Case]:
    """Every test case of a JUnit XML file."""
    found = []
    for case in ET.parse(xml).iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            if case.find(kind) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
        found.append(Case(case.get("classname", "").rsplit(".", 1)[0]
                          if case.get("classname", "").count(".") > 2
                          else case.get("classname", ""),
                          case.get("name", ""), float(case.get("time", 0)), outcome))
    return found


def area_of(module: str) -> str:
    return next(name for name, matches in AREAS if matches(module))


def areas(*xmls: Path) -> str:
    """A markdown table: area, tests, seconds (a file that does not exist adds nothing)."""
    totals: dict[str, tuple[int, float]] = {}
    for case in (case for xml in xmls if xml.exists() for case in cases(xml)):
        count, seconds = totals.get(area_of(case.module), (0, 0.0))
        totals[area_of(case.module)] = (count + 1, seconds + case.seconds)
    lines = ["| area | tests | seconds |", "|---|---:|---:|"]
    for name, _ in AREAS:
        if name in totals:
            lines.append(f"| {name} | {totals[name][0]} | {totals[name][1]:.0f} |")
    lines.append(f"| **all** | {sum(c for c, _ in totals.values())} | "
                 f"{sum(s for _, s in totals.values()):.0f} |")
    return "\n".join(lines)


def torture(xml: Path, out: Path) -> None:
    """Write the dated record of a ``make torture`` run."""
    run = cases(xml)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        "# Results of the last `make torture`",
        "",
        f"Run on {when}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, load average {load:.1f} at the end; "
        f"`KRUXOS_FUZZ_EXAMPLES={os.environ.get('KRUXOS_FUZZ_EXAMPLES', '1000')}`.",
        "",
        f"{sum(c.outcome == 'passed' for c in run)} passed, "
        f"{sum(c.outcome != 'passed' for c in run)} not passed, "
        f"{sum(c.seconds for c in run):.0f} s in all.",
        "",
        "| test | outcome | seconds |",
        "|---|---|---:|",
        *(f"| `{c.module}::{c.name}` | {c.outcome} | {c.seconds:.1f} |" for c in run),
        "",
    ]
    out.write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "areas":
        print(areas(*map(Path, argv[1:])))
        return 0
    if len(argv) == 3 and argv[0] == "torture":
        torture(Path(argv[1]), Path(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
