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

import contextlib
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

from reconciler.durable import atomic_write_json, create_file, fsync_dir, make_dirs, read_json
from reconciler.errors import AuditError, KruxosError, short_error
from reconciler.failpoints import failpoint
from reconciler.redact import redact, redact_json
from reconciler.spec import parse_duration
from reconciler.store import StateStore, with_reserve

AUDIT_DIR = "audit"
#: The head of the chain, beside the trail: written by the trail alone.
HEAD_FILE = "head.json"
#: Where releases before the head file kept the head: the state document's section.
SECTION = "audit"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
ZERO_HASH = "0" * 64
KINDS = frozenset({"decision", "outcome", "event"})
#: The action of the event that re-anchors the head after the state file lost it.
REANCHOR = "re-anchor"
#: The action of the event that says which files retention removed.
PRUNED = "audit-pruned"
#: The action of the event that says a record cut off mid-line (a crash) was dropped.
TAIL_CUT = "audit-tail-cut"
ACTORS = frozenset({"spec", "schedule", "health", "cli", "daemon", "resync"})
_FILE_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")


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

    @property
    def code(self) -> str | None:
        """An outcome's code for scripts (``ok``, ``stopped``, ``unavailable``, ``refused``,
        ``failed``: ``reconciler.actions.OUTCOME_CODES``), kept in ``details``; for an
        outcome written before codes, ``ok`` or ``failed`` from its text. ``None`` for
        decisions and events."""
        if self.kind != "outcome":
            return None
        code = self.details.get("code")
        if isinstance(code, str):
            return code
        return "ok" if (self.outcome or "").startswith("ok") else "failed"

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
    #: Where a pruned trail starts: (seq of the last record pruned, its time).
    checkpoint: tuple[int, str] | None = None

    def describe(self) -> str:
        """The one-line verdict ``kruxos audit verify`` prints."""
        if self.ok:
            return (
                f"OK: {self.records} records in {self.files} file{'s' * (self.files != 1)}, "
                f"chain intact, head at seq {self.head_seq}{self.reanchor_note()}"
            )
        return f"FAILED: {self.problem}"

    def reanchor_note(self) -> str:
        """``; records up to #40 pruned (...)`` and ``; re-anchored at #12 (why)``."""
        pruned = "" if self.checkpoint is None else (
            f"; records up to #{self.checkpoint[0]} pruned (checkpoint of "
            f"{self.checkpoint[1]})")
        return pruned + "".join(f"; re-anchored at #{seq} ({why})"
                                for seq, why in self.reanchors)

    def to_dict(self) -> dict[str, Any]:
        """The machine form of ``kruxos audit verify --json``."""
        value = asdict(self)
        value["reanchors"] = [{"seq": seq, "reason": why} for seq, why in self.reanchors]
        value["checkpoint"] = None if self.checkpoint is None else {
            "seq": self.checkpoint[0], "time": self.checkpoint[1]}
        return value


def parse_since(text: str, now: datetime) -> datetime:
    """Read a ``--since`` value: an ISO time (UTC if no offset) or an age like 30m, 1h, 2d."""
    with contextlib.suppress(ValueError):  # the durations of a spec: 30m, 1h30m, 2d
        return _as_utc(now) - parse_duration(text.strip())
    try:
        return _as_utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(
            f"cannot read since {text[:80]!r}: expected a time like 2026-11-29T10:00 "
            "or 2026-11-29T10:00:00+01:00, or an age like 30m, 1h30m, 2d (at most 366d)"
        ) from None


def _file_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines, and the trailing bytes of a write still in progress (or torn)."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), data[end:]


def _legacy_head(store: StateStore) -> dict[str, Any]:
    """The head as releases before ``head.json`` kept it (the state's ``audit`` section)."""
    try:
        return store.section(SECTION)
    except KruxosError as exc:
        raise AuditError(f"audit: cannot read the head in {store.path}: {exc}") from exc


def _head_problem(value: Any) -> str | None:
    """Why a head document cannot be used, or ``None``."""
    if not isinstance(value, dict):
        return "not a JSON object"
    seq, digest = value.get("seq", 0), value.get("hash", ZERO_HASH)
    if not _is_int(seq) or seq < 0 or not isinstance(digest, str) or len(digest) != 64:
        return "seq or hash malformed"
    if "checkpoint" in value and _checkpoint(value) is None:
        return "checkpoint malformed"
    return None


