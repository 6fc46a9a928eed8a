"""The audit trail: every decision and outcome, hash-chained, fsynced before acting.

The trail is a directory of JSON-lines files (``audit-000001.jsonl``, ...) that
rotate at ``max_bytes``. Each record carries the hash of the one before it, so
a changed, dropped or reordered record breaks the chain; the head of the chain
(``{"seq", "hash"}``) is also kept in the state document (section ``audit``) so
a truncated tail is caught too. A decision is written and fsynced *before* its
action runs: if it cannot be written, :class:`AuditError` stops the action.

:class:`AuditReader` only reads (``kruxos audit list/show/verify``, safe while
the daemon appends); :class:`AuditTrail` is the one writer and repairs a crash
when it opens. The writer expects its caller to hold the data-dir lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.durable import create_file, fsync_dir, make_dirs
from reconciler.errors import AuditError, KruxosError
from reconciler.redact import redact, redact_json
from reconciler.store import StateStore, with_reserve

AUDIT_DIR = "audit"
SECTION = "audit"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
ZERO_HASH = "0" * 64
KINDS = frozenset({"decision", "outcome", "event"})
#: The action of the event that re-anchors the head after the state file lost it.
REANCHOR = "re-anchor"
ACTORS = frozenset({"spec", "schedule", "health", "cli", "daemon", "resync"})
_FILE_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")
_AGE_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC; aware ones are converted to it."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _format_time(moment: datetime) -> str:
    """The trail's time format: ISO 8601 UTC to the second, e.g. 2026-11-29T10:00:05Z."""
    return _as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _is_time(value: Any) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "seq": _is_int,
    "time": _is_time,
    "kind": lambda v: v in KINDS,
    "actor": lambda v: isinstance(v, str),
    "action": lambda v: isinstance(v, str),
    "reason": lambda v: isinstance(v, str),
    "spec_revision": lambda v: v is None or isinstance(v, str),
    "spec_file": lambda v: v is None or isinstance(v, str),
    "observed": lambda v: v is None or isinstance(v, dict),
    "outcome": lambda v: v is None or isinstance(v, str),
    "duration_s": lambda v: v is None or _is_num(v),
    "decision": lambda v: v is None or _is_int(v),
    "details": lambda v: isinstance(v, dict),
    "prev": lambda v: isinstance(v, str),
    "hash": lambda v: isinstance(v, str),
}


@dataclass(frozen=True)
class AuditRecord:
    """One line of the trail. ``hash`` covers every other field, ``prev`` links the chain."""

    seq: int
    time: str
    kind: str
    actor: str
    action: str
    reason: str
    spec_revision: str | None
    spec_file: str | None
    observed: dict[str, Any] | None
    outcome: str | None
    duration_s: float | None
    decision: int | None
    details: dict[str, Any] = field(default_factory=dict)
    prev: str = ZERO_HASH
    hash: str = ""

    @property
    def at(self) -> datetime:
        """``time`` as an aware UTC datetime, for filtering."""
        return _as_utc(datetime.fromisoformat(self.time))

    def body(self) -> dict[str, Any]:
        """Every field but ``hash``: what the hash covers."""
        value = asdict(self)
        del value["hash"]
        return value

    def computed_hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`body`; equals ``hash`` when intact."""
        return hashlib.sha256(_canonical(self.body()).encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        """The record as one canonical JSON line (without the newline)."""
        return _canonical(asdict(self))

    @classmethod
    def from_json(cls, line: str | bytes) -> AuditRecord:
        """Parse one line; ``ValueError`` names what is wrong. Does not check the hash."""
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        if set(value) != set(_CHECKS):
            diff = sorted(set(value) ^ set(_CHECKS))
            raise ValueError(f"missing or unknown fields: {', '.join(diff)}")
        bad = [name for name, check in _CHECKS.items() if not check(value[name])]
        if bad:
            raise ValueError(f"wrong type or value in: {', '.join(bad)}")
        return cls(**value)

    def summary_line(self, outcome: AuditRecord | None = None) -> str:
        """One line for ``kruxos audit list``; pass a decision's outcome to show it inline."""
        head = f"#{self.seq}  {self.time}  {self.actor:<8} {self.action:<9} {self.reason}"
        shown = outcome if outcome is not None else self
        if shown.outcome is None:
            return head
        took = "" if shown.duration_s is None else f" ({shown.duration_s:.1f}s)"
        return f"{head}  → {shown.outcome}{took}"


