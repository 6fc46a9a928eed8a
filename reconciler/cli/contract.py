"""What each command tells a script: its exit statuses and the JSON Schema of its ``--json``.

One table, the source of ``docs/cli.md`` (``python -m reconciler.cli.contract``
prints it; a test keeps the file equal to it) and of the checks the tests run on
every ``--json`` output they see (``specs/cli/*.schema.json``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One command's contract."""

    name: str
    statuses: tuple[tuple[int, str], ...]
    schema: str | None  # specs/cli/NAME.schema.json of its successful --json output


#: Every command that changes or reports the device, with what each exit status means.
#: 2 is always an error (usage, config, spec, an unreadable device, a fault of the
#: command); under --json an error or a refusal prints ``error.schema.json``.
COMMANDS: tuple[Command, ...] = (
    Command("update check", ((0, "up to date"), (1, "a newer release is available"),
                             (2, "error; the channel could not be read or its metadata did "
                                 "not verify (`channel`)")), "update-check"),
    Command("update status", ((0, "the status was shown"), (2, "error")), "update-status"),
    Command("update apply", ((0, "staged, and rebooting or armed for the next reboot; or "
                                 "already running; a service or container update confirmed, "
                                 "or waiting for a window or a person"),
                             (1, "refused (`refused`), rolled back (a service or container "
                                 "update), ended by a later request (`taken-over`) or the "
                                 "device is held by another command (`locked`)"),
                             (2, "error; no terminal to ask on, or `--yes` with `--no-reboot` "
                                 "(`usage`)"),
                             (130, "stopped by Ctrl-C (the download resumes on the next apply; "
                                   "at the prompt: not now)")), "update-apply"),
    Command("update rollback", ((0, "rolling back (after a service update, or on a container "
                                    "device: rolled back, no reboot)"),
                                (1, "refused: nothing good to go back to, or past a data "
                                    "migration; or the service or container rollback "
                                    "failed"),
                                (2, "error")), "update-rollback"),
    Command("update confirm", ((0, "confirmed (a slot, or a container update on trial)"),
                               (1, "refused: nothing on trial"),
                               (2, "error")), "update-confirm"),
    Command("update resume", ((0, "the spec rules again"), (1, "the device is held by "
                                                               "another command"),
                              (2, "error")), "update-resume"),
    Command("update cancel", ((0, "nothing staged any more; the running version is pinned"),
                              (1, "the device is held by another command"), (2, "error")),
            "update-cancel"),
    Command("audit list", ((0, "the records were listed"), (2, "error")), "audit-record"),
    Command("audit show", ((0, "the record was shown (always JSON, with `outcome_record` on "
                                "a decision)"), (1, "no record has that number"),
                           (2, "error")), "audit-record"),
    Command("audit verify", ((0, "the trail verifies"), (1, "the trail is damaged"),
                             (2, "error")), "audit-verify"),
    Command("spec validate", ((0, "the file is a valid spec"), (2, "it is not (`spec`), or "
                                                                  "error")), "spec-validate"),
    Command("spec plan", ((0, "nothing to do"), (1, "the reconciler would act"),
                          (2, "error")), "spec-plan"),
    Command("slot verify", ((0, "every slot verified, or claims no release"),
                            (1, "a slot's bytes do not match its identity, or it cannot be read "
                                "(`ok: false`)"), (2, "error")), "slot-verify"),
    Command("fleetlock serve", ((0, "stopped by SIGTERM or SIGINT"),
                                (2, "error: an unusable configuration file or address")), None),
)


def find(args: list[str]) -> Command | None:
    """The command that ``args`` (the words after ``kruxos``) run, if it is in the table."""
    words, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg == "--config"  # the one option before a command that takes a value
            continue
        words.append(arg)
    return next((c for c in COMMANDS if words[:2] == c.name.split()), None)


def markdown() -> str:
    """``docs/cli.md``."""
    lines = [
        "# What each command tells a script",
        "",
        "<!-- Generated by `python -m reconciler.cli.contract > docs/cli.md` from",
        "     reconciler/cli/contract.py; tests/test_cli_contract.py keeps them equal. -->",
        "",
        "Exit status 2 is always an error: bad usage, a config or spec that cannot be read,",
        "an unreadable device, or a fault of the command itself. It is never 1, which",
        "`update check` uses for \"an update is available\". With `--json`, a command prints",
        "exactly one JSON document on stdout (`audit list`: one record per line) and nothing",
        "on stderr; on a refusal or an error that document is",
        "`{\"ok\": false, \"error\": {\"code\": CODE, \"message\": MESSAGE}}`",
        "([specs/cli/error.schema.json](../specs/cli/error.schema.json)), and on success it",
        "follows the command's schema below. The tests check every `--json` output they see",
        "against these schemas.",
        "",
        "| command | exit status | `--json` on success |",
        "|---|---|---|",
    ]
    for command in COMMANDS:
        statuses = " · ".join(f"{code} {meaning}" for code, meaning in command.statuses)
        schema = (f"[{command.schema}](../specs/cli/{command.schema}.schema.json)"
                  if command.schema else "—")
        lines.append(f"| `kruxos {command.name}` | {statuses} | {schema} |")
    lines += [
        "",
        "## `error.code`",
        "",
        "| code | meaning |",
        "|---|---|",
        *(f"| `{code}` | {meaning} |" for code, meaning in ERROR_CODES),
        "",
    ]
    return "\n".join(lines)


#: The stable codes of ``error.code``.
ERROR_CODES: tuple[tuple[str, str], ...] = (
    ("refused", "the device will not do it (a downgrade, a release it cannot install, "
                "nothing to roll back to…)"),
    ("taken-over", "another request at the device ended this one (an `apply` while a "
                   "`cancel` came)"),
    ("usage", "the command line is wrong (`--yes` with `--no-reboot`, no terminal to ask on)"),
    ("channel", "the channel could not be read or its metadata did not verify"),
    ("config", "the device config could not be read or is invalid; the message names it"),
    ("spec", "the spec could not be read or is invalid"),
    ("state", "a state file on the data dir could not be read"),
    ("boot-env", "the bootloader environment could not be read or written"),
    ("audit", "the audit trail could not be read or written"),
    ("release", "a release or key file could not be read"),
    ("locked", "another command holds the device; run this one again when it has finished"),
    ("unavailable", "the reconciler did not do what the command waited for in time (the "
                    "daemon is stuck or gone; the message names what and for how long), or "
                    "the channel stopped answering during `apply`'s staging (the pin holds; "
                    "the device goes on when the channel answers)"),
    ("error", "another error of the device, named in the message"),
    ("internal", "a fault of the command itself (a bug: please report it)"),
)


if __name__ == "__main__":
    sys.stdout.write(markdown())