@dataclass(frozen=True)
class Retention:
    """How much of the trail is kept: files whose newest record is older than ``days``,
    and the oldest files while the trail is larger than ``max_bytes``, are pruned
    (the file being written is always kept). ``None``: no limit of that kind."""

    days: int | None = None
    max_bytes: int | None = None

    def __str__(self) -> str:
        kept = [f"{self.days} days" if self.days else "",
                f"{self.max_bytes // (1024 * 1024)} MiB" if self.max_bytes else ""]
        return "retention " + (" and ".join(k for k in kept if k) or "unlimited")

    def doomed(self, files: list[tuple[int, Path]], now: datetime) -> list[tuple[int, Path]]:
        """The oldest files to prune, in order (never the newest two)."""
        if not self.days and not self.max_bytes:
            return []
        sizes = [path.stat().st_size for _, path in files]
        total = sum(sizes)
        out: list[tuple[int, Path]] = []
        for index, (number, path) in enumerate(files[:-2]):
            newest = _first_record(files[index + 1][1])  # every record here is older
            old = bool(self.days and newest is not None
                       and newest.at < _as_utc(now) - timedelta(days=self.days))
            big = bool(self.max_bytes and total > self.max_bytes)
            if not (old or big):
                break
            out.append((number, path))
            total -= sizes[index]
        return out


@dataclass(frozen=True)
class Checkpoint:
    """Where a pruned trail starts: file ``file`` begins with the record after ``seq``,
    whose ``prev`` is ``hash``; ``time`` is when the last pruned record was written."""

    seq: int
    hash: str
    time: str
    file: int


