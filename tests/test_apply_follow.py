"""How ``kruxos update apply`` reads the trail while it follows its staging: by the id of
its own request and by outcome codes, never by the words of a reason or an outcome."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from reconciler.actions import Nothing
from reconciler.audit import AuditRecord
from reconciler.cli.update import _stage_problem, _taken_over

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
