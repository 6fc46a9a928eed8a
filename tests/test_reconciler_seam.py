"""A whole update through the reconciler's seam: the real decide and executor, fake parts.

State store, audit trail, boot backend, channel, stager, health prober,
rebooter, the running machine (booted slot, boot id, the slots' identities)
and the spec keeper are in-memory fakes; only the device config and its empty
inbox are files. Every effect is written to one journal, so the test can check
the straight line: each decision is recorded before anything it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.audit import AuditRecord
from reconciler.boot import BootState, Mark, SlotName, other
from reconciler.config import Device, load_device
from reconciler.health import HealthAnswer
from reconciler.observed import ChannelView
from reconciler.reconcile import Parts, Reconciler
from reconciler.release.identity import SlotIdentity
from reconciler.sim.device import init_device
from reconciler.spec import UpdatePolicy
from reconciler.specfile import LoadedSpec, parse_spec
from reconciler.state import dump_state
from reconciler.store import StateStore

Journal = list[str]


class MemoryStore(StateStore):
    """The state document in a dict (validated by the same model on every write)."""

    def __init__(self, data_dir: Path, journal: Journal) -> None:
        super().__init__(data_dir)
        self.doc: dict[str, Any] = {}
        self.journal = journal
        self.reserve = _NoReserve()  # type: ignore[assignment]

    def load(self) -> dict[str, Any]:
        return dict(self.doc)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        doc = self.load()
        change(doc)
        self.doc = dump_state(doc)
        if set(self.doc) - {"schema", "audit"}:
            self.journal.append("state")
        return self.doc


class _NoReserve:
    in_use = False

    def replenish(self) -> bool:
        return True

    def release(self) -> bool:
        return False


class MemoryAudit:
    """The audit trail as a list; the same calls the reconciler makes on the real one."""

    def __init__(self, journal: Journal) -> None:
        self.records: list[dict[str, Any]] = []
        self.journal = journal

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

    def _add(self, kind: str, action: str, reason: str) -> dict[str, Any]:
        record = {"seq": len(self.records) + 1, "kind": kind, "action": action,
                  "reason": reason}
        self.records.append(record)
        self.journal.append(f"{kind}:{action}")
        return record


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


class FakeChannel:
    """A channel that lists 1.0.0 and 1.0.1."""

    def view(self, policy: UpdatePolicy, revision: str, now: datetime) -> ChannelView:
        return ChannelView(versions=frozenset({"1.0.0", "1.0.1"}), latest="1.0.1")

    def refresh(self, policy: UpdatePolicy, now: datetime) -> None:
        return None


class MemoryMachine:
    """The running system in memory: which slot booted, this boot's id, the slots' releases."""

    def __init__(self) -> None:
        self.booted: SlotName = "A"
        self.boots = 1
        self.identities: dict[SlotName, SlotIdentity | None] = {
            "A": SlotIdentity(version="1.0.0"), "B": None}

    def booted_slot(self) -> SlotName:
        return self.booted

    def boot_id(self) -> str:
        return f"boot-{self.boots}"

    def slot_identity(self, slot: SlotName) -> tuple[SlotIdentity | None, str | None]:
        return self.identities[slot], None


class MemoryKeeper:
    """A spec in force held in memory (validated by the real parser once)."""

    def __init__(self, text: str) -> None:
        self.loaded = parse_spec(text.encode())
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
    """Writes the release's identity into the slot (what observe reads back)."""

    def __init__(self, machine: MemoryMachine, backend: MemoryBackend, journal: Journal) -> None:
        self.machine, self.backend, self.journal = machine, backend, journal

    def stage(self, version: str, slot: SlotName, policy: UpdatePolicy,
              should_stop: Callable[[], bool],
              progress: Callable[[int | None, int], None]) -> str:
        self.journal.append("stage")
        progress(None, 4096)
        self.backend.set_mark(slot, "bad")
        self.machine.identities[slot] = None  # destroyed before the first block
        self.machine.identities[slot] = SlotIdentity(version=version)  # written last
        self.backend.set_mark(slot, "staged")
        return f"{version} written to slot {slot}"


@pytest.fixture
def device(tmp_path: Path) -> Device:
    init_device(tmp_path / "dev")
    for name in ("cmdline", "boot_id"):  # the machine is in memory: nothing reads these
        (tmp_path / "dev" / "run" / name).unlink(missing_ok=True)
    spec = tmp_path / "dev" / "spec.yaml"
    spec.write_text(spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    return load_device(tmp_path / "dev" / "device.yaml")


def _reboot_into(machine: MemoryMachine, backend: MemoryBackend,
                 boots: list[str]) -> Callable[[str], None]:
    def reboot(reason: str) -> None:
        slot = backend.boot()
        boots.append(slot)
        machine.booted = slot
        machine.boots += 1

    return reboot


def test_a_whole_update_runs_through_the_seam_with_each_decision_recorded_first(
        device: Device) -> None:
    journal: Journal = []
    backend = MemoryBackend(journal)
    boots: list[str] = []
    healthy = HealthAnswer(healthy=True, status=200)
    clock = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC)]
    machine = MemoryMachine()
    parts = Parts(store=MemoryStore(device.data_dir, journal),
                  audit=MemoryAudit(journal),  # type: ignore[arg-type]
                  backend=backend, channel=FakeChannel(),
                  stager=FakeStager(machine, backend, journal),
                  prober=lambda url, timeout: healthy,
                  rebooter=_reboot_into(machine, backend, boots), machine=machine,
                  keeper=MemoryKeeper(device.spec_path.read_text()))  # type: ignore[arg-type]
    rec = Reconciler(device, clock=lambda: clock[0], parts=parts)

    kinds = []
    for _ in range(8):
        result = rec.run_pass("daemon")
        assert result.action is not None and result.outcome is not None, result
        assert result.outcome.ok, result.outcome
        kinds.append(result.action.kind)
        clock[0] += timedelta(seconds=1)
        if kinds[-1] == "nothing":
            break
    assert kinds == ["stage", "reboot", "probe", "confirm", "nothing"], kinds
    assert boots == ["B"]
    assert backend.state.default == "B" and backend.state.marks["B"] == "good"
    # the straight line: no effect before the decision that asked for it
    for index, entry in enumerate(journal):
        if entry in ("state", "boot", "stage"):
            assert any(e.startswith("decision:") for e in journal[:index]), journal
    decisions = [i for i, e in enumerate(journal) if e.startswith("decision:")]
    for position, start in enumerate(decisions):
        end = decisions[position + 1] if position + 1 < len(decisions) else len(journal)
        effects = journal[start + 1:end]
        if "outcome" in " ".join(effects):
            assert effects[-1].startswith("outcome:"), (journal[start], effects)
