"""A whole update through the reconciler's seam: the real decide and executor, fake parts.

State store, audit trail, boot backend, channel, stager, health prober,
rebooter, the running machine (booted slot, boot id, the slots' identities),
the spec keeper and the inbox of requests are in-memory fakes
(``tests/memory_parts.py``); only the device config is a file. Every effect is
written to one journal, so the test can check the straight line: each
decision is recorded before anything it does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.config import Device, load_device
from reconciler.health import HealthAnswer
from reconciler.reconcile import Parts, Reconciler
from reconciler.sim.device import init_device
from tests.memory_parts import (
    FakeChannel,
    FakeStager,
    Journal,
    MemoryAudit,
    MemoryBackend,
    MemoryInbox,
    MemoryKeeper,
    MemoryMachine,
    MemoryStore,
)


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
                  keeper=MemoryKeeper(device.spec_path.read_text()),  # type: ignore[arg-type]
                  inbox=MemoryInbox())
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
