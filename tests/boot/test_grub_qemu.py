"""Our grub.cfg on real GRUB under QEMU agrees with the scenario table and with the emulator.

Each boot runs twice from the same grubenv bytes: once on real GRUB 2.06
(``qemu-system-i386``, the shipped ``deploy/grub/grub.cfg`` sourced unchanged,
the grubenv our backend wrote) and once through the simulator's
``boot_once``. Both must pick the same slot and leave byte-identical
grubenvs; GRUB's result is then handed back to the backend and the scenario's
expectations are checked against what the backend reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.boot import grubenv
from reconciler.boot.grub import GrubBackend
from reconciler.durable import atomic_write
from reconciler.sim.bootloader import boot_once

from .grub_rig import SHIPPED_CFG, TOOLS, GrubRig, run
from .scenarios import SCENARIOS, Scenario, mismatches, run_scenario

pytestmark = pytest.mark.needs_tool(*TOOLS)


@pytest.fixture(scope="session")
def grub_rig(tmp_path_factory: pytest.TempPathFactory) -> GrubRig:
    """One core.img and template disk for the whole session."""
    return GrubRig(tmp_path_factory.mktemp("grub-rig"))


class LockstepDevice:
    """A device whose every boot runs on real GRUB and on the emulator from the same env."""

    def __init__(self, rig: GrubRig, directory: Path) -> None:
        self.rig = rig
        self.env_path = directory / "grubenv"  # what the backend reads and writes
        self.disk = rig.disk(directory / "disk.img")
        (directory / "emulator").mkdir()
        self.emulator_env = directory / "emulator" / "grubenv"
        self.boots = 0

    def boot(self) -> str:
        """Boot both from the backend's env; assert they agree; keep GRUB's env."""
        self.boots += 1
        before = self.env_path.read_bytes() if self.env_path.exists() else None
        self.rig.put_env(self.disk, before)
        real = self.rig.boot(self.disk)
        emulated_slot, emulated_env = emulate(self.emulator_env, before)
        context = f"boot {self.boots}; GRUB console:\n{self.rig.last_console}"
        assert emulated_slot == real.slot, f"emulator chose {emulated_slot}; {context}"
        assert emulated_env == real.env_after, env_diff(real.env_after, emulated_env, context)
        if real.env_after is not None:
            atomic_write(self.env_path, real.env_after)
        return real.slot


def emulate(env_path: Path, env: bytes | None) -> tuple[str, bytes | None]:
    """The emulator's boot from ``env`` (``None``: no file): its slot and the env it left."""
    env_path.unlink(missing_ok=True)
    if env is not None:
        env_path.write_bytes(env)
    slot = boot_once(env_path).slot
    return slot, env_path.read_bytes() if env_path.exists() else None


def env_diff(real: bytes | None, emulated: bytes | None, context: str) -> str:
    def show(raw: bytes | None) -> str:
        return "no file" if raw is None else raw.rstrip(b"#").decode(errors="replace")

    return f"grubenv differs\nGRUB left:\n{show(real)}\nemulator left:\n{show(emulated)}\n{context}"


def emulator_only(directory: Path) -> Callable[[], str]:
    return lambda: boot_once(directory / "grubenv").slot


# -- the scenario table ---------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_the_emulator_alone_passes_the_scenario(scenario: Scenario, tmp_path: Path) -> None:
    observed = run_scenario(scenario, lambda: GrubBackend(tmp_path / "grubenv"),
                            emulator_only(tmp_path))
    assert mismatches(scenario, observed) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_real_grub_and_the_emulator_agree_on_the_scenario(
    scenario: Scenario, grub_rig: GrubRig, tmp_path: Path
) -> None:
    device = LockstepDevice(grub_rig, tmp_path)
    observed = run_scenario(scenario, lambda: GrubBackend(device.env_path), device.boot)
    assert mismatches(scenario, observed) == []


# -- env edge cases, one boot each --------------------------------------------------

def block(*lines: str) -> bytes:
    """A grubenv holding ``name=value`` lines as given (rendered like grub-editenv)."""
    return grubenv.render(dict(line.split("=", 1) for line in lines))


