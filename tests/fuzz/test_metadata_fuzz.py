"""Channel metadata, fuzzed: any document is believed or refused with a short ``ReleaseError``.

Documents start as valid signed metadata; some have a field replaced by a
hostile value and are signed again (so the attack reaches the parsing of the
signed content, as from a compromised or buggy publisher), then bytes are
mutated (so the envelope and the JSON themselves are attacked).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st
from nacl.signing import SigningKey

from reconciler.release.keys import keyid_of
from reconciler.release.metadata import canonical_json, verify_metadata
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import BYTE_MUTATIONS, feed_examples, mutated, nest, report

TARGET = "tests.fuzz.test_metadata_fuzz:verify"
ACCEPTED = ("reconciler.errors.ReleaseError",)
KEY = SigningKey(bytes(range(32)))
KEYID = keyid_of(KEY.verify_key)
NOW = datetime(2030, 5, 10, tzinfo=UTC)


def verify(document: bytes) -> None:
    """The device's whole check of one fetched ``metadata.json``."""
    verify_metadata(document, {KEYID: KEY.verify_key}, frozenset(), NOW, 3, None,
                    channel="stable")


def sign(signed: Any, keyid: str = KEYID) -> dict[str, Any]:
    """The envelope a publisher writes around ``signed``."""
    try:
        sig = base64.b64encode(KEY.sign(canonical_json(signed)).signature).decode()
    except (UnicodeEncodeError, TypeError, ValueError):
        sig = "AAAA"  # unsignable content still makes a document to feed
    return {"signed": signed, "signatures": [{"keyid": keyid, "sig": sig}]}


digest = st.binary(min_size=32, max_size=32).map(bytes.hex)


def _blocks(size: int, block_size: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(-(-size // block_size))]


@st.composite
def releases(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 10_000))
    block_size = draw(st.sampled_from([512, 1024, 4096, 1 << 20]))
    return {
        "version": draw(st.sampled_from(["1.0.0", "1.0.1-rc.1", "2.10.3", "0.0.9+b7"])),
        "date": "2030-05-01", "changes": draw(st.lists(st.text(max_size=8), max_size=2)),
        "image": "kruxos.img", "size": size, "sha256": draw(digest), "block_size": block_size,
        "blocks": _blocks(size, block_size),
    }


@st.composite
def valid_signed(draw: st.DrawFn) -> dict[str, Any]:
    listed = draw(st.lists(releases(), max_size=3, unique_by=lambda r: r["version"]))
    return {"format": 1, "channel": "stable", "serial": draw(st.integers(3, 10**6)),
            "issued": "2030-05-01T12:00:00Z", "expires": "2030-05-31T12:00:00Z",
            "releases": listed}


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 2**63, 10**4000, -(10**300)]),
    st.text(max_size=30), st.sampled_from(["\ud800", "x" * 20_000, "1.0.0" + "-a" * 5000,
                                           "2030-05-01T12:00:00", "0001-01-01T00:00:00+23:59",
                                           "9999-12-31T23:59:59-23:59", "A" * 64, "a" * 63,
                                           "../etc/passwd", "2030-W01-1", "\u0663.0.0"]),
    st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=3),
    st.builds(_deep, st.sampled_from([10, 40, 900])),
    st.builds(_blocks, st.integers(0, 200), st.just(1)),
)
RELEASE_FIELDS = ["version", "date", "changes", "image", "size", "sha256", "block_size",
                  "blocks", "unknown"]
TOP_FIELDS = ["format", "channel", "serial", "issued", "expires", "releases", "unknown"]


@st.composite
def hostile_signed(draw: st.DrawFn) -> Any:
    """Valid content with one field made hostile (or removed), or hostile as a whole."""
    signed = draw(valid_signed())
    where = draw(st.sampled_from(["top", "release", "whole"]))
    if where == "whole":
        return draw(HOSTILE)
    if where == "release":
        signed["releases"] = signed["releases"] or [draw(releases())]
        target, field = signed["releases"][0], draw(st.sampled_from(RELEASE_FIELDS))
    else:
        target, field = signed, draw(st.sampled_from(TOP_FIELDS))
    if draw(st.booleans()) and field in target:
        del target[field]
    else:
        target[field] = draw(HOSTILE)
    return signed


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    signed = draw(st.one_of(valid_signed(), hostile_signed()))
    envelope = sign(signed, draw(st.sampled_from([KEYID, KEYID.upper(), "", "k" * 5000])))
    extra = draw(st.sampled_from(["none", "many", "odd"]))
    if extra == "many":
        envelope["signatures"] *= draw(st.sampled_from([2, 17, 500]))
    elif extra == "odd":
        envelope["signatures"].append(draw(HOSTILE))
    return json.dumps(envelope).encode()


DOCUMENTS = mutated(envelopes(), (*BYTE_MUTATIONS, nest), rounds=2)


def test_any_metadata_document_is_believed_or_refused_with_a_short_reason() -> None:
    with ParserWorker(TARGET, ACCEPTED) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("channel metadata", findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0, "no document reached the end of the checks"
