"""How ``kruxos update apply`` reads the trail while it follows its staging: by the id of
its own request and by outcome codes, never by the words of a reason or an outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.actions import Nothing
from reconciler.audit import AuditRecord
from reconciler.cli.update import _since_pin, _stage_problem, _taken_over, _wait_for_action

PIN = "00000001764590000000000000-pin.json"


def _record(seq: int, kind: str, action: str, reason: str = "", outcome: str | None = None,
            **details: Any) -> AuditRecord:
    return AuditRecord(seq=seq, time="2026-12-02T12:00:00Z", kind=kind, actor="cli",
                       action=action, reason=reason, spec_revision=None, spec_file=None,
                       observed=None, outcome=outcome, duration_s=None, decision=None,
                       details=details)


class _Link:
    def busy(self) -> bool:
        return True

    pid = 42


_VIEW = SimpleNamespace(action=Nothing("idle"))


def test_its_own_pin_is_found_by_request_id_whatever_the_reason_says() -> None:
    records = [_record(5, "decision", "pin", "pinned at the device", request=PIN,
                       version="1.0.1"),
               _record(6, "decision", "pin", "pinned again", request="b.json", version="1.0.1"),
               _record(7, "decision", "cancel", "staging cancelled", request="other.json")]
    assert _taken_over(records, PIN, "1.0.1") == (
        "1.0.1 was not staged: a later request at the device took over (#7 cancel: staging "
        "cancelled)")
    # another command's pin with the same words is not this one's
    assert _taken_over(records, "another-pin.json", "1.0.1") is None
    # a later pin of another version takes over
    other = [records[0], _record(8, "decision", "pin", "pinned", request="c.json",
                                 version="1.0.2")]
    assert "#8 pin" in (_taken_over(other, PIN, "1.0.1") or "")


def test_a_stopped_staging_is_followed_a_refused_one_ends_an_unavailable_one_keeps_the_pin(
        ) -> None:
    stopped = [_record(7, "outcome", "stage", outcome="failed: whatever it says",
                       code="stopped")]
    assert _stage_problem(_Link(), stopped, "1.0.1", _VIEW) is None  # type: ignore[arg-type]
    refused = [_record(7, "outcome", "stage", outcome="failed: block 3: sha256 mismatch",
                       code="refused")]
    assert _stage_problem(_Link(), refused, "1.0.1", _VIEW) == (  # type: ignore[arg-type]
        "update refused: block 3: sha256 mismatch", "refused")
    down = [_record(7, "outcome", "stage", outcome="failed: channel: connection refused",
                    code="unavailable")]
    message, code = _stage_problem(_Link(), down, "1.0.1", _VIEW)  # type: ignore[arg-type,misc]
    assert code == "unavailable" and "the pin holds" in message, message


def test_an_outcome_written_before_codes_is_read_from_its_text() -> None:
    old = _record(7, "outcome", "stage", outcome="failed: block 3: sha256 mismatch")
    assert old.code == "failed"
    assert _record(8, "outcome", "stage", outcome="ok: staged").code == "ok"
    assert _record(9, "decision", "stage", "Stage 1.0.1").code is None


class _Trail:
    """A trail as the command sees it: the records after a seq, asked for again and again."""

    def __init__(self, records: list[AuditRecord]) -> None:
        self.records = records
        self.asked: list[int] = []

    def records_after(self, seq: int) -> Iterator[AuditRecord]:
        self.asked.append(seq)
        return iter([r for r in self.records if r.seq > seq])


def test_a_wait_that_sees_no_outcome_exits_2_unavailable_never_0(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The reboot decided before the command started, and its outcome, are not its own.
    trail = _Trail([_record(3, "decision", "reboot"), _record(4, "outcome", "reboot",
                                                              outcome="ok", code="ok"),
                    _record(6, "decision", "reboot")])
    with pytest.raises(SystemExit) as ended:
        _wait_for_action(trail, 5, "reboot", as_json=True, timeout=0.3)  # type: ignore[arg-type]
    assert ended.value.code == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["code"] == "unavailable", doc
    assert "recorded no reboot within 0.3s" in doc["error"]["message"], doc
    assert trail.asked and set(trail.asked) == {5}  # always from its own start


def test_a_wait_returns_at_the_outcome_after_its_start() -> None:
    trail = _Trail([_record(6, "decision", "reboot"),
                    _record(7, "outcome", "reboot", outcome="ok", code="ok")])
    _wait_for_action(trail, 5, "reboot", timeout=30)  # type: ignore[arg-type]
    assert trail.asked == [5]


def test_a_block_decided_before_the_pin_was_taken_is_not_this_stagings_refusal() -> None:
    """After a rollback by hand the device blocks the version it left; a person's apply of
    that version retries it. A pass that recorded the block after the command began but
    before its pin was taken (a busy machine) must not read as the pin's refusal."""
    records = [_record(5, "decision", "blocked", "1.0.1 rolled back (kruxos update rollback);"
                       " not retried until the desired version changes"),
               _record(6, "decision", "pin", "pinned at the device", request=PIN,
                       version="1.0.1"),
               _record(7, "decision", "stage", "stage 1.0.1")]
    mine = _since_pin(records, PIN)
    assert [r.seq for r in mine] == [7]
    assert _stage_problem(_Link(), mine, "1.0.1", _VIEW) is None  # type: ignore[arg-type]
    blocked_after = [*records, _record(8, "decision", "blocked", "a downgrade")]
    assert _stage_problem(_Link(), _since_pin(blocked_after, PIN), "1.0.1",  # type: ignore[arg-type]
                          _VIEW) == ("update refused: a downgrade", "refused")
    assert _since_pin(records[:1], PIN) == []  # the pin not yet recorded: nothing is its
