"""Channel metadata is hostile until parsed: limits, field types, and short reasons."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from reconciler.errors import ConfigError, ReleaseError
from reconciler.release.keys import keyid_of, load_public_key
from reconciler.release.metadata import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_SIGNATURES,
    canonical_json,
    verify_metadata,
)

KEY = SigningKey(bytes(range(32)))
KEYID = keyid_of(KEY.verify_key)
NOW = datetime(2030, 5, 10, tzinfo=UTC)
BLOCK = 1024


def _release(**changes: Any) -> dict[str, Any]:
    release = {"version": "1.0.0", "date": "2030-05-01", "changes": ["first"],
               "image": "kruxos-1.0.0.img", "size": 2 * BLOCK, "sha256": "a" * 64,
               "block_size": BLOCK, "blocks": ["b" * 64, "c" * 64]}
    release.update(changes)
    return release


def _signed(**changes: Any) -> dict[str, Any]:
    signed = {"format": 1, "channel": "stable", "serial": 5, "issued": "2030-05-01T12:00:00Z",
              "expires": "2030-05-31T12:00:00Z", "releases": [_release()]}
    signed.update(changes)
    return signed


def _document(signed: Any, signatures: int = 1) -> bytes:
    sig = base64.b64encode(KEY.sign(canonical_json(signed)).signature).decode()
    entries = [{"keyid": KEYID, "sig": sig}] * signatures
    return json.dumps({"signed": signed, "signatures": entries}).encode()


def _verify(raw: bytes) -> None:
    verify_metadata(raw, {KEYID: KEY.verify_key}, frozenset(), NOW, None, None)


def _refusal(raw: bytes) -> str:
    with pytest.raises(ReleaseError) as caught:
        _verify(raw)
    return str(caught.value)


def test_the_document_these_tests_damage_is_accepted() -> None:
    _verify(_document(_signed()))


def test_a_document_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    raw = b"[" * (MAX_BYTES + 1)
    assert "more than the 16777216 accepted" in _refusal(raw)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_nesting_deeper_than_the_limit_is_refused_by_name(depth: int) -> None:
    deep: Any = 1
    for _ in range(depth - 2):
        deep = [deep]
    raw = json.dumps({"signed": _signed(unknown=deep), "signatures": []}).encode() \
        if depth < 500 else b'{"signed": ' + b"[" * depth + b"]" * depth + b"}"
    assert f"nested more than {MAX_DEPTH} levels deep" in _refusal(raw)


def test_metadata_as_deep_as_the_limit_is_still_read() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH - 2):  # the envelope and 'signed' are two levels
        deep = [deep]
    _verify(_document(_signed(unknown=deep)))


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_numbers_a_signer_cannot_have_written_are_not_json(text: bytes) -> None:
    raw = b'{"signed": {"serial": ' + text + b'}, "signatures": []}'
    assert "not valid JSON" in _refusal(raw)


def test_a_lone_surrogate_in_signed_text_is_refused_not_a_crash() -> None:
    raw = _document(_signed()).replace(b'"first"', b'"\\ud800"')
    assert "lone surrogate" in _refusal(raw)


def test_more_signatures_than_checked_are_refused() -> None:
    message = _refusal(_document(_signed(), signatures=MAX_SIGNATURES + 1))
    assert f"more than the {MAX_SIGNATURES} checked" in message


def test_a_huge_unknown_keyid_is_quoted_short_and_reasons_are_capped() -> None:
    entries = [{"keyid": "k" * 100_000, "sig": "AAAA"}] * 10
    raw = json.dumps({"signed": _signed(), "signatures": entries}).encode()
    message = _refusal(raw)
    assert "malformed signature entry" in message and "and 6 more" in message
    assert len(message) < 1000


@pytest.mark.parametrize("changes, reason", [
    ({"serial": "7"}, "serial: expected an integer, got '7'"),
    ({"serial": -1}, "serial: -1 is out of range"),
    ({"serial": 10**4000}, "serial: a number of 4001 digits is out of range"),
    ({"serial": True}, "serial: expected an integer, got true"),
    ({"format": True}, "format true is not supported"),
    ({"format": 1.0}, "format 1.0 is not supported"),
    ({"channel": ["stable"]}, "channel: expected a string, got a list of 1 items"),
    ({"channel": "s" * 129}, "channel: 'ssssssss"),
    ({"channel": ""}, "channel: '' is not a name (1 to 128 printable characters)"),
    ({"channel": "stable\x1b[2J"}, "channel: 'stable\\x1b[2J' is not a name"),
    ({"issued": "x" * 10_000}, "issued: 'xxxxxxxx"),
    ({"expires": "9999-12-31T23:59:59-23:59"}, "expires: '9999-12-31T23:59:59-23:59' is out"),
])
def test_a_wrong_top_level_field_is_named_with_a_short_quote(changes: dict[str, Any],
                                                            reason: str) -> None:
    message = _refusal(_document(_signed(**changes)))
    assert reason in message and len(message) < 300


@pytest.mark.parametrize("changes, reason", [
    ({"size": "2048"}, "size: expected an integer, got '2048'"),
    ({"size": -2048}, "size: -2048 is out of range"),
    ({"size": 0}, "size: 0 is out of range"),
    ({"size": 2**63}, "size: 9223372036854775808 is out of range"),
    ({"block_size": 1 << 30}, "block_size: 1073741824 is out of range"),
    ({"sha256": "a" * 63}, "lowercase hex SHA-256 digests"),
    ({"sha256": "A" * 64}, "lowercase hex SHA-256 digests"),
    ({"blocks": ["b" * 64]}, "blocks: 1 hashes for 2048 bytes in blocks of 1024"),
    ({"blocks": [1, 2]}, "lowercase hex SHA-256 digests"),
    ({"changes": [{"a": 1}]}, "changes: expected a list of lines of printable text"),
    ({"changes": ["ok", "\x1b]0;owned\x07"]}, "changes: expected a list of lines of printable"),
    ({"changes": ["c" * 1001]}, "at most 1000 characters each"),
    ({"date": "20300501"}, "date: '20300501' is not YYYY-MM-DD"),
    ({"version": "1.0.0" + "-a" * 5000}, "longer than 128 characters"),
    ({"version": "\u0663.0.0"}, "is not major.minor.patch"),
    ({"version": "1\u0663.0.0"}, "is not major.minor.patch"),
    ({"version": "1.0.0\n"}, "is not major.minor.patch"),
    ({"image": "i" * 300}, "must be a plain file name"),
])
def test_a_wrong_release_field_is_named_with_a_short_quote(changes: dict[str, Any],
                                                          reason: str) -> None:
    message = _refusal(_document(_signed(releases=[_release(**changes)])))
    assert reason in message and "releases[0]." in message and len(message) < 300


def test_a_huge_release_with_matching_blocks_is_still_read() -> None:
    size = 100 * BLOCK + 1
    blocks = [hashlib.sha256(bytes([i % 256])).hexdigest() for i in range(101)]
    _verify(_document(_signed(releases=[_release(size=size, blocks=blocks)])))


@pytest.mark.parametrize("content", [b"\xff" * 64 + b"\n", b"a" * 10_000, b"zz" * 32, b"ab" * 31])
def test_a_key_file_that_is_not_32_hex_bytes_is_a_config_error(tmp_path: Path,
                                                               content: bytes) -> None:
    path = tmp_path / "key.pub"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{path}: ") as caught:
        load_public_key(path)
    assert len(str(caught.value)) < len(str(path)) + 100
