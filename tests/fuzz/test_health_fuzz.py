"""Health answers, fuzzed: any status and body give an answer whose reason fits a line.

A health answer never raises (an unhealthy OS is an answer, not an error);
what it says reaches the audit trail and a terminal, so the summary and the
rollback reason must stay short and printable whatever the OS sent.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import strategies as st

from reconciler.health import HealthAnswer, read_answer, rollback_reason
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import BYTE_MUTATIONS, feed_examples, mutated, nest, report

TARGET = "tests.fuzz.test_health_fuzz:answer"
STATUS = struct.Struct(">H")
#: A rollback reason of eight failing services, each name and state cut to 80 characters.
REASON_LIMIT = 1500


def answer(document: bytes) -> None:
    """Read one answer; its texts must be short and printable and survive the state file."""
    (status,) = STATUS.unpack_from(document.ljust(2, b"\0"))
    result = read_answer(status % 1000, document[2:])
    for text in (result.summary(), rollback_reason(result, timed_out=True)):
        if len(text) > REASON_LIMIT or not text.isprintable():
            raise AssertionError(f"reason of {len(text)} characters: {text[:200]!r}")
    if HealthAnswer.from_dict(json.loads(json.dumps(result.to_dict()))) != result:
        raise AssertionError(f"{result!r} does not survive the state file")


SERVICE = st.one_of(st.sampled_from(["ok", "running", "Healthy", "failed to start", "crashed",
                                     "", " ", "\x1b[31mred", "line\nbreak", "x" * 5000]),
                    st.booleans(), st.integers(), st.none(), st.text(max_size=20),
                    st.fixed_dictionaries({"status": st.text(max_size=20)}),
                    st.lists(st.integers(), max_size=3))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    services: Any = draw(st.dictionaries(st.text(max_size=12), SERVICE, max_size=12))
    doc = draw(st.sampled_from(["services", "bare", "other"]))
    value: Any = {"status": "unhealthy", "services": services} if doc == "services" else (
        services if doc == "bare" else draw(st.sampled_from([[], "text", 1, None])))
    text = json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    if encoding != "utf-8":
        text = text.decode("utf-8", "replace").encode(encoding, "replace")
    return STATUS.pack(draw(st.sampled_from([200, 500, 503, 404, 0, 999, 65535]))) + text


DOCUMENTS = st.one_of(mutated(bodies(), (*BYTE_MUTATIONS, nest), rounds=2),
                      st.binary(max_size=200))


def test_any_health_answer_reads_with_a_short_printable_reason() -> None:
    with ParserWorker(TARGET, ()) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("health answers", findings))
    findings.assert_clean()
    assert findings.answers == {"ok": sum(findings.answers.values())}
