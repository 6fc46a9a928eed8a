"""The audit trail: chain, rotation, dedupe, crash recovery, write failures, verify."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from reconciler.audit import (
    ZERO_HASH,
    AuditReader,
    AuditRecord,
    AuditTrail,
    parse_since,
)
from reconciler.errors import AuditError
from reconciler.store import StateStore

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
PLUS_ONE = timezone(timedelta(hours=1))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 60) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path)


def open_trail(store: StateStore, clock: Clock, max_bytes: int = 4096) -> AuditTrail:
    return AuditTrail(store, max_bytes=max_bytes, clock=clock)


def fill(trail: AuditTrail, clock: Clock, count: int) -> None:
    """Append ``count`` distinct events, one minute apart."""
    for n in range(count):
        clock.tick()
        trail.event("daemon", "probe", f"probe number {n + 1}", details={"n": n + 1})


def all_lines(trail: AuditReader) -> list[tuple[Path, int, str]]:
    """(file, index in file, line) for every line of the trail."""
    out = []
    for _, path in trail.files():
        for index, line in enumerate(path.read_text().splitlines()):
            out.append((path, index, line))
    return out


def rewrite_line(path: Path, index: int, line: str | None) -> None:
    """Replace (or with ``None`` delete) one line of a trail file."""
    lines = path.read_text().splitlines()
    if line is None:
        del lines[index]
    else:
        lines[index] = line
    path.write_text("".join(f"{item}\n" for item in lines))


def get_head(store: StateStore) -> dict[str, Any]:
    """The head document the trail keeps beside itself (``audit/head.json``)."""
    value: dict[str, Any] = json.loads((store.data_dir / "audit" / "head.json").read_text())
    return value


def put_head(store: StateStore, head: dict[str, Any]) -> None:
    """Set the head by hand, as a crash or an attacker could leave it."""
    (store.data_dir / "audit" / "head.json").write_text(json.dumps(head))


def verify(store: StateStore) -> tuple[bool, int | None, str | None]:
    result = AuditReader(store).verify()
    return result.ok, result.first_bad, result.problem


# --- the chain and rotation -------------------------------------------------


def test_chain_continues_across_rotated_files(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock, max_bytes=1000)
    fill(trail, clock, 9)
    records = list(trail.records())
    assert len(trail.files()) >= 3
    assert [p.name for _, p in trail.files()][:2] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    assert [r.seq for r in records] == list(range(1, 10))
    assert records[0].prev == ZERO_HASH
    assert all(b.prev == a.hash for a, b in zip(records, records[1:], strict=False))
    assert all(p.stat().st_size <= 1000 for _, p in trail.files())
    result = trail.verify()
    assert (result.ok, result.records, result.head_seq) == (True, 9, 9)
    assert result.files == len(trail.files())


def test_head_file_follows_every_append(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    last = trail.last()
    assert last is not None
    assert get_head(store)["seq"] == 3
    assert get_head(store)["hash"] == last.hash


def test_record_hash_is_sha256_of_canonical_json_without_hash(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    record = trail.event("cli", "spec-rejected", "Spec rejected: ünknown field", details={"b": 1})
    line = trail.files()[0][1].read_text().rstrip("\n")
    raw = json.loads(line)
    digest = raw.pop("hash")
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest == hashlib.sha256(canonical.encode()).hexdigest() == record.hash
    assert AuditRecord.from_json(line) == record
    assert record.to_json() == line


def test_time_comes_from_the_injected_clock_as_utc_seconds(store: StateStore) -> None:
    moment = datetime(2026, 11, 29, 11, 0, 5, 987000, tzinfo=PLUS_ONE)
    trail = AuditTrail(store, clock=lambda: moment)
    assert trail.event("daemon", "start", "Daemon started").time == "2026-11-29T10:00:05Z"


def test_unknown_actor_is_refused_before_anything_is_written(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    with pytest.raises(ValueError, match="unknown actor 'robot'"):
        trail.event("robot", "probe", "x")
    assert trail.last() is None


def test_summary_line_shows_the_outcome_inline(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    clock.tick(5)
    reason = "Stage 1.0.1 into slot B (sda3): spec wants 1.0.1, booted 1.0.0"
    decision, _ = trail.decision("spec", "stage", reason)
    done = trail.outcome(decision.seq, "spec", "stage", "ok", 3.2)
    assert decision.summary_line(done) == (
        f"#1  2026-11-29T10:00:05Z  spec     stage     {reason}  → ok (3.2s)"
    )
    assert decision.summary_line().endswith(reason)
    waiting, _ = trail.decision("schedule", "wait", "Waiting for the window")
    assert waiting.summary_line() == (
        "#3  2026-11-29T10:00:05Z  schedule wait      Waiting for the window"
    )


# --- verify names the first bad record ---------------------------------------


@pytest.fixture
def trail20(store: StateStore, clock: Clock) -> AuditTrail:
    trail = open_trail(store, clock, max_bytes=2500)
    fill(trail, clock, 20)
    assert trail.verify().ok
    return trail


def test_changed_record_is_named_by_hash_mismatch(trail20: AuditTrail, store: StateStore) -> None:
    path, index, line = all_lines(trail20)[16]
    rewrite_line(path, index, line.replace("probe number 17", "probe number 71"))
    assert verify(store) == (False, 17, "record 17: hash mismatch (record was changed)")


def test_changed_and_rehashed_record_breaks_the_next_prev(
    trail20: AuditTrail, store: StateStore
) -> None:
    path, index, line = all_lines(trail20)[9]
    record = AuditRecord.from_json(line)
    forged = replace(record, reason="nothing happened")
    forged = replace(forged, hash=forged.computed_hash())
    rewrite_line(path, index, forged.to_json())
    ok, first_bad, problem = verify(store)
    assert (ok, first_bad) == (False, 11)
    assert problem is not None and problem.startswith("record 11: prev does not match")


def test_reordered_records_are_named(trail20: AuditTrail, store: StateStore) -> None:
    lines = all_lines(trail20)
    (path_a, index_a, line_a), (path_b, index_b, line_b) = lines[4], lines[5]
    rewrite_line(path_a, index_a, line_b)
    rewrite_line(path_b, index_b, line_a)
    assert verify(store) == (
        False,
        5,
        "record 5: expected seq 5, found 6 (records were reordered)",
    )


def test_dropped_record_is_named_as_a_seq_gap(trail20: AuditTrail, store: StateStore) -> None:
    path, index, _ = all_lines(trail20)[17]
    rewrite_line(path, index, None)
    assert verify(store) == (
        False,
        18,
        "record 18: expected seq 18, found 19 (a record was dropped)",
    )


def test_truncated_tail_is_caught_by_the_state_head(trail20: AuditTrail, store: StateStore) -> None:
    path, index, _ = all_lines(trail20)[-1]
    rewrite_line(path, index, None)
    path, index, _ = all_lines(trail20)[-1]
    rewrite_line(path, index, None)
    assert verify(store) == (
        False,
        19,
        "trail ends at seq 18 but the head is seq 20 (truncated)",
    )


def test_truncated_and_reappended_tail_differs_from_the_head(
    store: StateStore, clock: Clock, tmp_path: Path
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 5)
    head = dict(get_head(store))
    path, index, _ = all_lines(trail)[-1]
    rewrite_line(path, index, None)
    put_head(store, {"seq": 4, "hash": trail.get(4).hash})  # type: ignore[union-attr]
    AuditTrail(store, clock=clock).event("cli", "probe", "a different fifth record")
    put_head(store, head)
    assert verify(store) == (
        False,
        5,
        "record 5: hash differs from the head (the trail was truncated and rewritten)",
    )


def test_missing_middle_file_is_named(trail20: AuditTrail, store: StateStore) -> None:
    files = trail20.files()
    assert len(files) >= 3
    before = sum(1 for _ in files[0][1].read_text().splitlines())
    files[1][1].unlink()
    ok, first_bad, problem = verify(store)
    assert (ok, first_bad) == (False, before + 1)
    assert problem == "file audit-000002.jsonl is missing (the next file is audit-000003.jsonl)"


def test_garbage_line_is_named_with_file_and_line(trail20: AuditTrail, store: StateStore) -> None:
    path, index, _ = all_lines(trail20)[11]
    rewrite_line(path, index, "{not json")
    ok, first_bad, problem = verify(store)
    assert (ok, first_bad) == (False, 12)
    assert problem is not None
    assert problem.startswith(f"{path.name} line {index + 1}: unparseable line")


def test_earlier_chain_fault_is_named_before_a_later_garbage_line(
    trail20: AuditTrail, store: StateStore
) -> None:
    lines = all_lines(trail20)
    rewrite_line(lines[15][0], lines[15][1], "garbage")
    rewrite_line(lines[2][0], lines[2][1], lines[2][2].replace("number 3", "number 33"))
    assert verify(store)[:2] == (False, 3)


def test_reading_a_damaged_trail_raises_audit_error(trail20: AuditTrail, store: StateStore) -> None:
    path, index, _ = all_lines(trail20)[3]
    rewrite_line(path, index, "garbage")
    with pytest.raises(AuditError, match=r"line \d+: not a valid record"):
        list(AuditReader(store).records())


def test_records_beyond_the_head_are_flagged_beyond_the_one_a_crash_leaves(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    head = dict(get_head(store))
    fill(trail, clock, 2)
    put_head(store, head)
    ok, first_bad, problem = verify(store)
    assert (ok, first_bad) == (False, 5)
    assert problem is not None and problem.startswith(
        "trail goes to seq 5 but the head is seq 3"
    )


def test_verify_while_the_writer_appends_is_not_a_false_alarm(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)

    class Racing(AuditReader):
        def _lines(self, path: Path) -> tuple[list[bytes], bytes]:
            fill(trail, clock, 3)  # the daemon appends while verify reads
            return super()._lines(path)

    result = Racing(store).verify()
    assert result.ok, result.problem
    assert (result.records, result.head_seq) == (6, 6)


def test_verify_describes_its_verdict_in_one_line(trail20: AuditTrail, store: StateStore) -> None:
    result = trail20.verify()
    assert result.files > 1
    assert result.describe() == (
        f"OK: 20 records in {result.files} files, chain intact, head at seq 20"
    )
    path, index, line = all_lines(trail20)[16]
    rewrite_line(path, index, line.replace("number 17", "number 71"))
    assert AuditReader(store).verify().describe() == (
        "FAILED: record 17: hash mismatch (record was changed)"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("details"), "missing or unknown fields: details"),
        (lambda r: r.update(extra=1), "missing or unknown fields: extra"),
        (lambda r: r.update(time="yesterday"), "wrong type or value in: time"),
        (lambda r: r.update(seq="3", kind="note"), "wrong type or value in: seq, kind"),
    ],
)
def test_from_json_says_what_is_wrong_with_a_line(
    store: StateStore, clock: Clock, change: Any, message: str
) -> None:
    raw = json.loads(open_trail(store, clock).event("cli", "probe", "x").to_json())
    change(raw)
    with pytest.raises(ValueError, match=message):
        AuditRecord.from_json(json.dumps(raw))


# --- dedupe of repeated passes ----------------------------------------------


def test_repeated_decision_is_counted_not_appended(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    first, repeated = trail.decision("schedule", "wait", "Waiting for the window at 02:00")
    assert not repeated
    for _ in range(3):
        again, repeated = trail.decision("resync", "wait", "Waiting for the window at 02:00")
        assert repeated and again == first
    assert [r.seq for r in trail.records()] == [1]
    assert trail.repeats() == (3, 1)


def test_new_decision_is_appended_and_resets_the_counter(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    trail.decision("schedule", "wait", "Waiting for the window at 02:00")
    trail.decision("schedule", "wait", "Waiting for the window at 02:00")
    record, repeated = trail.decision("schedule", "stage", "Window open: stage 1.0.1")
    assert (record.seq, repeated) == (2, False)
    assert trail.repeats() == (0, 2)
    other, repeated = trail.decision("schedule", "wait", "Waiting for the window at 02:00")
    assert (other.seq, repeated) == (3, False)


def test_repeat_detection_survives_a_restart(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    decision, _ = trail.decision("health", "probe", "Trial of 1.0.1: probing health")
    trail.event("daemon", "start", "something else happened in between")
    again, repeated = open_trail(store, clock).decision("health", "probe", decision.reason)
    assert repeated and again == decision


def test_outcome_of_a_repeated_decision_is_recorded_only_when_it_changes(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    decision, _ = trail.decision("health", "probe", "Trial of 1.0.1: probing health")
    assert trail.outcome(decision.seq, "health", "probe", "failed: unreachable", 2.0)
    for _ in range(20):
        trail.decision("health", "probe", "Trial of 1.0.1: probing health")
        assert trail.outcome(decision.seq, "health", "probe", "failed: unreachable", 2.0) is None
    trail.decision("health", "probe", "Trial of 1.0.1: probing health")
    changed = trail.outcome(decision.seq, "health", "probe", "failed: 503 gateway failed", 0.1)
    assert changed is not None and changed.decision == decision.seq
    reopened = open_trail(store, clock)
    assert (
        reopened.outcome(decision.seq, "health", "probe", "failed: 503 gateway failed", 0.1) is None
    )
    outcomes = [r.outcome for r in trail.records(action="probe") if r.kind == "outcome"]
    assert outcomes == ["failed: unreachable", "failed: 503 gateway failed"]


def test_outcome_of_a_new_decision_is_always_appended(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    first, _ = trail.decision("spec", "stage", "Stage 1.0.1")
    assert trail.outcome(first.seq, "spec", "stage", "ok", 3.0) is not None
    second, _ = trail.decision("spec", "reboot", "Reboot into slot B")
    assert trail.outcome(second.seq, "spec", "reboot", "ok", 3.0) is not None
    assert [r.kind for r in trail.records()] == ["decision", "outcome"] * 2


def test_events_are_never_deduped(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    for _ in range(3):
        trail.event("cli", "spec-rejected", "specs/a.yaml line 3: unknown field")
    assert len(list(trail.records())) == 3


# --- crash recovery -----------------------------------------------------------


def test_partial_trailing_line_is_cut_on_open_and_recorded(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    path = trail.files()[-1][1]
    good = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(b'{"action":"reboot","actor":"spec","dec')
    assert len(list(AuditReader(store).records())) == 3
    assert AuditReader(store).verify().ok
    reopened = open_trail(store, clock)
    raw = path.read_bytes()
    assert raw[good:].startswith(b'{"action":"audit-tail-cut"')  # cut, then recorded
    cut = reopened.get(4)
    assert cut is not None and (cut.kind, cut.action) == ("event", "audit-tail-cut")
    assert cut.reason.startswith(f"dropped the last 38 bytes of {path.name}")
    assert reopened.opened_with == [cut]
    assert reopened.event("daemon", "start", "after the crash").seq == 5
    assert reopened.verify().ok
    assert open_trail(store, clock).opened_with == []  # recorded once


def test_readers_skip_a_line_the_writer_has_not_finished(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 2)
    with trail.files()[-1][1].open("ab") as handle:
        handle.write(b'{"seq":3,')
        reader = AuditReader(store)
        last = reader.last()
        assert last is not None and last.seq == 2
        assert reader.get(2) == last and reader.get(3) is None


def test_record_written_but_head_not_moved_is_accepted_on_open(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    head = dict(get_head(store))
    fourth = trail.event("daemon", "stage", "written just before the power cut")
    put_head(store, head)  # the head update never happened
    assert AuditReader(store).verify().ok
    reopened = open_trail(store, clock)
    assert get_head(store)["seq"] == 4
    assert get_head(store)["hash"] == fourth.hash
    assert reopened.event("daemon", "start", "next").prev == fourth.hash


def test_a_changed_record_beyond_the_head_is_sealed_not_continued(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 2)
    head = dict(get_head(store))
    trail.event("daemon", "stage", "written just before the power cut")
    put_head(store, head)
    path, index, line = all_lines(trail)[-1]
    rewrite_line(path, index, line.replace("power cut", "power loss"))
    reopened = open_trail(store, clock)
    seal = reopened.last()
    assert seal is not None and seal.action == "re-anchor" and seal.seq == 4
    assert "ends at seq 3 but the head (seq 2)" in seal.reason
    assert [f["name"] for f in seal.details["sealed"]] == [path.name]
    assert seal.prev == AuditRecord.from_json(all_lines(trail)[2][2]).hash


def test_a_truncated_trail_is_sealed_and_the_chain_goes_on(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock, max_bytes=100_000)
    fill(trail, clock, 4)
    path, index, _ = all_lines(trail)[-1]
    rewrite_line(path, index, None)
    rewrite_line(path, index - 1, None)
    sealed_bytes = path.read_bytes()
    reopened = open_trail(store, clock)
    reopened.decision("daemon", "rollback", "the trial failed")
    assert path.read_bytes() == sealed_bytes, "a damaged trail is kept exactly as found"
    assert [p.name for _, p in reopened.files()] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    verified = AuditReader(store).verify()
    assert verified.ok, verified.problem
    assert verified.records == 2 and verified.head_seq == 4
    assert len(verified.reanchors) == 1 and verified.reanchors[0][0] == 3
    assert "ends at seq 2 but the head (seq 4)" in verified.describe()
    assert [r.seq for r in AuditReader(store).records()] == [1, 2, 3, 4]


def test_a_garbage_line_in_the_live_file_is_sealed_and_reads_go_on(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock, max_bytes=100_000)
    fill(trail, clock, 5)
    path, index, _ = all_lines(trail)[2]
    rewrite_line(path, index, "{not a record")
    reopened = open_trail(store, clock)
    seal = reopened.last()
    assert seal is not None and seal.seq == 6 and "line 3: not a valid record" in seal.reason
    reopened.event("daemon", "probe", "after the seal")
    assert [r.seq for r in AuditReader(store).records()] == [1, 2, 4, 5, 6, 7]
    assert AuditReader(store).verify().ok


def test_a_sealed_file_changed_after_the_seal_fails_verify(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock, max_bytes=100_000)
    fill(trail, clock, 3)
    path, index, _ = all_lines(trail)[-1]
    rewrite_line(path, index, None)
    open_trail(store, clock).event("daemon", "probe", "after the seal")
    rewrite_line(path, 0, None)  # someone edits the kept evidence
    ok, first_bad, problem = verify(store)
    assert (ok, first_bad) == (False, 3)
    assert problem == "sealed file audit-000001.jsonl changed since the seal at #3"
    (path.parent / "audit-000001.jsonl").unlink()
    assert verify(store)[2] == "sealed file audit-000001.jsonl is missing since the seal at #3"


def test_damage_after_a_seal_is_sealed_again(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock, max_bytes=100_000)
    fill(trail, clock, 3)
    path, index, _ = all_lines(trail)[-1]
    rewrite_line(path, index, None)
    second = open_trail(store, clock)
    fill(second, clock, 2)
    path2, index2, _ = all_lines(second)[-1]
    rewrite_line(path2, index2, None)
    third = open_trail(store, clock)
    seals = [r for r in third.records() if r.action == "re-anchor"]
    assert [s.seq for s in seals] == [3, 5]
    assert len(third.files()) == 3
    verified = AuditReader(store).verify()
    assert verified.ok and verified.head_seq == 5, verified.problem


# --- write failures ------------------------------------------------------------

_FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    from datetime import datetime, UTC
    from pathlib import Path
    from reconciler.audit import AuditTrail
    from reconciler.errors import AuditError
    from reconciler.store import StateStore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    data = Path(sys.argv[1])
    trail = AuditTrail(StateStore(data), clock=lambda: datetime(2026, 11, 29, tzinfo=UTC))
    path = trail.files()[-1][1]
    limit = path.stat().st_size + 40  # room for a part of the next line only
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    result = {}
    try:
        trail.event("daemon", "stage", "x" * 300)
    except AuditError as exc:
        result["error"] = str(exc)
    result["size_after_error"] = path.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    result["next_seq"] = trail.event("daemon", "stage", "space again").seq
    print(json.dumps(result))
    """
)


