"""The crash matrix's table for ``docs/reliability.md``, from JUnit files of its runs.

``python -m tests.crash.report build/test.xml build/torture.xml`` prints one row
per failpoint: where it is, what makes a kill there safe, and per backend the
flows it was killed on and passed (``✓``), failed (``✗``), or did not run
(``·``). Flows: C confirmed update, R rolled-back update, M manual rollback,
X cancel, P pin and resume, S service update confirmed, U service update restored.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.crash.matrix import BACKENDS, POINTS, where

LETTERS = {"confirmed": "C", "rolled-back": "R", "manual-rollback": "M", "cancel": "X",
           "pin-resume": "P", "service-confirmed": "S", "service-restored": "U"}
_ID = re.compile(r"\[(grub|uboot|bls)-(confirmed|rolled-back|manual-rollback|cancel|pin-resume"
                 r"|service-confirmed|service-restored)-([a-z][^\]]*)\]$")


def outcomes(files: list[Path]) -> dict[tuple[str, str, str], bool]:
    """``(point, flow, backend) -> passed`` over the JUnit files (a later file wins)."""
    found: dict[tuple[str, str, str], bool] = {}
    for path in files:
        for case in ET.parse(path).iter("testcase"):
            match = _ID.search(case.get("name", ""))
            if match is None or case.find("skipped") is not None:
                continue
            backend, flow, point = match.groups()
            failed = case.find("failure") is not None or case.find("error") is not None
            found[(point, flow, backend)] = not failed
    return found


def _cell(point: str, flows: tuple[str, ...], backend: str,
          found: dict[tuple[str, str, str], bool]) -> str:
    marks = []
    for flow in flows:
        result = found.get((point, flow, backend))
        marks.append(LETTERS[flow] + ("·" if result is None else "✓" if result else "✗"))
    return " ".join(marks)


def table(found: dict[tuple[str, str, str], bool]) -> str:
    """The markdown table of every point."""
    lines = ["| point | where | what makes a kill there safe | " + " | ".join(BACKENDS) + " |",
             "|---|---|---|" + "---|" * len(BACKENDS)]
    for point in POINTS:
        cells = [_cell(point.name, point.flows, b, found) if b in point.backends else "—"
                 for b in BACKENDS]
        hit = "" if point.hit == 1 else f"@{point.hit}"
        lines.append(f"| `{point.name}`{hit} | {where(point.name)} | {point.safe} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    found = outcomes([Path(a) for a in argv])
    print(table(found))
    passed = sum(found.values())
    print(f"\n{len(found)} runs: {passed} passed, {len(found) - passed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