def _checkpoint(head: dict[str, Any]) -> Checkpoint | None:
    value = head.get("checkpoint")
    if not isinstance(value, dict):
        return None
    seq: Any = value.get("seq")
    number: Any = value.get("file")
    digest, time = value.get("hash"), value.get("time")
    if not (_is_int(seq) and _is_int(number) and isinstance(digest, str)
            and isinstance(time, str) and seq >= 1 and number >= 2 and len(digest) == 64):
        return None
    return Checkpoint(seq, digest, time, number)


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

    def _file_records(self, path: Path, sealed: bool = False) -> list[AuditRecord]:
        """A file's records; in a sealed (damaged) file, lines that are no record are skipped."""
        lines, _ = self._lines(path)
        if not sealed:
            return [self._parse(path, n, line) for n, line in enumerate(lines, 1)]
        found = []
        for line in lines:
            try:
                found.append(AuditRecord.from_json(line))
            except ValueError:
                continue
        return found

    def _live_start(self, files: list[tuple[int, Path]],
                    firsts: list[AuditRecord | None] | None = None,
                    ) -> tuple[int, AuditRecord | None]:
        """Where the live chain starts: the index of the newest file that begins with a
        seal, and the seal; ``(0, None)`` when the trail was never sealed."""
        for index in range(len(files) - 1, -1, -1):
            record = firsts[index] if firsts is not None else _first_record(files[index][1])
            if record is not None and _is_seal(record):
                return index, record
        return 0, None

    def _indexed(self) -> list[tuple[Path, bool, AuditRecord | None]]:
        """Each file with whether it is sealed (damaged, kept as found) and its first record."""
        files = self.files()
        firsts = [_first_record(path) for _, path in files]
        start, _ = self._live_start(files, firsts)
        return [(path, index < start, firsts[index]) for index, (_, path) in enumerate(files)]

    def records(
        self, since: datetime | None = None, action: str | None = None, after: int = 0,
    ) -> Iterator[AuditRecord]:
        """All records in order, optionally from ``since`` on, of one ``action``, and with a
        seq above ``after``.

        Files wholly before ``since`` or ``after`` are not read: a file is skipped when
        the next one starts before ``since`` (records are appended in time order; a
        clock set back makes a record look older than it is) or at or below ``after``.
        """
        start = None if since is None else _as_utc(since)
        indexed = self._indexed()
        first_read = 0
        for index in range(1, len(indexed)):
            nxt = indexed[index][2]
            if nxt is None or indexed[index][1]:
                continue
            if (start is not None and nxt.at < start) or (after and nxt.seq <= after + 1):
                first_read = index
        since_text = _format_time(start).encode() if start is not None else None
        for path, sealed, _ in indexed[first_read:]:
            lines, _ = self._lines(path)
            for number, line in enumerate(lines, 1):
                if _before(line, since_text, after):
                    continue  # told by its last fields, without parsing the line
                try:
                    record = AuditRecord.from_json(line)
                except ValueError:
                    if sealed:
                        continue
                    raise AuditError(f"audit: {path.name} line {number}: not a valid record; "
                                     "run `kruxos audit verify`") from None
                if start is not None and record.at < start:
                    continue
                if record.seq <= after:
                    continue
                if action is None or record.action == action:
                    yield record

    def reversed_records(self) -> Iterator[AuditRecord]:
        """All records, newest first (reads one file at a time)."""
        for path, sealed, _ in reversed(self._indexed()):
            yield from reversed(self._file_records(path, sealed))

    def get(self, seq: int) -> AuditRecord | None:
        """The record with this seq, or ``None`` (reads from the file that holds it on)."""
        return next((r for r in self.records(after=seq - 1) if r.seq >= seq and r.seq == seq),
                    None)

    def last(self) -> AuditRecord | None:
        """The newest complete record, or ``None`` for an empty trail."""
        return next(self.reversed_records(), None)

    @property
    def head_path(self) -> Path:
        """The head file (``audit/head.json``)."""
        return self.directory / HEAD_FILE

    def head_doc(self) -> dict[str, Any]:
        """The head document: ``head.json``, else the state's old section; ``{}`` when
        neither exists. Raises :class:`AuditError` when it cannot be read or makes no sense."""
        try:
            value = read_json(self.head_path, None)
        except (OSError, KruxosError) as exc:
            raise AuditError(f"audit: cannot read the head in {self.head_path}: "
                             f"{short_error(exc)}") from exc
        if value is None:
            value = _legacy_head(self.store)
        problem = _head_problem(value)
        if problem:
            raise AuditError(f"audit: the head in {self.head_path} is damaged ({problem})")
        return dict(value)

    def head(self) -> tuple[int, str]:
        """The chain head: (seq, hash); (0, zeros) when empty."""
        doc = self.head_doc()
        return int(doc.get("seq", 0)), str(doc.get("hash", ZERO_HASH))

    def repeats(self) -> tuple[int, int | None]:
        """How many passes repeated the last decision, and that decision's seq."""
        doc = self.head_doc()
        repeats, of = doc.get("repeats", 0), doc.get("repeats_of")
        return (repeats if _is_int(repeats) else 0), (of if _is_int(of) else None)

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


@dataclass(frozen=True, slots=True)
class _Link:
    """What the verifier keeps of one record: enough to follow the chain, nothing more."""

    seq: Any
    prev: Any
    hash: str
    intact: bool
    action: str
    reason: str


@dataclass
class _Walk:
    """What the verifier collected: records in order, and where reading had to stop."""

    records: list[_Link] = field(default_factory=list)
    stop: str | None = None


_HASH_FIELD = len(b'"hash":"",') + 64


def _prev_of(line: bytes) -> bytes | None:
    """The top-level ``prev`` of a stored line, found without parsing it.

    Only ``reason``, ``seq`` and string fields follow ``prev`` in a stored
    (canonical) line, and a JSON string cannot hold ``,"prev":"`` unescaped,
    so the last occurrence is the record's own field.
    """
    at = line.rfind(b',"prev":"')
    return line[at + 9:at + 73] if at >= 0 else None


def _seq_of(line: bytes) -> int | None:
    """The top-level ``seq`` of a stored line (the last ``,"seq":``, as for ``prev``)."""
    at = line.rfind(b',"seq":')
    end = line.find(b",", at + 7)
    digits = line[at + 7:end] if at >= 0 and end > 0 else b""
    return int(digits) if digits.isdigit() and len(digits) < 20 else None