def test_disk_full_raises_audit_error_and_leaves_the_trail_valid(
    store: StateStore, clock: Clock, tmp_path: Path
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    size = trail.files()[-1][1].stat().st_size
    run = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(run.stdout)
    assert "audit: cannot write record 4 to" in result["error"]
    assert "audit-000001.jsonl: File too large; the trail was left unchanged" in result["error"]
    assert result["size_after_error"] == size
    assert result["next_seq"] == 4
    verified = AuditReader(store).verify()
    assert (verified.ok, verified.records, verified.head_seq) == (True, 4, 4)


def test_unwritable_head_raises_audit_error_naming_the_head_file(
    store: StateStore, clock: Clock, tmp_path: Path
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 1)
    head = store.data_dir / "audit" / "head.json"
    head.unlink()
    head.mkdir()  # a head file that cannot be replaced
    with pytest.raises(AuditError, match=r"cannot move the head to record 2 in .*head\.json"):
        trail.event("daemon", "probe", "head cannot move")


def test_the_state_file_does_not_hold_the_head(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    assert not store.path.exists(), "the trail writes its own head, never the state file"
    store.path.write_text("{broken")
    reopened = open_trail(store, clock)
    reopened.event("daemon", "probe", "the head moves on")
    verified = AuditReader(store).verify()
    assert (verified.ok, verified.head_seq, verified.reanchors) == (True, 4, ())


def test_a_head_kept_in_an_old_state_file_moves_to_the_head_file(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    head = get_head(store)
    (store.data_dir / "audit" / "head.json").unlink()
    store.path.write_text(json.dumps({"schema": 2, "audit": head}))
    assert AuditReader(store).head() == (3, head["hash"])
    reopened = open_trail(store, clock)
    assert get_head(store)["seq"] == 3 and reopened.last() == trail.last()
    assert AuditReader(store).verify().reanchors == ()


@pytest.mark.parametrize("loss", ["head file lost", "head file damaged", "head left behind"])
def test_a_lost_head_is_re_anchored_with_an_event_that_verify_reports(
    store: StateStore, clock: Clock, loss: str
) -> None:
    trail = open_trail(store, clock)
    fill(trail, clock, 3)
    head_file = store.data_dir / "audit" / "head.json"
    if loss == "head file lost":
        head_file.unlink()
    elif loss == "head file damaged":
        head_file.write_bytes(b"\x00garbage")
    else:  # two records appended while the head could not move (a full disk)
        head = get_head(store)
        fill(trail, clock, 2)
        put_head(store, head)
    reopened = open_trail(store, clock)
    last = reopened.last()
    assert last is not None and last.action == "re-anchor" and last.kind == "event"
    assert "sealed" not in last.details
    verified = AuditReader(store).verify()
    assert verified.ok, verified.problem
    assert [seq for seq, _ in verified.reanchors] == [last.seq]
    assert "re-anchored at #" in verified.describe()
    assert verified.to_dict()["reanchors"][0]["seq"] == last.seq


# --- reading and filtering ------------------------------------------------------


def test_records_filter_by_since_and_action(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock, max_bytes=1200)
    for action in ["stage", "reboot", "probe", "confirm", "probe"]:
        clock.tick(600)
        trail.event("daemon", action, f"{action} happened")
    since = T0 + timedelta(minutes=20)
    assert [r.seq for r in trail.records(since=since)] == [2, 3, 4, 5]
    assert [r.seq for r in trail.records(action="probe")] == [3, 5]
    assert [r.seq for r in trail.records(since=since, action="probe")] == [3, 5]
    local = datetime(2026, 11, 29, 11, 40, tzinfo=PLUS_ONE)
    assert [r.seq for r in trail.records(since=local)] == [4, 5]


def test_get_and_last_find_records_across_files(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock, max_bytes=900)
    assert trail.last() is None and trail.get(1) is None
    fill(trail, clock, 6)
    assert len(trail.files()) > 1
    assert trail.get(4).reason == "probe number 4"  # type: ignore[union-attr]
    assert trail.last().seq == 6  # type: ignore[union-attr]
    assert trail.get(7) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:00", datetime(2026, 11, 29, 10, 0, tzinfo=UTC)),
        ("2026-11-29T10:00:00+01:00", datetime(2026, 11, 29, 9, 0, tzinfo=UTC)),
        ("2026-11-29T10:00:05Z", datetime(2026, 11, 29, 10, 0, 5, tzinfo=UTC)),
        ("30m", datetime(2026, 12, 1, 11, 30, tzinfo=UTC)),
        ("1h", datetime(2026, 12, 1, 11, 0, tzinfo=UTC)),
        ("2d", datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),
        ("1h30m", datetime(2026, 12, 1, 10, 30, tzinfo=UTC)),  # as a spec writes durations
        ("1d12h", datetime(2026, 11, 30, 0, 0, tzinfo=UTC)),
    ],
)
def test_parse_since_reads_times_and_ages(text: str, expected: datetime) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since(text, now) == expected


@pytest.mark.parametrize("text", ["yesterday", "1y", "-2h", "", "2026-13-01", "400d", "0m"])
def test_parse_since_rejects_other_text_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected a time like 2026-11-29T10:00"):
        parse_since(text, datetime(2026, 12, 1, tzinfo=UTC))


# --- retention: pruning behind a checkpoint ------------------------------------------------


def _pruning_trail(store: StateStore, clock: Clock, **retention: Any) -> AuditTrail:
    from reconciler.audit import Retention

    return AuditTrail(store, max_bytes=1200, clock=clock, retention=Retention(**retention))


def test_pruning_by_size_keeps_a_trail_that_verifies_from_its_checkpoint(
    store: StateStore, clock: Clock
) -> None:
    trail = _pruning_trail(store, clock, max_bytes=3000)
    fill(trail, clock, 40)
    names = [p.name for _, p in trail.files()]
    assert names[0] != "audit-000001.jsonl", names
    assert sum(p.stat().st_size for _, p in trail.files()) < 3000 + 2 * 1200
    head = get_head(store)
    first = list(trail.records())[0]
    assert head["checkpoint"]["seq"] == first.seq - 1 and head["checkpoint"]["hash"] == first.prev
    pruned = [r for r in trail.records() if r.action == "audit-pruned"]
    assert pruned and pruned[-1].details["start"]["seq"] == head["checkpoint"]["seq"] + 1
    verified = AuditReader(store).verify()
    assert verified.ok, verified.problem
    assert verified.checkpoint == (head["checkpoint"]["seq"], head["checkpoint"]["time"])
    assert f"records up to #{head['checkpoint']['seq']} pruned" in verified.describe()
    assert verified.to_dict()["checkpoint"]["seq"] == head["checkpoint"]["seq"]
    assert AuditReader(store).get(first.seq) == first
    assert AuditReader(store).get(1) is None


def test_pruning_by_age_removes_only_files_older_than_kept(store: StateStore,
                                                          clock: Clock) -> None:
    trail = _pruning_trail(store, clock, days=1)
    fill(trail, clock, 10)  # one minute apart: nothing is a day old
    assert trail.files()[0][1].name == "audit-000001.jsonl"
    clock.tick(3 * 86400)
    fill(trail, clock, 10)
    records = list(trail.records())
    assert all(r.at >= T0 + timedelta(days=3) for r in records[1:]), records[0]
    assert AuditReader(store).verify().ok


def test_a_prune_cut_off_before_the_files_went_verifies_and_is_finished_on_open(
    store: StateStore, clock: Clock
) -> None:
    trail = open_trail(store, clock, max_bytes=1200)
    fill(trail, clock, 20)
    files = trail.files()
    first_kept = _first(files[2][1])
    head = get_head(store)
    head["checkpoint"] = {"seq": first_kept.seq - 1, "hash": first_kept.prev,
                          "time": "2026-11-29T10:00:00Z", "file": files[2][0]}
    put_head(store, head)  # the checkpoint is written; the power went before the unlinks
    files[0][1].unlink()  # one of the two went
    verified = AuditReader(store).verify()
    assert verified.ok and verified.checkpoint is not None, verified.problem
    open_trail(store, clock, max_bytes=1200)
    assert [n for n, _ in trail.files()][0] == files[2][0]
    assert AuditReader(store).verify().ok


def test_a_kept_file_removed_by_hand_behind_a_checkpoint_fails_verify(
    store: StateStore, clock: Clock
) -> None:
    trail = _pruning_trail(store, clock, max_bytes=3000)
    fill(trail, clock, 40)
    trail.files()[0][1].unlink()
    ok, _, problem = verify(store)
    assert not ok and problem is not None
    assert "expected seq" in problem or "prev does not match" in problem, problem


def test_a_sealed_trail_is_pruned_like_any_other(store: StateStore, clock: Clock) -> None:
    trail = open_trail(store, clock, max_bytes=1200)
    fill(trail, clock, 5)
    path, index, _ = all_lines(trail)[-1]
    rewrite_line(path, index, None)  # damage: sealed on the next open
    sealed = _pruning_trail(store, clock, max_bytes=3000)
    fill(sealed, clock, 40)
    verified = AuditReader(store).verify()
    assert verified.ok and verified.checkpoint is not None, verified.problem


def _first(path: Path) -> AuditRecord:
    return AuditRecord.from_json(path.read_text().splitlines()[0])


# --- a follower reads what is new, not the whole trail ------------------------------------


def test_records_after_a_seq_parse_only_the_newer_lines(
    store: StateStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``apply`` does while it waits: it asks for the records after the one it
    started from, several times a second. Older files are skipped and older lines are
    told by their last fields: only each file's first line (where it starts) and the
    newer records are parsed, however long the trail."""
    trail = open_trail(store, clock, max_bytes=4096)
    fill(trail, clock, 400)
    assert len(trail.files()) > 10
    parsed: list[str] = []
    real = AuditRecord.from_json

    def counting(line: Any) -> AuditRecord:
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(AuditRecord, "from_json", staticmethod(counting))
    head = trail.last()
    assert head is not None
    parsed.clear()
    newer = list(AuditReader(store).records(after=head.seq - 3))
    assert [r.seq for r in newer] == [head.seq - 2, head.seq - 1, head.seq]
    files = len(trail.files())
    assert len(parsed) <= files + 3, f"{len(parsed)} lines parsed for 3 new records"
