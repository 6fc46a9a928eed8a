"""The manual is a transcript: every console block of the user docs runs, and must print
what the doc shows (``tests/docrun.py``; the conventions are in docs/testing.md,
"Executed docs").

Each document runs on one fresh simulated device of its own, its blocks in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.device import REPO, SimDevice
from tests.docrun import DocError, Result, mismatch, normalise, parse, run_doc

#: The documents that are executed, each on a device of its own.
DOCS = ("docs/updating.md", "docs/audit.md", "docs/spec.md", "README.md")


@pytest.fixture
def doc_device(tmp_path: Path) -> Iterator[SimDevice]:
    """A device directory for one document (made and booted when the document says so),
    stopped in teardown whatever the document started."""
    device = SimDevice(tmp_path / "dev")
    try:
        yield device
    finally:
        try:
            device.stop()
        finally:
            device.kill_leftovers()


def _run(name: str, text: str, device: SimDevice) -> None:
    doc = parse(name, text)
    if doc.started:
        device.cli("sim", "init", str(device.dir))
        device.start()
    run_doc(doc, device)


@pytest.mark.parametrize("name", DOCS)
def test_every_console_block_prints_what_the_doc_shows(name: str, doc_device: SimDevice) -> None:
    text = (REPO / name).read_text()
    doc = parse(name, text)
    assert doc.blocks, f"{name} has no console block: nothing of it is executed"
    _run(name, text, doc_device)


def test_a_console_block_appears_only_in_a_doc_that_is_executed() -> None:
    """A ``console`` block says "this is what the command prints"; only executed docs may
    say so (the others show illustrations in ``text`` blocks)."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    claiming = {str(p.relative_to(REPO)) for p in docs if "```console" in p.read_text()}
    assert claiming <= set(DOCS), f"console blocks in docs that are not run: " \
        f"{sorted(claiming - set(DOCS))}; add them to DOCS"


# ---- the runner itself -------------------------------------------------------------------

DRIFTED = """\
# A page

<!-- docs-test: device /tmp/dev -->

Some text.

```console
$ echo one
one
$ printf 'two\\nthree\\n'
two
tree
```
"""


def test_a_drifted_line_fails_naming_the_doc_the_line_and_the_difference(
        doc_device: SimDevice) -> None:
    with pytest.raises(AssertionError) as caught:
        _run("docs/page.md", DRIFTED, doc_device)
    message = str(caught.value)
    assert message.startswith("docs/page.md:10: `$ printf 'two\\nthree\\n'`"), message
    assert "docs/page.md:12: doc:     tree" in message, message
    assert "printed: three" in message, message


def test_the_same_doc_without_the_drift_passes(doc_device: SimDevice) -> None:
    _run("docs/page.md", DRIFTED.replace("tree\n", "three\n"), doc_device)


def test_a_wrong_exit_status_fails_and_echo_checks_it_as_the_shell_does(
        doc_device: SimDevice) -> None:
    shown = ("<!-- docs-test: device /tmp/dev -->\n```console\n$ false\n$ echo $?\n1\n```\n"
             "<!-- docs-test: exit 3 -->\n```console\n$ exit 2\n```\n")
    with pytest.raises(AssertionError, match=r"page.md:9: `\$ exit 2`.*exit status 2, the "
                                             r"doc says 3"):
        _run("page.md", shown, doc_device)


def test_a_wait_that_never_matches_fails_with_the_last_difference(doc_device: SimDevice) -> None:
    doc_device.dir.mkdir()
    shown = ("<!-- docs-test: device /tmp/dev -->\n<!-- docs-test: wait 1s -->\n```console\n"
             "$ ls /tmp/dev\nsomething that never comes\n```\n")
    with pytest.raises(AssertionError) as caught:
        _run("page.md", shown, doc_device)
    message = str(caught.value)
    assert message.startswith("after ") and "(wait 1s), still: page.md:4: `$ ls /tmp/dev`" \
        in message, message
    assert "page.md:5: doc:     something that never comes" in message, message


def test_a_command_run_silently_failing_is_a_drift(doc_device: SimDevice) -> None:
    with pytest.raises(AssertionError, match="exit status 1, the doc says 0"):
        _run("page.md", "<!-- docs-test: device /tmp/dev -->\n```console\n$ false\n```\n",
             doc_device)


