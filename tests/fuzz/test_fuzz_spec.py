"""The spec reader under generated and mutated documents: a value or a SpecError, never worse.

Valid specs are generated field by field, then mutated as an adversary
would: nesting thousands deep, aliases that expand to billions of values,
huge scalars, control characters, random bytes, truncation, loose booleans
and stray YAML tokens, one mutation or several. Each document goes through
:func:`reconciler.specfile.parse_spec` in a :class:`ParserWorker` (512 MiB,
10 s per document): any other exception, a hang, a death or a long message is
a finding. Every refusal must also be printable (no raw control character
reaches a terminal or a log). A small sample runs through the real
``kruxos spec validate``: exit 0 or 2, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import REPO, ParserWorker, examples

TARGET = "reconciler.specfile:parse_spec"
ACCEPTED = ("reconciler.errors.SpecError",)
CLI_SAMPLE = 20
# A failing document is shown by the harness, cut; hypothesis' own repr of it may be huge.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

_VERSIONS = st.one_of(
    st.just("latest"),
    st.builds("{}.{}.{}".format, st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    st.sampled_from(["2.0.0-rc.1", "1.2.3+build.7", "1.0", "v1.0.1"]),
)
_URLS = st.sampled_from([
    "http://127.0.0.1:8080/", "https://updates.example.com/kruxos/stable",
    "http://[::1]:8080/c/", "http://[::1", "http://u:p@host/", "ftp://x/", "http://h/ a",
])
_DURATIONS = st.sampled_from(["5s", "2m", "1h30m", "1d", "0s", "5 seconds", "99999999999999s"])
_WINDOW = st.builds(
    lambda days, hour, minute, duration, zone: (
        f"      - days: [{', '.join(days)}]\n        start: \"{hour:02d}:{minute:02d}\"\n"
        f"        duration: {duration}\n        timezone: {zone}\n"),
    st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1,
             max_size=3),
    st.integers(0, 25), st.integers(0, 59), _DURATIONS,
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus"]),
)


@st.composite
def valid_specs(draw: st.DrawFn) -> str:
    """A spec with every section, values mostly valid and sometimes not."""
    windows = "".join(draw(st.lists(_WINDOW, max_size=3)))
    return (
        "apiVersion: kruxos.io/v1\nkind: UpdatePolicy\nmetadata:\n"
        f"  name: {draw(st.sampled_from(['gateways', 'lab-01', 'Büro']))}\n"
        f"spec:\n  version: {draw(_VERSIONS)}\n  channel:\n    url: {draw(_URLS)}\n"
        f"  health:\n    interval: {draw(_DURATIONS)}\n"
        f"    successThreshold: {draw(st.integers(0, 5))}\n"
        f"  rollout:\n    windows:{' []' if not windows else ''}\n{windows}"
        f"    autoReboot: {draw(st.sampled_from(['true', 'false']))}\n"
        f"  rollback:\n    automatic: {draw(st.sampled_from(['true', 'false']))}\n"
        f"  suspend: {draw(st.sampled_from(['true', 'false']))}\n"
    )


def _laughs(levels: int, fan: int) -> str:
    lines = ["l0: &l0 [" + ",".join(['"lol"'] * fan) + "]"]
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * fan) + "]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


_TOKENS = ["&a ", "*a", "*zz", "!!binary ", "!!python/object:os.system ", "%YAML 1.1\n---\n",
           "%YAML 1.3\n", "---\n", "...\n", "? ", "|\n", ">-\n", "<<: *a\n", "{", "}", "[", "]",
           ",", ": ", "- ", "#", "'", '"', "\t", "\\", "!<tag:x>", "0x1F", "1e999", "~",
           "2001-13-45", "9" * 5000, "yes", "off", "'true'", "!!int '3'", "!!float 'x'"]
_CONTROLS = ["\x00", "\x07", "\x1b[31m", "\x1b]0;pwned\x07", "\x7f", "\x85", "\u2028",
             "\u202e", "\ufeff", "\r", "\n", "\ud800"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A generated spec with one to three hostile mutations."""
    text = draw(valid_specs())
    for _ in range(draw(st.integers(0, 3))):
        text = draw(st.sampled_from(_MUTATIONS))(draw, text)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # raw bytes, also outside UTF-8
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=32)) + data[at + draw(st.integers(0, 8)):]
    return data


def _at(draw: st.DrawFn, text: str) -> int:
    return draw(st.integers(0, len(text)))


def _value_line(draw: st.DrawFn, text: str, value: str) -> str:
    """Replace the value of one ``key: value`` line."""
    lines = text.split("\n")
    index = draw(st.integers(0, len(lines) - 1))
    key, colon, _ = lines[index].partition(":")
    lines[index] = f"{key}: {value}" if colon else value
    return "\n".join(lines)