@dataclass(frozen=True)
class VerifyResult:
    """What ``kruxos audit verify`` reports; ``first_bad`` is the seq (or position) at fault."""

    ok: bool
    records: int
    first_bad: int | None
    problem: str | None
    head_seq: int
    files: int
    reanchors: tuple[tuple[int, str], ...] = ()

    def describe(self) -> str:
        """The one-line verdict ``kruxos audit verify`` prints."""
        if self.ok:
            return (
                f"OK: {self.records} records in {self.files} file{'s' * (self.files != 1)}, "
                f"chain intact, state head at seq {self.head_seq}{self.reanchor_note()}"
            )
        return f"FAILED: {self.problem}"

    def reanchor_note(self) -> str:
        """``; re-anchored at #12 (why)`` for each re-anchor, or nothing."""
        return "".join(f"; re-anchored at #{seq} ({why})" for seq, why in self.reanchors)

    def to_dict(self) -> dict[str, Any]:
        """The machine form of ``kruxos audit verify --json``."""
        value = asdict(self)
        value["reanchors"] = [{"seq": seq, "reason": why} for seq, why in self.reanchors]
        return value


def parse_since(text: str, now: datetime) -> datetime:
    """Read a ``--since`` value: an ISO time (UTC if no offset) or an age like 30m, 1h, 2d."""
    age = _AGE_RE.match(text)
    if age:
        return _as_utc(now) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    try:
        return _as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(
            f"cannot read since {text!r}: expected a time like 2026-11-29T10:00 "
            "or 2026-11-29T10:00:00+01:00, or an age like 30m, 1h, 2d"
        ) from None


def _file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines, and the trailing bytes of a write still in progress (or torn)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), data[end:]


def _read_section(store: StateStore) -> dict[str, Any]:
    try:
        return store.section(SECTION)
    except KruxosError as exc:
        raise AuditError(f"audit: cannot read the head in {store.path}: {exc}") from exc


def _read_head(store: StateStore) -> tuple[int, str]:
    section = _read_section(store)
    seq, digest = section.get("seq", 0), section.get("hash", ZERO_HASH)
    if not _is_int(seq) or not isinstance(digest, str):
        raise AuditError(f"audit: the head in {store.path} is malformed: {section!r}")
    return seq, digest


class AuditReader:
    """Reads the trail; safe while the writer appends (a half-written last line is skipped)."""

    def __init__(self, store: StateStore, directory: Path | None = None) -> None:
        self.store = store
        self.directory = directory if directory is not None else store.data_dir / AUDIT_DIR

    def files(self) -> list[tuple[int, Path]]:
        """The trail's files with their numbers, in order."""
        if not self.directory.is_dir():
            return []
        found = (_FILE_RE.match(p.name) for p in self.directory.iterdir())
        return sorted((int(m[1]), self.directory / m[0]) for m in found if m)

    def _lines(self, path: Path) -> tuple[list[bytes], bytes]:
        try:
            return _split_lines(path.read_bytes())
        except FileNotFoundError:
            return [], b""
        except OSError as exc:
            raise AuditError(f"audit: cannot read {path}: {exc.strerror or exc}") from exc

    def _parse(self, path: Path, number: int, line: bytes) -> AuditRecord:
        try:
            return AuditRecord.from_json(line)
        except ValueError as exc:
            raise AuditError(
                f"audit: {path.name} line {number}: not a valid record ({exc}); "
                "run `kruxos audit verify`"
            ) from exc

    def _file_records(self, path: Path) -> list[AuditRecord]:
        lines, _ = self._lines(path)
        return [self._parse(path, n, line) for n, line in enumerate(lines, 1)]

    def records(
        self, since: datetime | None = None, action: str | None = None
    ) -> Iterator[AuditRecord]:
        """All records in order, optionally from ``since`` on and of one ``action``."""
        start = None if since is None else _as_utc(since)
        for _, path in self.files():
            for record in self._file_records(path):
                if start is not None and record.at < start:
                    continue
                if action is None or record.action == action:
                    yield record

    def reversed_records(self) -> Iterator[AuditRecord]:
        """All records, newest first (reads one file at a time)."""
        for _, path in reversed(self.files()):
            yield from reversed(self._file_records(path))

    def get(self, seq: int) -> AuditRecord | None:
        """The record with this seq, or ``None``."""
        return next((r for r in self.records() if r.seq == seq), None)

    def last(self) -> AuditRecord | None:
        """The newest complete record, or ``None`` for an empty trail."""
        return next(self.reversed_records(), None)

    def head(self) -> tuple[int, str]:
        """The chain head kept in the state: (seq, hash); (0, zeros) when empty."""
        return _read_head(self.store)

    def repeats(self) -> tuple[int, int | None]:
        """How many passes repeated the last decision, and that decision's seq."""
        section = _read_section(self.store)
        return int(section.get("repeats", 0)), section.get("repeats_of")

    def failed_version(self) -> dict[str, Any] | None:
        """The version a rollback or a bootloader fallback left blocked, replayed from the trail.

        Newest first: an ``unblock`` event (the desired version moved on) or a
        person's pin ends the block; a ``rollback`` or ``note-fallback``
        decision names the version (from the observed summary it recorded).
        """
        for record in self.reversed_records():
            if record.action in ("unblock", "pin") and record.kind == "event":
                return None
            version = _failed_by(record)
            if version:
                return {"version": version, "reason": record.reason, "at": record.time}
        return None

    def trial_started(self) -> dict[str, Any] | None:
        """The first health probe of the current trial run, replayed from the trail.

        Newest first, probe decisions are collected back to the step that began
        this run (a reboot, a rollback, a confirm): the oldest of them is when the
        trial's timeout started counting. ``None`` when no trial run is found.
        """
        first: AuditRecord | None = None
        for record in self.reversed_records():
            if record.kind != "decision":
                continue
            if record.action == "probe":
                first = record
            elif record.action in ("reboot", "rollback", "confirm", "repair-boot-env"):
                break
        if first is None or not isinstance((first.observed or {}).get("booted"), str):
            return None
        assert first.observed is not None
        return {"slot": first.observed["booted"], "first_probe_at": first.at.isoformat()}

    def verify(self) -> VerifyResult:
        """Walk the whole chain and the head; name the first bad record."""
        return _Verifier(self).run()


