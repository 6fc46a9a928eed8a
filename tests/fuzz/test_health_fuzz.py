"""Health answers, fuzzed: any status and body give an answer whose reason fits a line.

A health answer never raises (an unhealthy OS is an answer, not an error);
what it says reaches the audit trail and a terminal, so the summary and the
rollback reason must stay short and printable whatever the OS sent.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

from hypothesis import strategies as st

from reconciler.health import HealthAnswer, read_answer, rollback_reason
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import (
    BYTE_MUTATIONS,
    feed_examples,
    mutated,
    nest,
    random_text,
    report,
    seeded,
)

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


def _service(rnd: random.Random) -> Any:
    return rnd.choice(["ok", "running", "Healthy", "failed to start", "crashed", "", " ",
                       "\x1b[31mred", "line\nbreak", "x" * 5000, True, False, 7, None, [1, 2],
                       {"status": random_text(rnd, 20)}, {"status": 3}, {},
                       random_text(rnd, 20)])


def body(rnd: random.Random) -> bytes:
    """An answer as an OS might send it: services with states, in one of a few encodings."""
    services = {random_text(rnd, 12): _service(rnd) for _ in range(rnd.randint(0, 12))}
    value = rnd.choice([{"status": "unhealthy", "services": services}, services, [], "text", 1])
    text = json.dumps(value, ensure_ascii=rnd.random() < 0.5).encode("utf-8", "surrogatepass")
    encoding = rnd.choice(["utf-8", "utf-8", "utf-16", "latin-1"])
    if encoding != "utf-8":
        text = text.decode("utf-8", "replace").encode(encoding, "replace")
    return STATUS.pack(rnd.choice([200, 500, 503, 404, 0, 999, 65535])) + text


DOCUMENTS = st.one_of(mutated(seeded(body), (*BYTE_MUTATIONS, nest), rounds=2),
                      st.binary(max_size=200))


def test_any_health_answer_reads_with_a_short_printable_reason() -> None:
    with ParserWorker(TARGET, ()) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("health answers", findings))
    findings.assert_clean()
    assert findings.answers == {"ok": sum(findings.answers.values())}