def _before(line: bytes, since: bytes | None, after: int) -> bool:
    """Is a stored line surely older than ``since`` or at or below seq ``after``?

    Reads the last fields of the canonical line (``time`` is the last one, in
    the trail's fixed format, so text order is time order); ``False`` whenever
    that cannot be told, and the line is parsed.
    """
    if after:
        seq = _seq_of(line)
        if seq is not None and seq <= after:
            return True
    if since is not None:
        at = line.rfind(b',"time":"')
        stamp = line[at + 9:at + 29] if at >= 0 else b""
        if len(stamp) == 20 and stamp.endswith(b"Z") and stamp < since:
            return True
    return False


def _links(lines: list[bytes]) -> tuple[list[_Link], tuple[int, str] | None]:
    """The lines as chain links, and the first line that is no record (index, why).

    The fast path parses nothing: a record's hash is the next record's ``prev``,
    and a record is stored as the canonical JSON that hash was computed over
    plus its ``hash`` field, so the line without that field must hash to it.
    A line that does not (changed, the last one, a re-anchor whose reason is
    reported) is parsed into a record and checked the slow way, which also
    names what is wrong with it.
    """
    links: list[_Link] = []
    prevs = [_prev_of(line) for line in lines]
    sha256, anchor = hashlib.sha256, b'{"action":"' + REANCHOR.encode()
    last = len(lines) - 1
    for index, line in enumerate(lines):
        digest, prev = (prevs[index + 1] if index < last else None), prevs[index]
        link = None
        if digest is not None and prev is not None and not line.startswith(anchor):
            body = line.replace(b'"hash":"' + digest + b'",', b"", 1)
            text = digest.decode("ascii", "replace")
            if len(body) == len(line) - _HASH_FIELD and sha256(body).hexdigest() == text:
                seq = _seq_of(line)
                if seq is not None:
                    link = _Link(seq, prev.decode("ascii", "replace"), text, True, "", "")
        if link is None:
            try:
                record = AuditRecord.from_json(line)
            except ValueError as exc:
                return links, (index, str(exc))
            link = _Link(record.seq, record.prev, record.hash,
                         record.computed_hash() == record.hash, record.action, record.reason)
        links.append(link)
    return links, None


