"""Every command run in the tests is held to its contract (reconciler/cli/contract.py).

:func:`check` runs on each ``kruxos`` invocation the test helpers make: the
exit status must be one the table lists for the command, and a ``--json``
output must be one document (``audit list``: one per line) valid against the
command's schema in ``specs/cli/`` on success, or against ``error.schema.json``
with nothing on stderr otherwise.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema

from reconciler.cli.contract import find

SCHEMAS = Path(__file__).resolve().parent.parent / "specs" / "cli"


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """``specs/cli/NAME.schema.json``."""
    doc: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


def _valid(doc: Any, name: str, what: str) -> None:
    errors = sorted(jsonschema.Draft202012Validator(schema(name)).iter_errors(doc),
                    key=lambda e: list(e.path))
    assert not errors, (f"{what}: not valid against specs/cli/{name}.schema.json: "
                        + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))


def check(args: list[str], result: subprocess.CompletedProcess[str]) -> None:
    """Hold one finished ``kruxos ARGS`` to the contract of its command (if it has one)."""
    command = find(args)
    if command is None or result.returncode < 0:  # killed by the test: no contract applies
        return
    what = f"kruxos {' '.join(args)} (exit {result.returncode})"
    assert result.returncode in dict(command.statuses), \
        f"{what}: not an exit status docs/cli.md lists for {command.name}\n{result.stderr}"
    if command.name == "audit show":  # JSON without being asked, when there is a record
        if result.returncode != 0:
            return
    elif "--json" not in args or result.returncode == 130:
        return
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if command.name == "audit list" and result.returncode == 0:
        for line in lines:
            _valid(json.loads(line), "audit-record", what)
        return
    try:
        doc = json.loads(result.stdout)  # one document (update status indents it)
    except ValueError:
        raise AssertionError(f"{what}: --json printed no single JSON document:\n"
                             f"{result.stdout}") from None
    if doc.get("ok") is False and "error" in doc:  # a verify's verdict has no error
        _valid(doc, "error", what)
        assert result.stderr == "", f"{what}: an error under --json printed on stderr too"
    elif command.schema is not None:
        _valid(doc, command.schema, what)
