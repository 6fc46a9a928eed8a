"""The reconciler's collaborators in memory: what the seam test and the model checker run.

Each fake offers the calls the reconciler makes on the real part (``Parts``),
so a whole pass runs with the real ``decide`` and the real executor and no
file, process or network. Every durable write (a state document, an audit
record or head, a boot env, a slot's bytes) goes through one :class:`Disk`,
which numbers the writes and can kill the process after the N-th one: a kill
between any two durable writes is then an event a test can place exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.audit import AuditRecord
from reconciler.boot import BootState, Mark, SlotName, other
from reconciler.boot.abvars import VariableBackend
from reconciler.boot.bls import BlsBackend
from reconciler.errors import Stopped
from reconciler.observed import ChannelView
from reconciler.release.identity import SlotIdentity
from reconciler.spec import UpdatePolicy
from reconciler.specfile import LoadedSpec, parse_spec
from reconciler.state import dump_state
from reconciler.store import StateStore

Journal = list[str]
ZERO = "0" * 64


class Killed(BaseException):
    """The process died at this point (a ``BaseException``: nothing in the product catches it)."""


@dataclass
class Disk:
    """Counts durable writes; with ``kill_after`` set, the write after that many never happens.

    Each write is durable once it returns (the product fsyncs each one), so a
    power cut in the middle of a write loses that write only: the same state
    as a kill right before it.
    """

    kill_after: int | None = None
    writes: list[str] = field(default_factory=list)

    def write(self, what: str, apply: Callable[[], None]) -> None:
        """Do one durable write, or die instead when the kill is due."""
        if self.kill_after is not None and len(self.writes) >= self.kill_after:
            raise Killed(f"killed before durable write {len(self.writes) + 1} ({what})")
        apply()
        self.writes.append(what)


class MemoryStore(StateStore):
    """The state document in a dict (validated by the same model on every write)."""

    def __init__(self, data_dir: Path, journal: Journal, disk: Disk | None = None,
                 doc: dict[str, Any] | None = None) -> None:
        super().__init__(data_dir)
        self.doc: dict[str, Any] = dict(doc or {})
        self.journal = journal
        self.disk = disk or Disk()
        self.reserve = _NoReserve()  # type: ignore[assignment]

    def load(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.doc))  # type: ignore[no-any-return]

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        doc = self.load()
        change(doc)
        new = dump_state(doc)

        def store() -> None:
            self.doc = new

        self.disk.write("state", store)
        if set(self.doc) - {"schema", "audit"}:
            self.journal.append("state")
        return self.doc


class _NoReserve:
    in_use = False

    def replenish(self) -> bool:
        return True

    def release(self) -> bool:
        return False


def _chain_hash(prev: str, record: dict[str, Any]) -> str:
    body = json.dumps({k: record[k] for k in ("seq", "kind", "action", "reason")},
                      sort_keys=True)
    return hashlib.sha256((prev + body).encode()).hexdigest()


class MemoryAudit:
    """The audit trail as a hash-chained list with a head beside it, as the real trail keeps.

    An append writes the record, then the head (two durable writes, as the real
    trail's line and ``head.json``); :meth:`open` finishes a head left one record
    behind by a crash, as the real trail does when it opens.
    """

    def __init__(self, journal: Journal, disk: Disk | None = None,
                 records: list[dict[str, Any]] | None = None,
                 head: tuple[int, str] = (0, ZERO)) -> None:
        self.records: list[dict[str, Any]] = list(records or [])
        self.head = head
        self.journal = journal
        self.disk = disk or Disk()

    def open(self) -> None:
        """Finish a head one record behind the trail (a crash between the two writes)."""
        if self.records and self.head == _before(self.records):
            last = self.records[-1]
            self.disk.write("audit-head", lambda: setattr(self, "head",
                                                          (last["seq"], last["hash"])))

    def problem(self, chained: set[str] | None = None) -> str | None:
        """Why the trail and its head disagree, or ``None`` (``kruxos audit verify``).

        ``chained``: hashes of records already checked with all before them (a model
        checker's many trails share their beginnings); the ones checked here are added.
        """
        known = chained if chained is not None else set()
        start = len(self.records)
        while start and self.records[start - 1]["hash"] not in known:
            start -= 1
        prev = self.records[start - 1]["hash"] if start else ZERO
        for index, record in enumerate(self.records[start:], start + 1):
            if record["seq"] != index or record["prev"] != prev \
                    or record["hash"] != _chain_hash(prev, record):
                return f"record {index} breaks the chain"
            prev = record["hash"]
            known.add(prev)
        end = (self.records[-1]["seq"], prev) if self.records else (0, ZERO)
        if self.head not in (end, _before(self.records)):
            return f"the head {self.head[0]} is neither the trail's end {end[0]} nor one behind"
        return None

    def decision(self, actor: str, action: str, reason: str, *, dedupe: bool = True,
                 **fields: Any) -> tuple[AuditRecord, bool]:
        last = next((r for r in reversed(self.records) if r["kind"] == "decision"), None)
        if dedupe and last is not None and (last["action"], last["reason"]) == (action, reason):
            return _record(last), True
        return _record(self._add("decision", action, reason)), False

    def outcome(self, seq: int, actor: str, action: str, outcome: str,
                duration_s: float | None, **fields: Any) -> None:
        self._add("outcome", action, outcome)

    def event(self, actor: str, action: str, reason: str, **fields: Any) -> None:
        self._add("event", action, reason)

    def failed_version(self) -> None:
        return None

    def trial_started(self) -> None:
        return None

    def _add(self, kind: str, action: str, reason: str) -> dict[str, Any]:
        prev = self.records[-1]["hash"] if self.records else ZERO
        record: dict[str, Any] = {"seq": len(self.records) + 1, "kind": kind, "action": action,
                                  "reason": reason, "prev": prev}
        record["hash"] = _chain_hash(prev, record)
        self.disk.write("audit", lambda: self.records.append(record))
        self.disk.write("audit-head", lambda: setattr(self, "head",
                                                      (record["seq"], record["hash"])))
        self.journal.append(f"{kind}:{action}")
        return record


def _before(records: list[dict[str, Any]]) -> tuple[int, str]:
    """The head as it was before the last record (``(0, zeros)`` for one record or none)."""
    if len(records) < 2:
        return (0, ZERO)
    return (records[-2]["seq"], records[-2]["hash"])


def _record(value: dict[str, Any]) -> AuditRecord:
    return AuditRecord(seq=value["seq"], time="2026-11-30T12:00:00Z", kind=value["kind"],
                       actor="daemon", action=value["action"], reason=value["reason"],
                       spec_revision=None, spec_file=None, observed=None, outcome=None,
                       duration_s=None, decision=None)


class MemoryBackend:
    """A bootloader env in memory, with the boot script's trial countdown."""

    name = "memory"

    def __init__(self, journal: Journal) -> None:
        self.state = BootState(default="A", marks={"A": "good", "B": "empty"})
        self.journal = journal

    def read(self) -> BootState:
        return self.state

    def _set(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)
        self.journal.append("boot")

    def set_mark(self, slot: SlotName, mark: Mark) -> None:
        self._set(marks={**self.state.marks, slot: mark})

    def arm_trial(self, slot: SlotName, tries: int) -> None:
        self._set(trial=slot, tries_left=tries)

    def mark_good(self, slot: SlotName) -> None:
        self._set(default=slot, trial=None, tries_left=0, marks={**self.state.marks,
                                                                 slot: "good"})

    def rollback(self, reason: str) -> None:
        trial = self.state.trial or other(self.state.default)
        self._set(trial=None, tries_left=0, fallback_reason=reason,
                  marks={**self.state.marks, trial: "bad"})

    def repair(self, state: BootState) -> None:
        self._set(**{k: getattr(state, k) for k in ("default", "trial", "tries_left", "marks")})

    def boot(self) -> SlotName:
        """One power-on: the trial slot while tries are left, else the default."""
        trial = self.state.trial
        if trial is not None and self.state.tries_left > 0:
            self.state = replace(self.state, tries_left=self.state.tries_left - 1)
            return trial
        return self.state.default


class MemoryEnvBackend(VariableBackend):
    """The ``KRUXOS_*`` variables of GRUB and U-Boot in a dict, under the real backends' rules.

    Every rule (what each operation may do, what a value means) is
    :class:`~reconciler.boot.abvars.VariableBackend`'s, the code the ``grub`` and
    ``uboot`` backends run; only the storage is a dict, written through the
    :class:`Disk` as one durable write.
    """

    name = "memory"
    loader = "the boot script"

    def __init__(self, env: dict[str, str], disk: Disk, journal: Journal) -> None:
        super().__init__(Path("memory-env"), Path("memory-env.bak"))
        self.env = dict(env)
        self.disk = disk
        self.journal = journal

    def _load(self) -> dict[str, str]:
        return dict(self.env)

    def _store(self, env: dict[str, str]) -> None:
        self.disk.write("boot", lambda: setattr(self, "env", dict(env)))
        self.journal.append("boot")

    def _fits(self, env: dict[str, str]) -> None:
        return None

    def _backup_default(self) -> SlotName | None:
        return "B" if self.env.get("KRUXOS_DEFAULT") == "B" else "A"


class CountedBlsBackend(BlsBackend):
    """The real ``bls`` backend on a real ESP directory, each of its writes one durable write.

    Nothing of the backend is replaced but where its writes are counted: an
    entry's rename (with its directory fsync), loader.conf's atomic rewrite, and
    in a repair each entry placed or moved aside, all through the :class:`Disk`,
    so a kill or cut falls between any two of them.
    """

    def __init__(self, esp: Path, efivars: Path, disk: Disk, journal: Journal) -> None:
        super().__init__(esp, efivars)
        self.disk = disk
        self.journal = journal
        self.wrote = False  # whether any write of this backend happened (the ESP changed)

    def _rename(self, view: Any, slot: SlotName, name: str) -> None:
        entry = view.entries[slot]
        if entry is not None and entry.name == name:
            return  # nothing to write
        self._write("boot-entry", lambda: BlsBackend._rename(self, view, slot, name))

    def _write_conf(self, view: Any) -> None:
        self._write("boot-conf", lambda: BlsBackend._write_conf(self, view))

    def _place(self, *args: Any) -> None:
        self._write("boot-entry", lambda: BlsBackend._place(self, *args))

    def _aside(self, *args: Any) -> None:
        self._write("boot-aside", lambda: BlsBackend._aside(self, *args))

    def _write(self, what: str, apply: Callable[[], None]) -> None:
        def write() -> None:
            self.wrote = True  # before: a write that raises half way may have changed the ESP
            apply()

        self.disk.write(what, write)
        self.journal.append("boot")


class FakeChannel:
    """A channel that lists ``versions`` (by default 1.0.0 and 1.0.1), the last the latest."""

    def __init__(self, versions: tuple[str, ...] = ("1.0.0", "1.0.1")) -> None:
        self.versions = versions

    def view(self, policy: UpdatePolicy, revision: str, now: datetime) -> ChannelView:
        return ChannelView(versions=frozenset(self.versions), latest=self.versions[-1])

    def refresh(self, policy: UpdatePolicy, now: datetime) -> None:
        return None


class MemoryMachine:
    """The running system in memory: which slot booted, this boot's id, the slots' releases."""

    def __init__(self, identities: dict[SlotName, SlotIdentity | None] | None = None,
                 booted: SlotName = "A", boots: int = 1, disk: Disk | None = None) -> None:
        self.booted: SlotName = booted
        self.boots = boots
        self.identities: dict[SlotName, SlotIdentity | None] = dict(identities or {
            "A": SlotIdentity(version="1.0.0"), "B": None})
        self.disk = disk or Disk()

    def booted_slot(self) -> SlotName:
        return self.booted

    def boot_id(self) -> str:
        return f"boot-{self.boots}"

    def slot_identity(self, slot: SlotName) -> tuple[SlotIdentity | None, str | None]:
        return self.identities[slot], None

    def write_identity(self, slot: SlotName, identity: SlotIdentity | None) -> None:
        """A durable write of the slot's own bytes (its identity destroyed or written)."""
        self.disk.write("slot", lambda: self.identities.__setitem__(slot, identity))


class MemoryKeeper:
    """A spec in force held in memory (validated by the real parser once)."""

    def __init__(self, text: str | LoadedSpec) -> None:
        self.loaded = text if isinstance(text, LoadedSpec) else parse_spec(text.encode())
        self.file_revision: str | None = self.loaded.revision

    def refresh(self) -> tuple[LoadedSpec | None, None]:
        return self.loaded, None

    def copy_revision(self) -> str | None:
        return self.loaded.revision

    def rejected(self) -> str | None:
        return None

    def note_rejected(self, revision: str) -> None:
        raise AssertionError("the spec in memory is valid")


class FakeStager:
    """Writes the release's identity into the slot (what observe reads back), in the
    installer's order: slot marked bad, staging recorded, identity destroyed, the
    blocks, a stop check, the identity written last, the slot marked staged."""

    def __init__(self, machine: MemoryMachine,
                 backend: MemoryBackend | MemoryEnvBackend | CountedBlsBackend,
                 journal: Journal) -> None:
        self.machine, self.backend, self.journal = machine, backend, journal

    def stage(self, version: str, slot: SlotName, policy: UpdatePolicy,
              should_stop: Callable[[], bool],
              progress: Callable[[int | None, int], None]) -> str:
        self.journal.append("stage")
        self.backend.set_mark(slot, "bad")
        progress(None, 4096)
        self.machine.write_identity(slot, None)  # destroyed before the first block
        if should_stop():
            raise Stopped(f"staging of {version} stopped at block 1 of 1; it resumes "
                                 "there", delay=1.0)
        self.machine.write_identity(slot, SlotIdentity(version=version))  # written last
        self.backend.set_mark(slot, "staged")
        return f"{version} written to slot {slot}"


class MemoryInbox:
    """A person's requests in memory, as (id, request) in the order they were made."""

    def __init__(self, requests: list[tuple[str, dict[str, Any]]] | None = None,
                 disk: Disk | None = None) -> None:
        self.requests = list(requests or [])
        self.disk = disk or Disk()

    def post(self, request_id: str, kind: str, **fields: Any) -> None:
        """What ``kruxos update ...`` drops into the inbox."""
        self.requests.append((request_id, {"kind": kind, "at": 0.0, "by": "a person",
                                           **fields}))

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return [(rid, dict(value)) for rid, value in self.requests]

    def waiting(self, kinds: frozenset[str]) -> bool:
        return any(value["kind"] in kinds for _, value in self.requests)

    def take(self, request_id: str) -> None:
        self.disk.write("inbox", lambda: setattr(
            self, "requests", [(rid, v) for rid, v in self.requests if rid != request_id]))
