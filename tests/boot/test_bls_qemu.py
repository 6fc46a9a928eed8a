"""Our systemd-boot entries on real systemd-boot (OVMF, QEMU) agree with the scenario table
and with the simulator's emulator.

Each boot runs twice from the same ESP files: once on real systemd-boot 252
(the shipped ``deploy/systemd-boot`` loader.conf and entries, renamed by our
backend) and once through ``reconciler.sim.boot_bls.boot_once`` on a copy.
Both must pick the same slot, leave the same entry names and report the same
``LoaderEntrySelected``; the real result is then handed back to the backend
(names and the EFI variable) and the scenario's expectations are checked
against what the backend reads.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.boot import BootState
from reconciler.boot.bls import LOADER_GUID, BlsBackend, read_efivar_string
from reconciler.durable import atomic_write
from reconciler.sim.boot_bls import boot_once, init_env

from .bls_rig import TOOLS, BlsRig, sync_names
from .scenarios import SCENARIOS, Scenario, mismatches, run_scenario

pytestmark = pytest.mark.needs_tool(*TOOLS)
SELECTED = f"LoaderEntrySelected-{LOADER_GUID}"


@pytest.fixture(scope="session")
def bls_rig(tmp_path_factory: pytest.TempPathFactory) -> BlsRig:
    """The payloads and the template ESP image, built once for the session."""
    return BlsRig(tmp_path_factory.mktemp("bls-rig"))


class LockstepDevice:
    """A device whose every boot runs on real systemd-boot and on the emulator."""

    def __init__(self, rig: BlsRig, directory: Path) -> None:
        self.rig = rig
        self.dir = directory
        self.esp = rig.esp_dir(directory / "device" / "esp")
        self.boots = 0

    def boot(self) -> str:
        self.boots += 1
        emulated_slot, emulated_names, emulated_selected = self._emulate()
        real = self.rig.boot(self.esp, self.dir / "esp.img")
        context = f"boot {self.boots}; console tail:\n{self.rig.last_console[-1500:]}"
        assert emulated_slot == real.slot, f"emulator chose {emulated_slot}; {context}"
        assert emulated_names == real.entries, f"emulator left {emulated_names}; {context}"
        assert emulated_selected == real.entry_selected, context
        sync_names(self.esp, real.entries)
        _set_selected(self.esp.parent / "efivars", real.entry_selected)
        return real.slot

    def _emulate(self) -> tuple[str, list[str], str | None]:
        copy = self.dir / "emulator"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.esp.parent, copy)
        slot = boot_once(copy / "esp").slot
        names = sorted(p.name for p in (copy / "esp" / "loader" / "entries").iterdir())
        return slot, names, read_efivar_string(copy / "efivars" / SELECTED)


def _set_selected(efivars: Path, entry: str) -> None:
    atomic_write(efivars / SELECTED, struct.pack("<I", 6) + (entry + "\0").encode("utf-16-le"))


def emulator_only(esp: Path) -> Callable[[], str]:
    return lambda: boot_once(esp).slot


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_the_emulator_alone_passes_the_scenario(scenario: Scenario, tmp_path: Path) -> None:
    esp = init_env(tmp_path / "boot")
    observed = run_scenario(scenario, lambda: BlsBackend(esp), emulator_only(esp))
    assert mismatches(scenario, observed) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_real_systemd_boot_and_the_emulator_agree_on_the_scenario(
    scenario: Scenario, bls_rig: BlsRig, tmp_path: Path
) -> None:
    device = LockstepDevice(bls_rig, tmp_path)
    observed = run_scenario(scenario, lambda: BlsBackend(device.esp), device.boot)
    assert mismatches(scenario, observed) == []


def test_trial_of_a_from_default_b_falls_back_to_b_on_both(
    bls_rig: BlsRig, tmp_path: Path
) -> None:
    """Fallback must not depend on the slot names' sort order (b sorts before a)."""
    device = LockstepDevice(bls_rig, tmp_path)
    backend = BlsBackend(device.esp)
    backend.set_mark("B", "staged")
    backend.mark_good("B")
    backend.arm_trial("A", 1)
    assert [device.boot(), device.boot()] == ["A", "B"]
    state = backend.read()
    assert (state.default, state.marks["A"], state.fallback_reason) == \
        ("B", "bad", "A: trial tries exhausted")


def test_a_repaired_esp_boots_its_rebuilt_entry_on_real_systemd_boot(
    bls_rig: BlsRig, tmp_path: Path
) -> None:
    """B's entry lost and loader.conf garbage: the repair rebuilds B's entry from A's and
    writes loader.conf with the shipped settings; real systemd-boot boots the rebuilt entry
    on its trial, counts it, then falls back to A, exactly as the emulator does."""
    device = LockstepDevice(bls_rig, tmp_path)
    (device.esp / "loader" / "entries" / "kruxos-b+0.conf").unlink()
    (device.esp / "loader" / "loader.conf").write_bytes(bytes(range(256)) * 4)
    backend = BlsBackend(device.esp)
    said = backend.repair(BootState(default="A", trial="B", tries_left=1,
                                    marks={"A": "good", "B": "staged"}))
    assert said is not None and "slot B's entry rebuilt from kruxos-a.conf" in said
    assert [device.boot(), device.boot()] == ["B", "A"]
    state = backend.read()
    assert (state.default, state.marks["B"], state.fallback_reason) == \
        ("A", "bad", "B: trial tries exhausted")