OURS_ARMED = ("KRUXOS_DEFAULT=A", "KRUXOS_TRIAL=B", "KRUXOS_TRIES=3", "KRUXOS_A=good",
              "KRUXOS_B=staged", "KRUXOS_FALLBACK=")
FOREIGN = ("saved_entry=gnulinux-advanced>x", "note=a\\b\nc = d é")

EDGE_ENVS: dict[str, tuple[bytes | None, str]] = {
    "never written": (None, "A"),
    "only foreign variables": (block(*FOREIGN), "A"),
    "foreign variables named like the script's own": (
        block("kruxos_slot=B", "kruxos_trial=B", "kruxos_counted=1", "default=kruxos-B",
              "KRUXOS_DEFAULT=A", "KRUXOS_TRIAL="), "A"),
    "default B, no trial": (block("KRUXOS_DEFAULT=B", "KRUXOS_TRIAL=", "KRUXOS_TRIES=3"), "B"),
    "damaged default": (block("KRUXOS_DEFAULT=b"), "A"),
    "trial of an unknown slot": (block("KRUXOS_DEFAULT=A", "KRUXOS_TRIAL=C",
                                       "KRUXOS_TRIES=3"), "A"),
    "trial of A from default B": (block("KRUXOS_DEFAULT=B", "KRUXOS_TRIAL=A",
                                        "KRUXOS_TRIES=9"), "A"),
    "countdown amid foreign variables": (block(FOREIGN[0], *OURS_ARMED, FOREIGN[1]), "B"),
    "exhaustion amid foreign variables": (
        block(FOREIGN[0], *OURS_ARMED[:2], "KRUXOS_TRIES=0", *OURS_ARMED[3:], FOREIGN[1]),
        "A"),
    "damaged counter": (block("KRUXOS_TRIAL=B", "KRUXOS_TRIES=x"), "A"),
    "two-digit counter": (block("KRUXOS_TRIAL=B", "KRUXOS_TRIES=10"), "A"),
    "empty counter, marks missing": (block("KRUXOS_TRIAL=B", "KRUXOS_TRIES="), "A"),
    "no room to record the exhaustion": (
        block("KRUXOS_DEFAULT=A", "KRUXOS_TRIAL=B", "KRUXOS_TRIES=0", "KRUXOS_B=staged",
              "filler=" + "x" * 850), "A"),
    "corrupt block": (b"\0" * grubenv.BLOCK_SIZE, "A"),
}


@pytest.mark.parametrize("name", EDGE_ENVS)
def test_real_grub_and_the_emulator_agree_on_an_unusual_env(
    name: str, grub_rig: GrubRig, tmp_path: Path
) -> None:
    env, slot = EDGE_ENVS[name]
    device = LockstepDevice(grub_rig, tmp_path)
    if env is not None:
        device.env_path.write_bytes(env)
    assert device.boot() == slot


def test_a_try_counter_grub_cannot_save_boots_the_default_on_both(
    grub_rig: GrubRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``if save_env ...`` takes the else branch on real GRUB when the write fails.

    The env sits in a loopback image (GRUB reads it, cannot write it): the
    trial must not be booted, since its try would not count.
    """
    env = block(*OURS_ARMED)
    disk = grub_rig.disk(tmp_path / "disk.img")
    grub_rig.put_env(disk, env)
    grub_rig.make_env_read_only(disk)
    assert grub_rig.boot(disk).slot == "A"
    assert "cannot save the try counter" in grub_rig.last_console
    assert grub_rig.read_only_env(disk) == env

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(grubenv, "edit", read_only)
    (tmp_path / "grubenv").write_bytes(env)
    assert boot_once(tmp_path / "grubenv").slot == "A"
    assert (tmp_path / "grubenv").read_bytes() == env


def test_the_rig_runs_the_shipped_script_verbatim(grub_rig: GrubRig, tmp_path: Path) -> None:
    disk = grub_rig.disk(tmp_path / "disk.img")
    installed = run(["mcopy", "-n", "-i", f"{disk}@@1M", "::/boot/grub/kruxos.cfg", "-"])
    assert installed == SHIPPED_CFG.read_bytes()
