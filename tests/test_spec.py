"""The desired-state spec and its file reader.

A bad spec gets one message naming the file, the field path and the line; the
defaults are the seed's; durations round-trip; the last good spec survives a
bad edit and a restart; the committed JSON Schema and the example specs agree
with the CLI.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.spec import UpdatePolicy, format_duration, parse_duration, revision_of
from reconciler.specfile import LAST_GOOD, SpecKeeper, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

# Line numbers matter below: keep this text as it is.
GOOD = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: office-gateways
spec:
  version: 1.0.1
  channel:
    url: http://127.0.0.1:8080/
  health:
    interval: 5s
    successThreshold: 2
  rollout:
    windows:
      - days: [mon]
        start: "02:00"
        duration: 1h
      - days: [tue, wed]
        start: "03:00"
        duration: 1h30m
        timezone: Europe/Berlin
    autoReboot: true
  suspend: false
"""
# line: 1 apiVersion, 2 kind, 5 spec, 6 version, 7 channel, 9 health, 10 interval,
# 11 successThreshold, 12 rollout, 13 windows, 14 windows[0], 17 windows[1] (days),
# 18 start, 19 duration, 20 timezone, 21 autoReboot, 22 suspend

MINIMAL = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: m
spec:
  version: {version}
  channel:
    url: http://updates.example.com/stable
