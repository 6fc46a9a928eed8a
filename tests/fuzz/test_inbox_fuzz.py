"""Inbox requests, fuzzed: any file in the inbox is a checked request or a short ``StateError``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from reconciler.inbox import KINDS, parse_request
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import BYTE_MUTATIONS, SHORT_MESSAGE, feed_examples, mutated, nest, report

TARGET = "tests.fuzz.test_inbox_fuzz:parse"
ACCEPTED = ("reconciler.errors.StateError",)


def parse(document: bytes) -> None:
    """Parse one request; what comes back must carry the fields the reconciler reads, typed."""
    request = parse_request(document, "00000000000000000001-pin.json")
    if request["kind"] not in KINDS or not isinstance(request.get("by", ""), str):
        raise AssertionError(f"accepted a request the reconciler cannot read: {request!r}")
    if request["kind"] == "pin" and not isinstance(request["version"], str):
        raise AssertionError(f"accepted a pin without a version: {request!r}")


HOSTILE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20), st.sampled_from(["x" * 5000, "1.0.0\n", "\x1b[2J"]),
                    st.lists(st.integers(), max_size=3))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(sorted(KINDS)))
    request: dict[str, Any] = {"kind": kind, "at": 1.7e9, "by": "root on /dev/pts/0"}
    if kind == "pin":
        request.update(version=draw(st.sampled_from(["1.0.1", "2.0.0-rc.1"])),
                       reboot=draw(st.sampled_from(["ask", "now", "next-boot"])))
    if kind == "reboot":
        request["answer"] = draw(st.sampled_from(["now", "next-boot"]))
    if draw(st.booleans()):
        field = draw(st.sampled_from(["kind", "at", "by", "version", "reboot", "answer", "x"]))
        request[field] = draw(HOSTILE)
    return json.dumps(request).encode()


DOCUMENTS = st.one_of(mutated(requests(), (*BYTE_MUTATIONS, nest), rounds=2),
                      st.binary(max_size=100))


def test_any_inbox_file_is_a_checked_request_or_a_short_state_error() -> None:
    with ParserWorker(TARGET, ACCEPTED,
                      message_limit=SHORT_MESSAGE) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("inbox requests", findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0 and findings.answers.get("refused", 0) > 0