class _Verifier:
    """Checks files, lines, chain and head, in the order they appear on disk.

    A trail the daemon found damaged and sealed (see :meth:`AuditTrail._seal`)
    is checked from its newest seal on: the files before it must be exactly
    the bytes the seal lists, and the chain starts again at the seal.
    """

    def __init__(self, reader: AuditReader) -> None:
        self.reader = reader
        self.checkpoint: Checkpoint | None = None
        try:
            self.checkpoint = _checkpoint(reader.head_doc())
        except AuditError:
            pass  # run() reports the head
        files = reader.files()
        if self.checkpoint is not None and files and files[0][0] < self.checkpoint.file:
            # files a prune was deleting when it was cut off: behind the checkpoint
            files = [(n, p) for n, p in files if n >= self.checkpoint.file] or files
        self.files = files
        self.start, self.seal = reader._live_start(self.files)

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
        bad = self._sealed_files()
        if bad is None:
            bad = self._chain(walk.records)
        if bad is None and walk.stop is not None:
            bad = (self._base() + len(walk.records), walk.stop)
        if bad is None:
            bad = self._head(walk.records, before, after[0])
        first, problem = bad if bad else (None, None)
        anchors = tuple((r.seq, r.reason) for r in walk.records if r.action == REANCHOR)
        result = self._result(len(walk.records), after[0], first, problem, anchors)
        pruned = self._pruned()
        return replace(result, checkpoint=(pruned.seq, pruned.time)) if pruned else result

    def _base(self) -> int:
        """The seq of the first record checked: 1, the checkpoint's next, or the seal's."""
        if self.seal is not None:
            return self.seal.seq
        pruned = self._pruned()
        return pruned.seq + 1 if pruned is not None else 1

    def _pruned(self) -> Checkpoint | None:
        """The checkpoint, when the trail now starts at it (its first file was pruned)."""
        cp = self.checkpoint
        if cp is None or not self.files or self.files[0][0] != cp.file:
            return None
        return cp

    def _result(
        self, count: int, head: int, first: int | None, problem: str | None,
        anchors: tuple[tuple[int, str], ...] = (),
    ) -> VerifyResult:
        ok = problem is None
        return VerifyResult(ok, count, first, problem, head, len(self.files), anchors)

    def _sealed_files(self) -> tuple[int, str] | None:
        """The files before the newest seal are still the bytes it sealed."""
        if self.seal is None:
            return None
        listed = self.seal.details.get("sealed")
        expected: dict[str, dict[str, Any]] = {
            str(f.get("name")): f for f in listed if isinstance(f, dict)
        } if isinstance(listed, list) else {}
        present = {path.name: path for _, path in self.files[:self.start]}
        first = self.files[0][0] if self.files else 0
        for name in sorted(set(expected) | set(present)):
            want, path = expected.get(name), present.get(name)
            if path is None and _number_of(name) < first and self.checkpoint is not None:
                continue  # pruned since, behind the checkpoint
            if want is None or path is None:
                change = "is missing" if path is None else "was added"
                return self.seal.seq, (f"sealed file {name} {change} since the seal at "
                                       f"#{self.seal.seq}")
            if _file_digest(path) != (want.get("bytes"), want.get("sha256")):
                return self.seal.seq, (f"sealed file {name} changed since the seal at "
                                       f"#{self.seal.seq}")
        return None

    def _walk(self) -> _Walk:
        walk = _Walk()
        live = self.files[self.start:]
        first_number = live[0][0] if live else 1
        lines: list[tuple[bytes, Path, int]] = []
        for index, (number, path) in enumerate(live):
            walk.stop = self._missing_file(first_number + index, number)
            if walk.stop is None:
                walk.stop = self._read_lines(path, lines, index == len(live) - 1)
            if walk.stop is not None:
                break
        walk.records, problem = _links([line for line, _, _ in lines])
        if problem is not None:
            index, why = problem
            _, path, number = lines[index]
            walk.stop = f"{path.name} line {number}: unparseable line ({why})"
        return walk

    def _read_lines(self, path: Path, out: list[tuple[bytes, Path, int]],
                    last_file: bool) -> str | None:
        lines, partial = self.reader._lines(path)
        out.extend((line, path, number) for number, line in enumerate(lines, 1))
        if partial and not last_file:
            return f"{path.name} ends in a partial line (a write was cut off)"
        return None

    def _missing_file(self, expected: int, number: int) -> str | None:
        if number == expected:
            return None
        gap = (
            _file_name(expected)
            if number == expected + 1
            else (f"{_file_name(expected)} to {_file_name(number - 1)}")
        )
        return f"file {gap} is missing (the next file is {_file_name(number)})"

    def _chain(self, records: list[_Link]) -> tuple[int, str] | None:
        base = self._base()
        pruned = self._pruned()
        prev = records[0].prev if records and self.seal is not None else (
            pruned.hash if pruned is not None else ZERO_HASH)
        for position, record in enumerate(records, base):
            problem = _record_problem(position, record, prev, records, position - base)
            if problem:
                return position, problem
            prev = record.hash
        return None

    def _head(
        self, records: list[_Link], head: tuple[int, str], later_seq: int
    ) -> tuple[int, str] | None:
        seq, digest = head
        base = self._base()
        end = base + len(records) - 1
        if end < seq:
            return end + 1, f"trail ends at seq {end} but the head is seq {seq} (truncated)"
        if seq >= base and records[seq - base].hash != digest:
            return seq, (
                f"record {seq}: hash differs from the head "
                "(the trail was truncated and rewritten)"
            )
        if end > later_seq + 1:
            return later_seq + 2, (
                f"trail goes to seq {end} but the head is seq {later_seq} "
                "(records were added outside the reconciler, or the state was reset)"
            )
        return None


def _number_of(name: str) -> int:
    match = _FILE_RE.match(name)
    return int(match[1]) if match else 0


def _first_record(path: Path) -> AuditRecord | None:
    """The first record of a file, if its first line is one (reads at most 1 MiB)."""
    try:
        with path.open("rb") as handle:
            line = handle.readline(1 << 20)
    except OSError:
        return None
    try:
        return AuditRecord.from_json(line) if line.endswith(b"\n") else None
    except ValueError:
        return None


def _is_seal(record: AuditRecord) -> bool:
    """A seal: the re-anchor event that starts a file after damage, listing what it seals."""
    return record.kind == "event" and record.action == REANCHOR and \
        isinstance(record.details.get("sealed"), list)


