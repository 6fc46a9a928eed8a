"""The fuzz harness itself: each kind of failure is a finding, good answers are not."""

from __future__ import annotations

import pytest

from tests.fuzz.harness import ParserWorker, examples

TARGET = "tests.fuzz.selftest:bad_parser"


@pytest.mark.parametrize("document, why", [
    (b"crash", "KeyError"),
    (b"memory", "MemoryError"),
    (b"hang", "no answer within"),
    (b"chatty", "message of 5000 characters"),
])
def test_each_kind_of_failure_is_a_finding_naming_the_document(document: bytes, why: str) -> None:
    with ParserWorker(TARGET, ("builtins.ValueError",), deadline=2) as worker:
        worker.feed(document)
        assert worker.feed(b"fine")["result"] == "ok"  # a lost worker is replaced
    assert len(worker.findings.problems) == 1
    assert why in worker.findings.problems[0] and repr(document) in worker.findings.problems[0]


def test_accepted_refusals_and_values_are_not_findings() -> None:
    with ParserWorker(TARGET, ("builtins.ValueError",)) as worker:
        assert worker.feed(b"refuse") == {"result": "refused", "message": "a short reason",
                                          "seconds": pytest.approx(0, abs=5)}
        worker.feed(b"anything")
    worker.findings.assert_clean()
    assert worker.findings.answers == {"refused": 1, "ok": 1}


def test_the_number_of_examples_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRUXOS_FUZZ_EXAMPLES", raising=False)
    assert examples() == 1000
    monkeypatch.setenv("KRUXOS_FUZZ_EXAMPLES", "50000")
    assert examples() == 50000