def _deep(draw: st.DrawFn, text: str) -> str:
    depth = draw(st.sampled_from([30, 31, 32, 33, 100, 5000, 60_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", ""), ("? ", "")]))
    balanced = draw(st.booleans())
    return _value_line(draw, text, opener * depth + (closer * depth if balanced else ""))


def _aliases(draw: st.DrawFn, text: str) -> str:
    laughs = _laughs(draw(st.integers(1, 9)), draw(st.integers(1, 12)))
    text = laughs + text if draw(st.booleans()) else text + laughs
    return _value_line(draw, text, f"*l{draw(st.integers(0, 9))}")


def _aliased_text(draw: st.DrawFn, text: str) -> str:
    size, copies = draw(st.sampled_from([10, 2000, 200_000])), draw(st.integers(1, 1500))
    block = (f'big: &big "{"t" * size}"\nmany: &many [' + ",".join(["*big"] * copies) + "]\n"
             + "dup: *many\n" * draw(st.integers(1, 2)))
    return block + text if draw(st.booleans()) else _value_line(draw, block + text, "*many")


def _huge(draw: st.DrawFn, text: str) -> str:
    size = draw(st.sampled_from([100, 5000, 60_000, 300_000, 9_600_000]))
    char = draw(st.sampled_from(["x", "9", " ", "#", "é", "[", "'"]))
    return _value_line(draw, text, char * size)


def _control(draw: st.DrawFn, text: str) -> str:
    at = _at(draw, text)
    return text[:at] + draw(st.sampled_from(_CONTROLS)) + text[at:]


def _escaped_name(draw: st.DrawFn, text: str) -> str:
    escape = draw(st.sampled_from(["\\n", "\\e[31m", "\\0", "\\u202E", "\\x85", "\\t", "\\L"]))
    return text.replace("  name: ", f'  name: "a{escape}b" #', 1)


def _truncate(draw: st.DrawFn, text: str) -> str:
    return text[:_at(draw, text)]


def _token(draw: st.DrawFn, text: str) -> str:
    at = _at(draw, text)
    return text[:at] + draw(st.sampled_from(_TOKENS)) + text[at:]


def _loose(draw: st.DrawFn, text: str) -> str:
    loose = draw(st.sampled_from(["'true'", "1", "off", "yes", "ON", "'3'", "3.0", "true",
                                  "null", "[]", "{}"]))
    return _value_line(draw, text, loose)


def _duplicate_line(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    index = draw(st.integers(0, len(lines) - 1))
    return "\n".join(lines[:index + 1] + [lines[index]] * draw(st.integers(1, 3))
                     + lines[index + 1:])


_MUTATIONS = [_deep, _aliases, _aliased_text, _huge, _control, _escaped_name, _truncate,
              _token, _loose, _duplicate_line]


def _unprintable(message: str) -> bool:
    return any(c != "\n" and unicodedata.category(c)[0] == "C" for c in message)


@pytest.mark.timeout(max(120, examples() // 10))  # about 20 ms a document; 50,000 in torture
def test_the_spec_reader_answers_every_document_with_a_spec_or_a_short_spec_error() -> None:
    worker = ParserWorker(TARGET, ACCEPTED)

    @settings(max_examples=examples(), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def feed(document: bytes) -> None:
        answer = worker.feed(document)
        message = str(answer.get("message", ""))
        if _unprintable(message):
            worker.findings.problems.append(f"document {document[:200]!r}: unprintable "
                                            f"message {message[:200]!r}")

    with worker:
        feed()
    worker.findings.assert_clean()
    answers = worker.findings.answers
    assert sum(answers.values()) == examples(), answers
    assert answers.get("ok", 0) > 0 and answers.get("refused", 0) > examples() // 2, answers


def test_spec_validate_exits_0_or_2_and_never_prints_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    seen: dict[int, int] = {}

    @settings(max_examples=CLI_SAMPLE, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def validate(document: bytes) -> None:
        path.write_bytes(document)
        result = subprocess.run([sys.executable, "-m", "reconciler.cli.main", "spec",
                                 "validate", str(path)], cwd=REPO, capture_output=True,
                                timeout=60)
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        assert result.returncode in (0, 2), (document[:300], output[-2000:])
        assert "Traceback" not in output, (document[:300], output[-2000:])
        assert not _unprintable(output), (document[:300], output[:500])
        seen[result.returncode] = seen.get(result.returncode, 0) + 1

    validate()
    assert sum(seen.values()) == CLI_SAMPLE and seen.get(2, 0) > 0, seen