def test_the_device_directory_is_written_as_the_doc_names_it(doc_device: SimDevice) -> None:
    doc_device.dir.mkdir()
    _run("page.md", "<!-- docs-test: device /tmp/dev -->\n```console\n"
                    "$ pwd\n/tmp/dev\n$ echo $KRUXOS_CONFIG\n/tmp/dev/device.yaml\n```\n",
         doc_device)


@pytest.mark.parametrize("text, problem", [
    ("```console\n$ true\n```\n", "no <!-- docs-test: device DIR --> line"),
    ("<!-- docs-test: device /tmp/dev -->\n```console\nout\n```\n", "starts with a command"),
    ("<!-- docs-test: device /tmp/dev -->\n<!-- docs-test: wait 5s -->\nText.\n",
     "no console block after it"),
    ("<!-- docs-test: device /tmp/dev -->\n<!-- docs-test: wait 5s -->\n```console\n"
     "$ kruxos update apply --yes\n```\n", "may change something"),
    ("<!-- docs-test: device /tmp/dev -->\n<!-- docs-test: sleep 5 -->\n```console\n$ true\n"
     "```\n", "unknown docs-test directive"),
])
def test_a_malformed_doc_is_refused_naming_the_line(text: str, problem: str) -> None:
    with pytest.raises(DocError, match=problem):
        parse("page.md", text)


def test_blocks_that_are_not_console_are_not_run() -> None:
    doc = parse("page.md", "<!-- docs-test: device /tmp/dev -->\n```\n$ rm -rf /\n```\n"
                           "```yaml\nkind: UpdatePolicy\n```\n```sh\n$ reboot\n```\n")
    assert doc.blocks == []


@pytest.mark.parametrize("line, same_as", [
    ("#3  2026-11-29T20:52:47Z  cli  pin  → ok (0.0s)",
     "#3  2026-12-02T08:00:01Z  cli  pin  → ok (1.3s)"),
    ("last pass 2026-12-02T15:10:52Z (13s ago)", "last pass 2026-12-03T01:00:00Z (1m5s ago)"),
    ("bad signature by key 611bfb9a4a7de32a", "bad signature by key 0123456789abcdef"),
    ("kruxos daemon (pid 42)", "kruxos daemon (pid 31337)"),
    ('  "duration_s": 0.3747072850001132,', '  "duration_s": 2,'),
])
def test_normalisation_hides_times_ports_pids_and_keys(line: str, same_as: str) -> None:
    assert normalise(line) == normalise(same_as)


@pytest.mark.parametrize("line, differs_from", [
    ("#3  2026-11-29T20:52:47Z  cli  pin", "#4  2026-11-29T20:52:47Z  cli  pin"),
    ("revision 159c5937393a, version 1.0.0", "revision 159c5937393b, version 1.0.0"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8081/"),
    ("3145728 bytes written", "3145729 bytes written"),
    ("████████████████████ 100%", "██████░░░░░░░░░░░░░░ 33%"),
    ("Trial: 2 tries left", "Trial: 1 tries left"),
])
def test_normalisation_keeps_what_a_reader_relies_on(line: str, differs_from: str) -> None:
    assert normalise(line) != normalise(differs_from)


def test_any_seq_loosens_only_the_record_number_of_an_audit_list_line() -> None:
    head = "<!-- docs-test: device /tmp/dev -->\n"
    doc = parse("t.md", head + "<!-- docs-test: any-seq -->\n```console\n$ kruxos audit list\n"
                        "#9  2026-12-02T19:04:44Z  cli  reboot-answer  → ok (0.0s)\n```\n")
    command = doc.blocks[0].commands[0]

    def printed(text: str) -> str | None:
        return mismatch(doc, command, Result(0, text))

    assert printed("#7  2026-12-03T08:00:00Z  cli  reboot-answer  → ok (0.1s)\n") is None
    assert printed("#12 2026-12-03T08:00:00Z  cli  reboot-answer  → ok (0.1s)\n") is None
    assert printed("#7  2026-12-03T08:00:00Z  cli  pin  → ok (0.1s)\n") is not None
    assert printed("7  2026-12-03T08:00:00Z  cli  reboot-answer  → ok (0.1s)\n") is not None
    plain = parse("t.md", head + "```console\n$ kruxos audit list\n"
                          "#9  2026-12-02T19:04:44Z  cli  reboot-answer  → ok (0.0s)\n```\n")
    assert mismatch(plain, plain.blocks[0].commands[0], Result(
        0, "#7  2026-12-03T08:00:00Z  cli  reboot-answer  → ok (0.1s)\n")) is not None
