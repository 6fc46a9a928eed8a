"""Inbox request files: what the CLI writes reads back; anything else is refused, briefly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.inbox import INBOX, MAX_REQUEST_BYTES, parse_request, pending, read_request, submit


@pytest.mark.parametrize("kind, fields", [
    ("pin", {"version": "1.0.1", "reboot": "ask"}), ("reboot", {"answer": "now"}),
    ("stop", {}), ("cancel", {}), ("resume", {}), ("confirm", {}), ("rollback", {}),
])
def test_every_request_the_cli_submits_reads_back_whole(tmp_path: Path, kind: str,
                                                        fields: dict[str, str]) -> None:
    path = submit(tmp_path, kind, **fields)
    request = read_request(path)
    assert request["kind"] == kind and {**request, **fields} == request
    assert pending(tmp_path) == [(path, request)]


@pytest.mark.parametrize("raw, reason", [
    (b'{"kind": ["pin"]}', 'unknown kind a JSON array'),
    (b'{"kind": "format-disk"}', 'unknown kind "format-disk"'),
    (b'{"kind": "pin"}', "'version' must be a semantic version, not null"),
    (b'{"kind": "pin", "version": 101}', "'version' must be a semantic version, not 101"),
    (b'{"kind": "pin", "version": "1.0.1\\n"}', 'not "1.0.1\\n"'),
    (b'{"kind": "reboot", "answer": "later"}', "'answer' must be one of next-boot, now"),
    (b'{"kind": "stop", "at": "now"}', "'at' must be a time in seconds"),
    (b'{"kind": "stop", "at": true}', "'at' must be a time in seconds, not true"),
    (b'{"kind": "stop", "at": NaN}', "not JSON"),
    (b'{"kind": "stop", "by": 7}', "'by' must be a short string, not 7"),
    (b'{"kind": "stop", "x": ' + b"[" * 9 + b"]" * 9 + b"}", "nested more than 8 levels deep"),
    (b'{"kind": "stop", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "larger than"),
    (b"[" * 60_000, "nested more than 8 levels deep"),
    (b'"stop"', "not a JSON object"),
    (b"\xff\xfe", "not JSON"),
])
def test_a_malformed_request_is_a_short_state_error_naming_the_file(raw: bytes,
                                                                    reason: str) -> None:
    with pytest.raises(StateError) as caught:
        parse_request(raw, "0001-pin.json")
    message = str(caught.value)
    assert message.startswith("inbox request 0001-pin.json: ") and reason in message
    assert len(message) < 250


def test_a_long_value_is_quoted_to_eighty_characters() -> None:
    raw = json.dumps({"kind": "pin", "version": "9" * 10_000}).encode()
    with pytest.raises(StateError, match=r'not "9{80}"\.\.\.$'):
        parse_request(raw)


def test_a_request_file_larger_than_the_limit_is_skipped_unread(tmp_path: Path) -> None:
    good = submit(tmp_path, "confirm")
    huge = tmp_path / INBOX / "00000000000000000000-stop.json"
    huge.write_bytes(b'{"kind": "stop", "by": "' + b"x" * MAX_REQUEST_BYTES + b'"}')
    with pytest.raises(StateError, match="larger than 65536 bytes"):
        read_request(huge)
    assert [path for path, _ in pending(tmp_path)] == [good]


def test_a_quoted_value_stays_short_however_many_escapes_it_needs() -> None:
    from reconciler.inbox import _quoted
    shown = _quoted("\u0083\u0000" * 200)
    assert len(shown) <= 80 + len('""...') and shown.endswith("...")
    assert _quoted("now") == '"now"'