def _file_digest(path: Path) -> tuple[int, str]:
    """A file's length and SHA-256, as a seal lists them."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _record_problem(
    position: int, record: _Link, prev: str, records: list[_Link], index: int
) -> str | None:
    """Why the record at ``position`` (``records[index]``) breaks the chain, or ``None``."""
    if not record.intact:
        return f"record {position}: hash mismatch (record was changed)"
    if record.seq != position:
        moved = any(r.seq == position for r in records[index + 1:])
        cause = (
            "records were reordered" if moved or record.seq < position else ("a record was dropped")
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
        retention: Retention | None = None,
    ) -> None:
        super().__init__(store, directory)
        self._lock = threading.RLock()  # one append at a time, whichever thread asks
        self.max_bytes = max_bytes
        self.clock = clock
        self.retention = retention or Retention()
        self._make_directory()
        cut_tail = self._drop_partial_tail()
        self._last: AuditRecord | None = None
        self._head: dict[str, Any] = {}
        #: What opening the trail had to record (a re-anchor, a seal, a cut tail), for the log.
        self.opened_with: list[AuditRecord] = []
        self._open_chain()
        if cut_tail is not None:
            self.opened_with.append(self.event("daemon", TAIL_CUT, cut_tail))
        self._last_decision, self._last_outcome = self._find_last_decision()

    def _make_directory(self) -> None:
        try:
            make_dirs(self.directory)
        except OSError as exc:
            raise AuditError(f"audit: cannot create {self.directory}: {exc.strerror}") from exc

    def _drop_partial_tail(self) -> str | None:
        """A line without its newline never finished, so its action never ran: cut it.

        Returns what was cut, which the trail records once its chain is open.
        """
        if not self.files():
            return None
        path = self.files()[-1][1]
        lines, partial = self._lines(path)
        if not partial:
            return None
        keep = sum(len(line) + 1 for line in lines)
        try:
            with path.open("r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())
        except OSError as exc:
            raise AuditError(f"audit: cannot repair {path}: {exc.strerror}") from exc
        return (f"dropped the last {len(partial)} bytes of {path.name}: a record cut off "
                "before its end (a crash or power cut while it was written), so its action "
                "never ran")

    def _open_chain(self) -> None:
        """Match the trail's end with the head; one record ahead is a crash to finish.

        A head that was lost, or that stayed behind an intact continuation of
        the chain (the head could not be written, a full disk), is re-anchored:
        the trail's end becomes the head again and an ``event`` says so, which
        ``audit verify`` reports. Anything else is damage, and damage never
        stops the reconciler (a rollback above all): the trail is sealed as
        found and the chain goes on (see :meth:`_seal_damage`).
        """
        try:
            self._last = self.last()
        except AuditError as exc:  # a line that is no record, in the live part of the trail
            self._seal_damage(str(exc).removeprefix("audit: "))
            return
        try:
            doc: dict[str, Any] | None = self.head_doc()
        except AuditError as exc:
            doc, damaged_head = None, str(exc).removeprefix("audit: ")
        last = self._last
        end = (last.seq, last.hash) if last else (0, ZERO_HASH)
        if doc is None:
            self._head_lost(f"{damaged_head}", end)
            return
        self._head = dict(doc)
        try:
            self._finish_prune()
        except OSError as exc:
            raise AuditError(f"audit: cannot finish removing pruned files: "
                             f"{exc.strerror or exc}") from exc
        seq, digest = int(doc.get("seq", 0)), str(doc.get("hash", ZERO_HASH))
        if not doc and last is not None:
            self._head_lost("the head was lost", end)
            return
        if end == (seq, digest):
            if not self.head_path.exists() and last is not None:
                self._write_head(doc, "move the head out of the state file")
            return
        if last is not None and _finishes_head(last, seq, digest):
            self._store_head(last)
            return
        record = self.get(seq) if seq else None
        if last is not None and (not seq or (record is not None and record.hash == digest)) \
                and self.verify_chain() is None:
            self._reanchor(f"the head stayed at record {seq} while the trail went on (the head "
                           "could not be written)", seq)
            return
        found = f"record {seq} differs from" if end[0] == seq else f"ends at seq {end[0]} but"
        self._seal_damage(f"the trail {found} the head (seq {seq})")

    def _head_lost(self, why: str, end: tuple[int, str]) -> None:
        """No usable head: re-anchor on an intact chain, seal a damaged one."""
        if end[0] == 0:
            self._write_head({})
            return
        problem = self.verify_chain()
        if problem is None:
            self._reanchor(why, 0)
        else:
            self._seal_damage(f"{why}, and {problem}")

    def _reanchor(self, why: str, head_seq: int) -> None:
        last = self._last
        assert last is not None
        self._store_head(last)
        self.opened_with.append(self.event(
            "daemon", REANCHOR, f"audit head re-anchored at record {last.seq}: {why}",
            details={"head_seq": head_seq, "trail_seq": last.seq}))

    def _seal_damage(self, problem: str) -> None:
        """Keep a damaged trail exactly as found, sealed, and go on in a new file.

        The new file starts with a ``re-anchor`` event that lists every older
        file with its length and SHA-256 (so nothing in them can change
        unnoticed afterwards) and names the damage. Its ``prev`` is the hash of
        the last record that could still be read, and its ``seq`` follows the
        highest seq found. ``audit verify`` then checks the sealed files against
        the seal and the chain from the seal on, and reports the seal. Refusing
        to write instead would stop every action, a rollback included.
        """
        files = self.files()
        sealed = []
        top, prev = 0, ZERO_HASH
        for _, path in files:
            size, digest = _file_digest(path)
            sealed.append({"name": path.name, "bytes": size, "sha256": digest})
            for record in self._file_records(path, sealed=True):
                if record.seq > top:
                    top, prev = record.seq, record.hash
        number = files[-1][0] + 1 if files else 1
        reason = (f"the audit trail was found damaged ({problem[:200]}); its files are kept as "
                  "found and sealed here, and the chain goes on from this record")
        record = _seal(AuditRecord(
            seq=top + 1, time=_format_time(self.clock()), kind="event", actor="daemon",
            action=REANCHOR, reason=redact(reason), spec_revision=None, spec_file=None,
            observed=None, outcome=None, duration_s=None, decision=None,
            details={"sealed": sealed, "problem": redact(problem[:500])}, prev=prev))
        with self._lock:
            self._write((record.to_json() + "\n").encode("utf-8"), record.seq,
                        self.directory / _file_name(number))
            self._remember(record)
            self._store_head(record)
        self.opened_with.append(record)

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
        fresh = self._write((record.to_json() + "\n").encode("utf-8"), record.seq)
        self._remember(record)
        self._store_head(record)
        if fresh and action != PRUNED:
            self._prune()
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

    def _write(self, line: bytes, seq: int, new_file: Path | None = None) -> bool:
        """Append one line durably; ``True`` when it started a new file."""
        try:
            path, fresh = (new_file, True) if new_file else self._target(len(line))
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
        return fresh

    def _write_fd(self, fd: int, path: Path, fresh: bool, line: bytes, seq: int) -> None:
        """Append and fsync; a full disk gives back the reserve once (see ``store.Reserve``)."""
        undone: list[str] = []

        def attempt() -> None:
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                failpoint("audit.appended")
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
        doc = {**self._head, "seq": record.seq, "hash": record.hash}
        if record.kind == "decision":
            doc.update(repeats=0, repeats_of=record.seq)
        self._write_head(doc, f"move the head to record {record.seq}")

    def _count_repeat(self, seq: int) -> None:
        same = self._head.get("repeats_of") == seq
        repeats = int(self._head.get("repeats", 0)) + 1 if same else 1
        self._write_head({**self._head, "repeats": repeats, "repeats_of": seq},
                         f"count a repeat of decision {seq}")

    def _prune(self) -> None:
        """Remove the oldest files the retention no longer keeps, behind a checkpoint.

        Runs when a record starts a new file. Order, each step durable before
        the next: an ``audit-pruned`` event naming what goes (each file's length
        and SHA-256) and where the trail now starts; the checkpoint in the head
        (the first kept record's seq and ``prev``); then the files, oldest first.
        A cut anywhere leaves a trail that verifies, and the next open finishes
        the removal. A failure to prune never fails the record that asked.
        """
        files = self.files()
        doomed = self.retention.doomed(files, self.clock())
        if not doomed:
            return
        keep_number, keep_path = files[len(doomed)]
        first = _first_record(keep_path)
        if first is None:
            return  # the first kept file does not start with a record: leave it all
        last_pruned = self._last_line_record(doomed[-1][1])
        time = last_pruned.time if last_pruned is not None else first.time
        gone = []
        for _, path in doomed:
            size, digest = _file_digest(path)
            gone.append({"name": path.name, "bytes": size, "sha256": digest})
        try:
            self.event("daemon", PRUNED, f"audit records up to #{first.seq - 1} pruned "
                       f"({len(doomed)} file{'s' * (len(doomed) != 1)}, {self.retention}); "
                       f"the trail starts at #{first.seq} in {keep_path.name}",
                       details={"pruned": gone, "start": {"file": keep_path.name,
                                                          "seq": first.seq,
                                                          "prev": first.prev}})
            checkpoint = {"seq": first.seq - 1, "hash": first.prev, "time": time,
                          "file": keep_number}
            self._write_head({**self._head, "checkpoint": checkpoint}, "write a checkpoint")
            self._finish_prune()
        except (AuditError, OSError):
            return  # kept a while longer; tried again at the next new file

    def _finish_prune(self) -> None:
        """Remove the files behind the checkpoint (a prune cut off is finished here)."""
        cp = _checkpoint(self._head)
        if cp is None:
            return
        removed = False
        for number, path in self.files():
            if number >= cp.file:
                break
            path.unlink(missing_ok=True)
            removed = True
        if removed:
            fsync_dir(self.directory)

    def _last_line_record(self, path: Path) -> AuditRecord | None:
        lines, _ = self._lines(path)
        try:
            return AuditRecord.from_json(lines[-1]) if lines else None
        except ValueError:
            return None

    def _write_head(self, doc: dict[str, Any], what: str = "write the head") -> None:
        """``head.json``, atomically and durably; only the trail writes it."""
        doc = {k: doc[k] for k in ("seq", "hash", "repeats", "repeats_of", "checkpoint")
               if k in doc}
        doc.setdefault("seq", 0)
        doc.setdefault("hash", ZERO_HASH)
        try:
            with_reserve(self.store.reserve, lambda: atomic_write_json(self.head_path, doc,
                                                                label="audit-head"))
        except OSError as exc:
            raise AuditError(f"audit: cannot {what} in {self.head_path}: "
                             f"{exc.strerror or exc}") from exc
        self._head = doc


class UnopenedTrail(AuditReader):
    """Stands in for a trail that could not be opened (an unreadable or read-only data
    disk): every write raises the reason; what the reconciler replays finds nothing.
    The reconciler goes on (a rollback runs unrecorded, see ``docs/states.md``) and
    opens the trail again at every pass."""

    def __init__(self, store: StateStore, directory: Path, error: AuditError) -> None:
        super().__init__(store, directory)
        self.error = error
        self.opened_with: list[AuditRecord] = []

    def decision(self, actor: str, action: str, reason: str, *, dedupe: bool = True,
                 **fields: Any) -> tuple[AuditRecord, bool]:
        raise self.error

    def outcome(self, decision_seq: int, actor: str, action: str, outcome: str,
                duration_s: float | None, **fields: Any) -> AuditRecord | None:
        raise self.error

    def event(self, actor: str, action: str, reason: str, **fields: Any) -> AuditRecord:
        raise self.error

    def failed_version(self) -> dict[str, Any] | None:
        return None

    def trial_started(self) -> dict[str, Any] | None:
        return None


def open_trail(store: StateStore, directory: Path,
               clock: Callable[[], datetime] = _utc_now,
               retention: Retention | None = None) -> AuditTrail | UnopenedTrail:
    """The trail's writer, or a stand-in saying why it cannot be opened."""
    try:
        return AuditTrail(store, directory, clock=clock, retention=retention)
    except AuditError as exc:
        return UnopenedTrail(store, directory, exc)
    except OSError as exc:
        return UnopenedTrail(store, directory, AuditError(
            f"audit: cannot open the trail in {directory}: {exc.strerror or exc}"))
