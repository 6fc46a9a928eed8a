"""The command contract's table, its docs and its schemas agree with each other and the code."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from reconciler.cli import main as cli_main
from reconciler.cli.contract import COMMANDS, ERROR_CODES, find, markdown
from tests.cli_contract import SCHEMAS, schema

REPO = Path(__file__).resolve().parent.parent


def test_docs_cli_md_is_the_table() -> None:
    assert (REPO / "docs" / "cli.md").read_text() == markdown(), \
        "docs/cli.md is stale: run `python -m reconciler.cli.contract > docs/cli.md`"


def test_every_command_of_the_table_exists_and_every_schema_is_valid() -> None:
    for command in COMMANDS:
        group, name = command.name.split()
        found = cli_main.cli.commands.get(group)
        assert isinstance(found, click.Group) and name in found.commands, command.name
        assert 2 in dict(command.statuses), command.name  # an error is always 2
        if command.schema is not None:
            schema(command.schema)
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert names == {c.schema for c in COMMANDS if c.schema} | {"error"}


def test_every_command_with_json_has_a_row_and_a_schema() -> None:
    """A ``--json`` the table does not know would be an output no schema holds."""
    with_json = set()
    for group_name, group in cli_main.cli.commands.items():
        subcommands = group.commands.items() if isinstance(group, click.Group) else ()
        for name, command in subcommands:
            if any("--json" in option.opts for option in command.params
                   if isinstance(option, click.Option)):
                with_json.add(f"{group_name} {name}")
    assert with_json, "no command with --json found"
    assert with_json <= {c.name for c in COMMANDS if c.schema}, \
        with_json - {c.name for c in COMMANDS if c.schema}


def test_error_codes_are_the_same_in_the_table_the_schema_and_the_code() -> None:
    codes = [code for code, _ in ERROR_CODES]
    assert schema("error")["properties"]["error"]["properties"]["code"]["enum"] == codes
    assert {code for _, code in cli_main.ERROR_CODES} | {"internal", "usage"} <= set(codes)
    source = (REPO / "reconciler" / "cli" / "update.py").read_text()
    for used in ("channel", "usage", "taken-over"):
        assert f'why="{used}"' in source


@pytest.mark.parametrize(("args", "name"), [
    (["update", "status", "--json"], "update status"),
    (["--config", "x", "update", "apply", "1.0.1"], "update apply"),
    (["audit", "list", "--since", "1h"], "audit list"),
    (["sim", "run", "d"], None),
])
def test_find_names_the_command(args: list[str], name: str | None) -> None:
    command = find(args)
    assert (command.name if command else None) == name


def test_the_error_schema_refuses_an_error_without_a_code() -> None:
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ok": False, "error": "a sentence"}, schema("error"))
    jsonschema.validate(json.loads('{"ok": false, "error": {"code": "refused", "message": "m"}}'),
                        schema("error"))


def test_the_audit_record_schema_lists_every_outcome_code() -> None:
    from reconciler.actions import OUTCOME_CODES
    from tests.cli_contract import schema

    details = schema("audit-record")["properties"]["details"]["properties"]
    assert details["code"]["enum"] == list(OUTCOME_CODES)