"""


def _error(text: str, name: str = "spec.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text.encode(), Path(name))
    return str(info.value)


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def test_the_reference_spec_is_valid() -> None:
    loaded = parse_spec(GOOD.encode(), Path("spec.yaml"))
    assert loaded.policy.spec.version == "1.0.1"
    assert loaded.policy.spec.health.success_threshold == 2
    assert len(loaded.policy.spec.rollout.windows) == 2


# ---- one message: file, field path, line ----------------------------------------------------

BAD_SPECS = {
    "bad duration": (_edit("interval: 5s", "interval: 5 seconds"), 10, "spec.health.interval",
                     "'5 seconds' is not a duration"),
    "wrong type": (_edit("successThreshold: 2", "successThreshold: many"), 11,
                   "spec.health.successThreshold", "not an integer: write a plain integer"),
    "wrong type of a bool": (_edit("suspend: false", "suspend: maybe"), 22, "spec.suspend",
                             "not a boolean: write true or false"),
    "non-semver version": (_edit("version: 1.0.1", "version: v1.0.1"), 6, "spec.version",
                           "neither 'latest' nor a semantic version"),
    "a version YAML reads as a number": (_edit("version: 1.0.1", "version: 1.0"), 6,
                                         "spec.version", "'1.0' is neither 'latest'"),
    "unknown top-level field": (_edit("  suspend: false", "  suspended: false"), 22,
                                "spec.suspended", "unknown field"),
    "missing channel": (_edit("  channel:\n    url: http://127.0.0.1:8080/\n", ""), 5,
                        "spec.channel", "required field is missing"),
    "wrong kind": (_edit("kind: UpdatePolicy", "kind: Policy"), 2, "kind", "UpdatePolicy"),
    "bad zone in windows[1]": (_edit("Europe/Berlin", "Mars/Olympus"), 20,
                               "spec.rollout.windows[1].timezone",
                               "'Mars/Olympus' is not an IANA time zone"),
    "zone names are case-sensitive": (_edit("Europe/Berlin", "europe/berlin"), 20,
                                      "spec.rollout.windows[1].timezone", "IANA time zone"),
    "bad HH:MM in windows[1]": (_edit('"03:00"', '"25:00"'), 18,
                                "spec.rollout.windows[1].start",
                                "'25:00' is not a time of day as HH:MM"),
    "empty days in windows[1]": (_edit("[tue, wed]", "[]"), 17,
                                 "spec.rollout.windows[1].days", "at least 1 item"),
    "unknown day in windows[1]": (_edit("[tue, wed]", "[tue, funday]"), 17,
                                  "spec.rollout.windows[1].days[1]", "'mon'"),
    "window longer than 7d": (_edit("duration: 1h30m", "duration: 8d"), 19,
                              "spec.rollout.windows[1].duration", "at most 7d"),
    "bad duration in windows[1]": (_edit("duration: 1h30m", "duration: 90 minutes"), 19,
                                   "spec.rollout.windows[1].duration", "not a duration"),
    "unknown field in windows[1]": (_edit("        timezone: Europe/Berlin",
                                          "        timezone: Europe/Berlin\n        tz: UTC"),
                                    21, "spec.rollout.windows[1].tz", "unknown field"),
    "missing duration in windows[1]": (_edit("        duration: 1h30m\n", ""), 17,
                                       "spec.rollout.windows[1].duration",
                                       "required field is missing"),
    "zero threshold": (_edit("successThreshold: 2", "successThreshold: 0"), 11,
                       "spec.health.successThreshold", "greater than or equal to 1"),
    "bad stage mode": (_edit("    autoReboot: true", "    stage: later"), 21,
                       "spec.rollout.stage", "'immediate' or 'in-window'"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS), ids=list(BAD_SPECS))
def test_a_bad_spec_gets_one_message_with_file_field_and_line(case: str) -> None:
    text, line, field, words = BAD_SPECS[case]
    message = _error(text, "/etc/kruxos/update.yaml")
    assert "\n" not in message, message
    assert message.startswith(f"/etc/kruxos/update.yaml:{line}: {field}: "), message
    assert words in message


YAML_ERRORS = {
    "tab indentation": (_edit("  version: 1.0.1", "\tversion: 1.0.1"), 6, "'\\t'"),
    "duplicate key": (GOOD + "  version: 1.0.2\n", 23, "duplicate key"),
    "unclosed flow sequence": (_edit("      - days: [mon]", "      - days: [mon"), 15, ""),
    "a colon inside a plain value": (_edit("version: 1.0.1", "version: 1.0.1: x"), 6,
                                     "mapping values are not allowed here"),
}


@pytest.mark.parametrize("case", list(YAML_ERRORS), ids=list(YAML_ERRORS))
def test_a_yaml_syntax_error_names_file_and_line(case: str) -> None:
    text, line, words = YAML_ERRORS[case]
    message = _error(text)
    assert "\n" not in message, message
    assert message.startswith(f"spec.yaml:{line}: YAML error: "), message
    assert words in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_a_document_that_is_not_a_mapping_is_rejected_at_line_1(text: str) -> None:
    assert _error(text) == ("spec.yaml:1: the spec must be a mapping with apiVersion, kind, "
                            "metadata and spec")


def test_a_missing_file_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: cannot read the spec"):
        load_spec(tmp_path / "nope.yaml")


def test_a_huge_duration_is_a_spec_error_not_a_crash() -> None:
    message = _error(_edit("interval: 5s", "interval: 99999999999999999999s"))
    assert message.startswith("spec.yaml:10: spec.health.interval: ")
    assert "longer than 366d" in message


def test_a_duration_longer_than_a_year_is_refused() -> None:
    message = _error(_edit("interval: 5s", "interval: 999999999d"))
    assert "longer than 366d" in message


# ---- durations ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("5s", timedelta(seconds=5)),
    ("2m", timedelta(minutes=2)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1d", timedelta(days=1)),
    ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
])
def test_durations_parse_and_format_round_trip(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value
    assert format_duration(value) == text
    assert parse_duration(format_duration(value)) == value


def test_a_duration_is_formatted_in_its_canonical_form() -> None:
    assert format_duration(parse_duration("90m")) == "1h30m"
    assert format_duration(parse_duration("120s")) == "2m"


@pytest.mark.parametrize("text", ["5 seconds", "", "5", "1.5h", "5S", "1m30", "m", "-5s",
                                  "0s", "0h0m"])
def test_a_malformed_or_empty_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_duration_is_serialized_back_to_text() -> None:
    policy = parse_spec(GOOD.encode(), Path("spec.yaml")).policy
    dumped = policy.model_dump(by_alias=True, mode="json")
    assert dumped["spec"]["health"]["interval"] == "5s"
    assert dumped["spec"]["health"]["timeout"] == "2m"
    assert dumped["spec"]["rollout"]["windows"][1]["duration"] == "1h30m"
    assert UpdatePolicy.model_validate(dumped) == policy


# ---- defaults and `latest` ------------------------------------------------------------------

def test_the_defaults_are_the_seeds() -> None:
    spec = parse_spec(MINIMAL.format(version="1.0.1").encode(), Path("s.yaml")).policy.spec
    assert spec.health.url == "http://127.0.0.1:7800/health/ready"
    assert spec.health.interval == timedelta(seconds=5)
    assert spec.health.timeout == timedelta(minutes=2)
    assert spec.health.success_threshold == 1
    assert spec.rollout.auto_reboot is True
    assert spec.rollout.windows == []
    assert spec.rollout.stage == "immediate"
    assert spec.rollback.automatic is True
    assert spec.allow_downgrade is False
    assert spec.suspend is False


def test_a_channel_url_gets_a_trailing_slash() -> None:
    spec = parse_spec(MINIMAL.format(version="1.0.1").encode(), Path("s.yaml")).policy.spec
    assert spec.channel.url == "http://updates.example.com/stable/"


@pytest.mark.parametrize("version", ["latest", "1.0.1", "2.0.0-rc.1", "1.2.3+build.7"])
def test_latest_and_exact_semvers_are_accepted(version: str) -> None:
    spec = parse_spec(MINIMAL.format(version=version).encode(), Path("s.yaml")).policy.spec
    assert spec.version == version


@pytest.mark.parametrize("version", ["Latest", "1.0", "01.0.1", "1.0.1.2", "newest"])
def test_anything_else_is_not_a_version(version: str) -> None:
    message = _error(MINIMAL.format(version=version))
    assert message.startswith("spec.yaml:6: spec.version: "), message


def test_the_revision_is_the_content_hash() -> None:
    loaded = parse_spec(GOOD.encode(), Path("spec.yaml"))
    assert loaded.revision == hashlib.sha256(GOOD.encode()).hexdigest()[:12]
    assert loaded.revision == revision_of(GOOD.encode())
    reformatted = parse_spec((GOOD + "# a comment\n").encode(), Path("spec.yaml"))
    assert reformatted.revision != loaded.revision


# ---- the last good spec ---------------------------------------------------------------------

@pytest.fixture
def keeper_paths(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    return tmp_path / "spec.yaml", data


def test_a_good_spec_is_kept_as_last_good(keeper_paths: tuple[Path, Path]) -> None:
    spec, data = keeper_paths
    spec.write_text(GOOD)
    loaded, error = SpecKeeper(spec, data).refresh()
    assert error is None and loaded is not None
    assert loaded.revision == revision_of(GOOD.encode())
    assert (data / LAST_GOOD).read_bytes() == GOOD.encode()


def test_a_bad_edit_keeps_the_last_good_spec(keeper_paths: tuple[Path, Path]) -> None:
    spec, data = keeper_paths
    keeper = SpecKeeper(spec, data)
    spec.write_text(GOOD)
    keeper.refresh()
    spec.write_text(_edit("interval: 5s", "interval: 5 seconds"))
    loaded, error = keeper.refresh()
    assert error is not None
    assert str(error) == (f"{spec}:10: spec.health.interval: '5 seconds' is not a duration "
                          "(use forms like 5s, 2m, 1h30m)")
    assert loaded is not None
    assert loaded.revision == revision_of(GOOD.encode())
    assert loaded.path == spec
    assert loaded.policy.spec.health.interval == timedelta(seconds=5)


def test_the_last_good_spec_survives_a_restart(keeper_paths: tuple[Path, Path]) -> None:
    spec, data = keeper_paths
    spec.write_text(GOOD)
    SpecKeeper(spec, data).refresh()
    spec.write_text("spec: [\n")
    loaded, error = SpecKeeper(spec, data).refresh()  # a new process
    assert error is not None and str(error).startswith(f"{spec}:2: YAML error")
    assert loaded is not None and loaded.revision == revision_of(GOOD.encode())
    assert SpecKeeper(spec, data).copy_revision() == revision_of(GOOD.encode())


def test_a_new_good_spec_replaces_the_last_good(keeper_paths: tuple[Path, Path]) -> None:
    spec, data = keeper_paths
    keeper = SpecKeeper(spec, data)
    spec.write_text(GOOD)
    keeper.refresh()
    newer = _edit("version: 1.0.1", "version: 1.0.2")
    spec.write_text(newer)
    loaded, error = keeper.refresh()
    assert error is None and loaded is not None
    assert loaded.policy.spec.version == "1.0.2"
    assert SpecKeeper(spec, data).last_good() is not None
    assert SpecKeeper(spec, data).copy_revision() == revision_of(newer.encode())


def test_without_any_good_spec_there_is_nothing_in_force(keeper_paths: tuple[Path, Path]) -> None:
    spec, data = keeper_paths
    spec.write_text("kind: UpdatePolicy\n")
    loaded, error = SpecKeeper(spec, data).refresh()
    assert loaded is None and error is not None
    assert not (data / LAST_GOOD).exists()


# ---- the CLI: schema and examples -----------------------------------------------------------

def _kruxos(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "kruxos"
    command = [str(script)] if script.exists() else [shutil.which("kruxos") or "kruxos"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_the_committed_schema_is_what_the_cli_prints() -> None:
    result = _kruxos("spec", "schema")
    assert result.returncode == 0, result.stderr
    committed = (SPECS / "updatepolicy.schema.json").read_text()
    assert result.stdout == committed, "run: kruxos spec schema > specs/updatepolicy.schema.json"


EXAMPLES = sorted(p for p in SPECS.glob("*.yaml")
                  if p.name not in ("device.yaml", "device-layer.yaml"))


def test_there_are_example_specs() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_spec_validates_with_the_cli(example: Path) -> None:
    result = _kruxos("spec", "validate", str(example))
    assert result.returncode == 0, result.stderr
    assert "valid UpdatePolicy" in result.stdout


def test_the_cli_rejects_a_bad_spec_with_exit_2_and_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "update.yaml"
    bad.write_text(_edit("Europe/Berlin", "Mars/Olympus"))
    result = _kruxos("spec", "validate", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"error: {bad}:20: spec.rollout.windows[1].timezone: "
                             "'Mars/Olympus' is not an IANA time zone (e.g. Europe/Berlin)\n")