@dataclass
class _Walk:
    """What the verifier collected: records in order, and where reading had to stop."""

    records: list[AuditRecord] = field(default_factory=list)
    stop: str | None = None


class _Verifier:
    """Checks files, lines, chain and head, in the order they appear on disk."""

    def __init__(self, reader: AuditReader) -> None:
        self.reader = reader
        self.files = reader.files()

    def run(self) -> VerifyResult:
        """The head is read before and after the walk so a writer appending meanwhile
        is not mistaken for damage: the trail reaches at least the head read before,
        and at most one record beyond the head read after."""
        try:
            before = self.reader.head()
            walk = self._walk()
            after = self.reader.head()
        except AuditError as exc:
            return self._result(0, 0, None, str(exc))
        bad = self._chain(walk.records)
        if bad is None and walk.stop is not None:
            bad = (len(walk.records) + 1, walk.stop)
        if bad is None:
            bad = self._head(walk.records, before, after[0])
        first, problem = bad if bad else (None, None)
        anchors = tuple((r.seq, r.reason) for r in walk.records if r.action == REANCHOR)
        return self._result(len(walk.records), after[0], first, problem, anchors)

    def _result(
        self, count: int, head: int, first: int | None, problem: str | None,
        anchors: tuple[tuple[int, str], ...] = (),
    ) -> VerifyResult:
        ok = problem is None
        return VerifyResult(ok, count, first, problem, head, len(self.files), anchors)

    def _walk(self) -> _Walk:
        walk = _Walk()
        for index, (number, path) in enumerate(self.files):
            walk.stop = self._missing_file(index, number)
            last_file = index == len(self.files) - 1
            if walk.stop is None:
                walk.stop = self._read_file(path, walk.records, last_file)
            if walk.stop is not None:
                break
        return walk

    def _missing_file(self, index: int, number: int) -> str | None:
        expected = index + 1
        if number == expected:
            return None
        gap = (
            _file_name(expected)
            if number == expected + 1
            else (f"{_file_name(expected)} to {_file_name(number - 1)}")
        )
        return f"file {gap} is missing (the next file is {_file_name(number)})"

    def _read_file(self, path: Path, out: list[AuditRecord], last_file: bool) -> str | None:
        lines, partial = self.reader._lines(path)
        for number, line in enumerate(lines, 1):
            try:
                out.append(AuditRecord.from_json(line))
            except ValueError as exc:
                return f"{path.name} line {number}: unparseable line ({exc})"
        if partial and not last_file:
            return f"{path.name} ends in a partial line (a write was cut off)"
        return None

    def _chain(self, records: list[AuditRecord]) -> tuple[int, str] | None:
        prev = ZERO_HASH
        for position, record in enumerate(records, 1):
            problem = _record_problem(position, record, prev, records)
            if problem:
                return position, problem
            prev = record.hash
        return None

    def _head(
        self, records: list[AuditRecord], head: tuple[int, str], later_seq: int
    ) -> tuple[int, str] | None:
        seq, digest = head
        end = len(records)
        if end < seq:
            return end + 1, f"trail ends at seq {end} but the state head is seq {seq} (truncated)"
        if seq and records[seq - 1].hash != digest:
            return seq, (
                f"record {seq}: hash differs from the state head "
                "(the trail was truncated and rewritten)"
            )
        if end > later_seq + 1:
            return later_seq + 2, (
                f"trail goes to seq {end} but the state head is seq {later_seq} "
                "(records were added outside the reconciler, or the state was reset)"
            )
        return None


