"""Channel metadata, fuzzed: any document is believed or refused with a short ``ReleaseError``.

Documents start as valid signed metadata (formats 1 and 2, releases with and
without ``requires`` and ``services``); some have a field replaced by a hostile
value (for ``format``, ``requires`` and ``services`` often one just past what is
accepted, and sometimes a field of one service artifact) and are
signed again (so the attack reaches the parsing of the signed content, as from
a compromised or buggy publisher), then bytes are mutated (so the envelope and
the JSON themselves are attacked). For a believed document the target also
asks which releases the device can install, with and without features.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st
from nacl.signing import SigningKey

from reconciler.errors import ReleaseError
from reconciler.release import features
from reconciler.release.keys import keyid_of
from reconciler.release.metadata import canonical_json, verify_metadata
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import BYTE_MUTATIONS, SHORT_MESSAGE, feed_examples, mutated, nest, report

TARGET = "tests.fuzz.test_metadata_fuzz:verify"
ACCEPTED = ("reconciler.errors.ReleaseError",)
KEY = SigningKey(bytes(range(32)))
KEYID = keyid_of(KEY.verify_key)
NOW = datetime(2030, 5, 10, tzinfo=UTC)
#: Feature names a publisher may list: the reserved ones and made-up valid names.
FEATURE_NAMES = ["service-artifacts", "container-image", "phased-rollout", "block-index-64k",
                 "a", "x9", "v2.delta", "z" * 64]
#: Service names a publisher may list.
SERVICE_NAMES = ["gateway", "db", "metrics-agent", "a_b", "x" * 64]
#: What a later device might implement (the fuzz target asks with and without it).
IMPLEMENTED = frozenset(FEATURE_NAMES[:2])


def verify(document: bytes) -> None:
    """The device's whole check of one fetched ``metadata.json``, and which releases it
    can install (what ``latest`` resolves to, which newer ones it skips and why)."""
    meta = verify_metadata(document, {KEYID: KEY.verify_key}, frozenset(), NOW, 3, None,
                           channel="stable")
    features.newest_installable(meta)
    features.skipped(meta)
    features.skipped(meta, IMPLEMENTED)
    for wariness in (Fraction(0), Fraction(1, 2), Fraction(2**64 - 1, 2**64)):
        features.newest_installable(meta, now=NOW, wariness=wariness)
        for hold in features.held_back(meta, NOW, wariness):
            hold.reason()


def sign(signed: Any, keyid: str = KEYID) -> dict[str, Any]:
    """The envelope a publisher writes around ``signed``."""
    try:
        sig = base64.b64encode(KEY.sign(canonical_json(signed)).signature).decode()
    except (UnicodeEncodeError, TypeError, ValueError):
        sig = "AAAA"  # unsignable content still makes a document to feed
    return {"signed": signed, "signatures": [{"keyid": keyid, "sig": sig}]}


def _blocks(size: int, block_size: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(-(-size // block_size))]


def _service(rnd: random.Random, name: str) -> dict[str, Any]:
    size, block_size = rnd.randint(1, 10_000), rnd.choice([512, 1024, 4096, 1 << 20])
    return {"name": name, "version": rnd.choice(["1.0.0", "2.0.1-rc.1"]),
            "file": f"{name}.svc", "size": size, "sha256": rnd.randbytes(32).hex(),
            "block_size": block_size, "blocks": _blocks(size, block_size)}


def _release(rnd: random.Random, version: str) -> dict[str, Any]:
    size, block_size = rnd.randint(1, 10_000), rnd.choice([512, 1024, 4096, 1 << 20])
    release: dict[str, Any] = {"version": version, "date": "2030-05-01",
               "changes": ["line"] * rnd.randint(0, 2), "image": "kruxos.img", "size": size,
               "sha256": rnd.randbytes(32).hex(), "block_size": block_size,
               "blocks": _blocks(size, block_size)}
    if rnd.random() < 0.5:
        release["requires"] = rnd.sample(FEATURE_NAMES, rnd.randint(0, 3))
    if rnd.random() < 0.4:
        release["requires"] = [*release.get("requires", []), "service-artifacts"]
        release["requires"] = list(dict.fromkeys(release["requires"]))
        names = rnd.sample(SERVICE_NAMES, rnd.randint(1, 3))
        release["services"] = [_service(rnd, name) for name in names]
    if rnd.random() < 0.3:
        release["requires"] = list(dict.fromkeys([*release.get("requires", []),
                                                  "phased-rollout"]))
        release["rollout"] = {"start": rnd.choice(["2030-05-09T00:00:00Z",
                                                   "2030-05-11T00:00:00+02:00"]),
                              "startPercentage": rnd.randint(0, 100),
                              "duration": rnd.choice(["1h", "2d12h", "366d"])}
        if rnd.random() < 0.3:
            del release["rollout"]["duration"]
    return release


def _valid_signed(rnd: random.Random) -> dict[str, Any]:
    versions = rnd.sample(["1.0.0", "1.0.1-rc.1", "2.10.3", "0.0.9+b7"], rnd.randint(0, 3))
    signed = {"format": rnd.choice([1, 2]), "channel": "stable",
              "serial": rnd.randint(3, 10**6),
              "issued": "2030-05-01T12:00:00Z", "expires": "2030-05-31T12:00:00Z",
              "releases": [_release(rnd, version) for version in versions]}
    if rnd.random() < 0.2:
        del signed["format"]  # format 1, as metadata signed before formats were numbered
    return signed


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.0, 1.5, 2**63, 2**64 + 1, 10**4000, -(10**300), "", "7",
    "\ud800", "x" * 20_000, "1.0.0" + "-a" * 5000, "2030-05-01T12:00:00",
    "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "A" * 64, "a" * 63,
    "../etc/passwd", "2030-W01-1", "\u0663.0.0", "1.0.0\n", "\x1b[2J", [], [1, 2], {"a": 1},
    _deep(10), _deep(40), _deep(900), _blocks(200, 1),
]
#: Values near what ``format`` and ``requires`` accept: just past each limit, or mistyped.
HOSTILE_FORMATS: list[Any] = [0, 2, 3, -2, 2**62, 2**63, 10**40, "2", 2.0, [2], {"v": 2}]
HOSTILE_REQUIRES: list[Any] = [
    "service-artifacts", ["Service-Artifacts"], ["service artifacts"], ["a", "a"], [""],
    ["-a"], ["a-"], ["a..b"], ["z" * 65], ["a"] * 33, [f"f{i}" for i in range(32)],
    ["é"], ["a\x00"], ["\x1b[2J"], [None], [["a"]], [{"name": "a"}], [1], {"a": True},
]
#: Values near what ``services`` accepts: just past each limit, or mistyped.
HOSTILE_SERVICES: list[Any] = [
    "gateway", {"gateway": {}}, [None], ["gateway"], [[]], [{}],
    [{"name": f"s{i}", "version": "1.0.0", "file": f"s{i}.svc", "size": 1, "sha256": "a" * 64,
      "block_size": 1, "blocks": ["b" * 64]} for i in range(33)],
]
#: Values near what one service artifact's fields accept.
HOSTILE_SERVICE_FIELDS: dict[str, list[Any]] = {
    "name": ["Gateway", "../etc", "", "a-", "-a", "a--b", "x" * 65, "gate way", "é", 7],
    "version": ["1.0", "v1.0.0", "1.0.0" + "-a" * 100, ""],
    "file": ["../x.svc", ".hidden", "a/b", "", "x" * 256],
    "size": [0, -1, 2**63, True, 1.0, "1"],
    "block_size": [0, (64 << 20) + 1, 2**63],
    "blocks": [[], ["A" * 64], ["a" * 63], "a" * 64],
    "sha256": ["A" * 64, "a" * 63, None],
}
#: Values near what ``rollout`` accepts: just past each limit, or mistyped.
HOSTILE_ROLLOUTS: list[Any] = [
    "48h", [], {}, {"start": None}, {"start": "2030-05-10T12:00:00"},
    {"start": "9999-12-31T23:59:59-23:59", "duration": "366d", "startPercentage": 0},
    {"start": "0001-01-01T00:00:00+23:59", "duration": "1s"},
    {"start": "2030-05-10T12:00:00Z", "startPercentage": 101},
    {"start": "2030-05-10T12:00:00Z", "startPercentage": 50.5},
    {"start": "2030-05-10T12:00:00Z", "startPercentage": True},
    {"start": "2030-05-10T12:00:00Z", "duration": "367d"},
    {"start": "2030-05-10T12:00:00Z", "duration": "0s"},
    {"start": "2030-05-10T12:00:00Z", "duration": 60},
    {"start": "2030-05-10T12:00:00Z", "percent": 5},
    {"start": "x" * 20_000},
]
RELEASE_FIELDS = ["version", "date", "changes", "image", "size", "sha256", "block_size",
                  "blocks", "requires", "services", "rollout", "unknown"]
TOP_FIELDS = ["format", "channel", "serial", "issued", "expires", "releases", "unknown"]
_NEAR = {"format": HOSTILE_FORMATS, "requires": HOSTILE_REQUIRES,
         "services": HOSTILE_SERVICES, "rollout": HOSTILE_ROLLOUTS}


def _hostile_service(rnd: random.Random, release: dict[str, Any]) -> None:
    """One field of one service artifact made hostile, removed, or a service duplicated."""
    release["requires"] = list(dict.fromkeys([*release.get("requires", []),
                                              "service-artifacts"]))
    services = release.setdefault("services", [_service(rnd, "gateway")])
    target = rnd.choice(services)
    choice = rnd.choice([*HOSTILE_SERVICE_FIELDS, "delete", "duplicate", "unknown"])
    if choice == "delete":
        del target[rnd.choice(sorted(target))]
    elif choice == "duplicate":
        services.append(dict(target))
    elif choice == "unknown":
        target["unknown"] = rnd.choice(HOSTILE_VALUES)
    else:
        target[choice] = rnd.choice(HOSTILE_SERVICE_FIELDS[choice])


def _hostile_signed(rnd: random.Random) -> Any:
    """Valid content with one field made hostile (or removed), or hostile as a whole."""
    signed = _valid_signed(rnd)
    where = rnd.choice(["top", "release", "whole"])
    if where == "whole":
        return rnd.choice(HOSTILE_VALUES)
    if where == "release":
        signed["releases"] = signed["releases"] or [_release(rnd, "1.0.0")]
        if rnd.random() < 0.25:
            _hostile_service(rnd, signed["releases"][0])
            return signed
        target, field = signed["releases"][0], rnd.choice(RELEASE_FIELDS)
    else:
        target, field = signed, rnd.choice(TOP_FIELDS)
    if field == "rollout" and rnd.random() < 0.8:  # past the requirement, to the fields
        target["requires"] = list(dict.fromkeys([*target.get("requires", []),
                                                 "phased-rollout"]))
    if rnd.random() < 0.3 and field in target:
        del target[field]
    elif field in _NEAR and rnd.random() < 0.6:
        target[field] = rnd.choice(_NEAR[field])
    else:
        target[field] = rnd.choice(HOSTILE_VALUES)
    return signed


def envelope(seed: int) -> bytes:
    """Signed metadata built from ``seed``: valid, or with hostile content signed again."""
    rnd = random.Random(seed)
    signed = _valid_signed(rnd) if rnd.random() < 0.4 else _hostile_signed(rnd)
    doc = sign(signed, rnd.choice([KEYID, KEYID, KEYID.upper(), "", "k" * 5000]))
    extra = rnd.choice(["none", "none", "many", "odd"])
    if extra == "many":
        doc["signatures"] *= rnd.choice([2, 17, 500])
    elif extra == "odd":
        doc["signatures"].append(rnd.choice(HOSTILE_VALUES))
    return json.dumps(doc).encode()


DOCUMENTS = mutated(st.integers(0, 2**64 - 1).map(envelope), (*BYTE_MUTATIONS, nest),
                    rounds=2)


def test_any_metadata_document_is_believed_or_refused_with_a_short_reason() -> None:
    with ParserWorker(TARGET, ACCEPTED,
                      message_limit=2 * SHORT_MESSAGE) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("channel metadata", findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0, "no document reached the end of the checks"


def test_the_generators_reach_service_artifacts_believed_and_refused() -> None:
    """The documents fed above carry service lists a device believes, and hostile ones that
    its service parsing (not an earlier check) refuses: the new fields are really fuzzed."""
    believed, refused = 0, 0
    for seed in range(600):
        try:
            meta = verify_metadata(envelope(seed), {KEYID: KEY.verify_key}, frozenset(), NOW,
                                   3, None, channel="stable")
        except ReleaseError as exc:
            refused += ".services" in str(exc)
            continue
        believed += any(release.services for release in meta.releases)
    assert believed >= 20 and refused >= 10, (believed, refused)


def test_the_generators_reach_rollouts_believed_and_refused() -> None:
    """The documents fed above carry rollouts a device believes, and hostile ones that its
    rollout parsing refuses."""
    believed, refused = 0, 0
    for seed in range(3000):
        try:
            meta = verify_metadata(envelope(seed), {KEYID: KEY.verify_key}, frozenset(), NOW,
                                   3, None, channel="stable")
        except ReleaseError as exc:
            refused += ".rollout" in str(exc)
            continue
        believed += any(release.rollout for release in meta.releases)
    assert believed >= 100 and refused >= 10, (believed, refused)