def _record_problem(
    position: int, record: AuditRecord, prev: str, records: list[AuditRecord]
) -> str | None:
    """Why the record at ``position`` breaks the chain, or ``None``."""
    if record.computed_hash() != record.hash:
        return f"record {position}: hash mismatch (record was changed)"
    if record.seq != position:
        later = any(r.seq == position for r in records[position:])
        cause = (
            "records were reordered" if later or record.seq < position else ("a record was dropped")
        )
        return f"record {position}: expected seq {position}, found {record.seq} ({cause})"
    if record.prev != prev:
        return (
            f"record {position}: prev does not match the hash of record {position - 1} "
            "(records were reordered or replaced)"
        )
    return None


def _failed_by(record: AuditRecord) -> str | None:
    """The version a rollback or fallback decision gave up on, if ``record`` is one."""
    seen = record.observed or {}
    if record.kind != "decision":
        return None
    if record.action == "rollback":
        return seen.get("version") if isinstance(seen.get("version"), str) else None
    if record.action == "note-fallback":
        other = seen.get("other")
        version = other.get("version") if isinstance(other, dict) else None
        return version if isinstance(version, str) else None
    return None


def _section(doc: dict[str, Any]) -> dict[str, Any]:
    section = doc.get(SECTION)
    if not isinstance(section, dict):
        section = doc[SECTION] = {}
    return section


def _finishes_head(record: AuditRecord, seq: int, digest: str) -> bool:
    """Is ``record`` the intact next record after the head (a crash before the head moved)?"""
    intact = record.computed_hash() == record.hash
    return intact and record.seq == seq + 1 and record.prev == digest


def _seal(record: AuditRecord) -> AuditRecord:
    return replace(record, hash=record.computed_hash())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _undo(fd: int, length: int) -> str:
    """Cut a failed append back to ``length``; say what is left if even that fails."""
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    except OSError as exc:
        cause = exc.strerror or exc
        return f"; could not remove the partial line ({cause}); it is dropped on the next open"
    return "; the trail was left unchanged"


class AuditTrail(AuditReader):
    """The one writer: appends durably, dedupes repeated passes, repairs a crash on open."""

    def __init__(
        self,
        store: StateStore,
        directory: Path | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        super().__init__(store, directory)
        self._lock = threading.RLock()  # one append at a time, whichever thread asks
        self.max_bytes = max_bytes
        self.clock = clock
        self._make_directory()
        self._drop_partial_tail()
        self._last = self.last()
        self._take_head()
        self._last_decision, self._last_outcome = self._find_last_decision()

    def _make_directory(self) -> None:
        try:
            make_dirs(self.directory)
        except OSError as exc:
            raise AuditError(f"audit: cannot create {self.directory}: {exc.strerror}") from exc

    def _drop_partial_tail(self) -> None:
        """A line without its newline never finished, so its action never ran: cut it."""
        if not self.files():
            return
        path = self.files()[-1][1]
        lines, partial = self._lines(path)
        if partial:
            keep = sum(len(line) + 1 for line in lines)
            try:
                with path.open("r+b") as handle:
                    handle.truncate(keep)
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise AuditError(f"audit: cannot repair {path}: {exc.strerror}") from exc

    def _take_head(self) -> None:
        """Match the trail's end with the state head; one record ahead is a crash to finish.

        A head that was lost with the state file, or that stayed behind an intact
        continuation of the chain (the state could not be written, a full disk),
        is re-anchored: the trail's end becomes the head again and an ``event``
        says so, which ``audit verify`` reports. Anything else is damage.
        """
        seq, digest = self.head()
        last = self._last
        end = (last.seq, last.hash) if last else (0, ZERO_HASH)
        if end == (seq, digest):
            return
        if last is not None and _finishes_head(last, seq, digest):
            self._store_head(last)
            return
        why = self._anchor_problem(seq, digest)
        if last is not None and why is not None:
            self._store_head(last)
            self.event("daemon", REANCHOR, f"audit head re-anchored at record {last.seq}: {why}",
                       details={"head_seq": seq, "trail_seq": last.seq})
            return
        found = f"record {seq} differs from" if end[0] == seq else f"ends at seq {end[0]} but"
        raise AuditError(
            f"audit: the trail in {self.directory} {found} the state head (seq {seq}); "
            "refusing to continue a damaged trail (see `kruxos audit verify`)"
        )

    def _anchor_problem(self, seq: int, digest: str) -> str | None:
        """Why the head may be re-anchored (lost, or behind an intact chain), else ``None``."""
        if not _read_section(self.store):
            return "the state file had lost the head (it was rebuilt)"
        record = self.get(seq) if seq else None
        if seq and (record is None or record.hash != digest):
            return None
        if self.verify_chain() is not None:
            return None
        return (f"the head in the state file stayed at record {seq} while the trail went on "
                "(the state file could not be written)")

    def verify_chain(self) -> str | None:
        """The first break of the hash chain, or ``None`` when every record links."""
        walk = _Verifier(self)._walk()
        bad = _Verifier(self)._chain(walk.records)
        return bad[1] if bad else walk.stop

    def _find_last_decision(self) -> tuple[AuditRecord | None, str | None]:
        """The newest decision and the newest outcome text recorded for it."""
        latest: dict[int, str | None] = {}
        for record in self.reversed_records():
            if record.kind == "decision":
                return record, latest.get(record.seq)
            if record.kind == "outcome" and record.decision is not None:
                latest.setdefault(record.decision, record.outcome)
        return None, None

    def decision(
        self, actor: str, action: str, reason: str, *, dedupe: bool = True, **fields: Any
    ) -> tuple[AuditRecord, bool]:
        """Record a decision; a pass repeating the last one only bumps a counter.

        ``dedupe=False`` (every reboot) always appends: a step that happens
        again must show as a record of its own, never as a counter.
        Returns the record and whether it was a repeat (then nothing was appended).
        """
        last = self._last_decision
        if dedupe and last is not None and (last.action, last.reason) == (action, redact(reason)):
            self._count_repeat(last.seq)
            return last, True
        return self.append("decision", actor, action, reason, **fields), False

    def outcome(
        self,
        decision_seq: int,
        actor: str,
        action: str,
        outcome: str,
        duration_s: float | None,
        **fields: Any,
    ) -> AuditRecord | None:
        """Record how a decision ended; skipped when it repeats that decision's last outcome."""
        last = self._last_decision
        if last is not None and last.seq == decision_seq and self._last_outcome == outcome:
            return None
        fields.setdefault("reason", f"outcome of decision #{decision_seq}")
        return self.append(
            "outcome",
            actor,
            action,
            decision=decision_seq,
            outcome=outcome,
            duration_s=duration_s,
            **fields,
        )

    def event(self, actor: str, action: str, reason: str, **fields: Any) -> AuditRecord:
        """Record something that happened (a rejected spec, a probe...); never deduped."""
        return self.append("event", actor, action, reason, **fields)

    def append(
        self,
        kind: str,
        actor: str,
        action: str,
        reason: str,
        *,
        spec_revision: str | None = None,
        spec_file: str | None = None,
        observed: dict[str, Any] | None = None,
        outcome: str | None = None,
        duration_s: float | None = None,
        decision: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Write one record and fsync it before returning; then move the head in the state.

        Raises :class:`AuditError` when the record cannot be made durable; the
        trail is then as it was before the call, and the action must not run.
        """
        with self._lock:
            return self._append(kind, actor, action, reason, spec_revision=spec_revision,
                                spec_file=spec_file, observed=observed, outcome=outcome,
                                duration_s=duration_s, decision=decision, details=details)

    def _append(
        self,
        kind: str,
        actor: str,
        action: str,
        reason: str,
        *,
        spec_revision: str | None,
        spec_file: str | None,
        observed: dict[str, Any] | None,
        outcome: str | None,
        duration_s: float | None,
        decision: int | None,
        details: dict[str, Any] | None,
    ) -> AuditRecord:
        self._check(kind, actor, decision)
        record = _seal(
            AuditRecord(
                seq=self._next_seq(),
                time=_format_time(self.clock()),
                kind=kind,
                actor=actor,
                action=action,
                reason=redact(reason),
                spec_revision=spec_revision,
                spec_file=spec_file,
                observed=redact_json(observed),
                outcome=None if outcome is None else redact(outcome),
                duration_s=None if duration_s is None else float(duration_s),
                decision=decision,
                details=redact_json(dict(details or {})),
                prev=self._last.hash if self._last else ZERO_HASH,
            )
        )
        self._write((record.to_json() + "\n").encode("utf-8"), record.seq)
        self._remember(record)
        self._store_head(record)
        return record

    def _check(self, kind: str, actor: str, decision: int | None) -> None:
        if kind not in KINDS:
            raise ValueError(f"audit: unknown record kind {kind!r} (one of {sorted(KINDS)})")
        if actor not in ACTORS:
            raise ValueError(f"audit: unknown actor {actor!r} (one of {sorted(ACTORS)})")
        if decision is not None and not 1 <= decision < self._next_seq():
            raise ValueError(f"audit: outcome refers to decision #{decision}, not in the trail")

    def _next_seq(self) -> int:
        return self._last.seq + 1 if self._last else 1

    def _target(self, size: int) -> tuple[Path, bool]:
        """The file to append to, and whether it is new (rotation at ``max_bytes``)."""
        files = self.files()
        if not files:
            return self.directory / _file_name(1), True
        number, path = files[-1]
        current = path.stat().st_size
        if current and current + size > self.max_bytes:
            return self.directory / _file_name(number + 1), True
        return path, current == 0

    def _write(self, line: bytes, seq: int) -> None:
        try:
            path, fresh = self._target(len(line))
            fd = create_file(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise AuditError(
                f"audit: cannot open the trail in {self.directory} for record "
                f"{seq}: {exc.strerror or exc}"
            ) from exc
        try:
            self._write_fd(fd, path, fresh, line, seq)
        finally:
            os.close(fd)

    def _write_fd(self, fd: int, path: Path, fresh: bool, line: bytes, seq: int) -> None:
        """Append and fsync; a full disk gives back the reserve once (see ``store.Reserve``)."""
        undone: list[str] = []

        def attempt() -> None:
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
                if fresh:
                    fsync_dir(path.parent)
            except OSError:
                undone[:] = [_undo(fd, start)]
                raise

        try:
            with_reserve(self.store.reserve, attempt)
        except OSError as exc:
            left = undone[0] if undone else ""
            raise AuditError(
                f"audit: cannot write record {seq} to {path}: {exc.strerror or exc}{left}"
            ) from exc

    def _remember(self, record: AuditRecord) -> None:
        self._last = record
        if record.kind == "decision":
            self._last_decision, self._last_outcome = record, None
        elif record.kind == "outcome" and self._last_decision is not None:
            if record.decision == self._last_decision.seq:
                self._last_outcome = record.outcome

    def _store_head(self, record: AuditRecord) -> None:
        def change(doc: dict[str, Any]) -> None:
            section = _section(doc)
            section.update(seq=record.seq, hash=record.hash)
            if record.kind == "decision":
                section.update(repeats=0, repeats_of=record.seq)

        self._update_state(change, f"move the head to record {record.seq}")

    def _count_repeat(self, seq: int) -> None:
        def change(doc: dict[str, Any]) -> None:
            section = _section(doc)
            same = section.get("repeats_of") == seq
            section.update(repeats=int(section.get("repeats", 0)) + 1 if same else 1)
            section["repeats_of"] = seq

        self._update_state(change, f"count a repeat of decision {seq}")

    def _update_state(self, change: Callable[[dict[str, Any]], None], what: str) -> None:
        try:
            self.store.update(change)
        except (OSError, KruxosError) as exc:
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise AuditError(f"audit: cannot {what} in {self.store.path}: {cause}") from exc
