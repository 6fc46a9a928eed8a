"""Our boot.cmd on real U-Boot under QEMU agrees with the scenario table and with the emulator.

Each boot runs twice from the same env: once on real U-Boot 2023.01
(``qemu-system-arm -M virt``, the shipped ``deploy/uboot/boot.cmd`` built
unchanged into ``boot.scr``, ``kruxos_store=fat``: the env is the
``uboot.env`` our backend wrote, put on the FAT partition with mtools) and
once through the simulator's ``boot_once`` on a copy of the same bytes. Both
must pick the same slot and leave the same variables; U-Boot's env is then
handed back to the backend, and the scenario's expectations are checked
against what the backend reads. ``fw_printenv`` reads what U-Boot wrote too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.boot import ubootenv
from reconciler.boot.uboot import OWN, UBootBackend
from reconciler.boot.ubootenv import EnvCopy
from reconciler.durable import atomic_write
from reconciler.sim.boot_uboot import boot_once, init_env

from .scenarios import SCENARIOS, Scenario, mismatches, run_scenario
from .uboot_rig import ENV_SIZE, SHIPPED_CMD, TOOLS, UBootRig, run

pytestmark = pytest.mark.needs_tool(*TOOLS)


@pytest.fixture(scope="session")
def uboot_rig(tmp_path_factory: pytest.TempPathFactory) -> UBootRig:
    """One boot.scr, flash image and template disk for the whole session."""
    return UBootRig(tmp_path_factory.mktemp("uboot-rig"))


def single_copy(directory: Path) -> Path:
    """A ``fw_env.config`` for one 16 KiB ``uboot.env`` in ``directory`` (the FAT file's format)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "fw_env.config"
    config.write_text(ubootenv.config_text([EnvCopy(directory / "uboot.env", 0, ENV_SIZE)]))
    return config


def ours(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key in OWN}


def variables(raw: bytes | None) -> dict[str, str] | None:
    """The variables of a single-copy env file (``None``: no file; ``{}``: bad CRC)."""
    if raw is None:
        return None
    decoded = ubootenv.decode(raw, False)
    return {} if decoded is None else decoded[1]


class LockstepDevice:
    """A board whose every boot runs on real U-Boot and on the emulator from the same env."""

    def __init__(self, rig: UBootRig, directory: Path) -> None:
        self.rig = rig
        self.config = single_copy(directory)  # what the backend reads and writes
        self.env_path = directory / "uboot.env"
        self.disk = rig.disk(directory / "disk.img")
        self.emulator_config = single_copy(directory / "emulator")
        self.boots = 0

    def boot(self) -> str:
        """Boot both from the backend's env; assert they agree; keep U-Boot's env."""
        self.boots += 1
        before = self.env_path.read_bytes() if self.env_path.exists() else None
        self.rig.put_env(self.disk, before)
        real = self.rig.boot(self.disk)
        emulated_slot, emulated_env = emulate(self.emulator_config, before)
        context = f"boot {self.boots}; U-Boot console:\n{self.rig.last_console}"
        assert emulated_slot == real.slot, f"emulator chose {emulated_slot}; {context}"
        real_vars, emulated_vars = variables(real.env_after), variables(emulated_env)
        if real_vars is not None and emulated_vars is not None:
            real_vars, emulated_vars = ours(real_vars), ours(emulated_vars)
        assert real_vars == emulated_vars, (
            f"env differs\nU-Boot left: {real_vars}\nemulator left: {emulated_vars}\n{context}")
        if real.env_after is not None:
            atomic_write(self.env_path, real.env_after)
        return real.slot


def emulate(config: Path, env: bytes | None) -> tuple[str, bytes | None]:
    """The emulator's boot from ``env`` (``None``: no file): its slot and the env it left."""
    path = config.parent / "uboot.env"
    path.unlink(missing_ok=True)
    if env is not None:
        path.write_bytes(env)
    slot = boot_once(config).slot
    return slot, path.read_bytes() if path.exists() else None


def emulator_only(config: Path) -> Callable[[], str]:
    return lambda: boot_once(config).slot


# -- the scenario table ---------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_the_emulator_alone_passes_the_scenario_on_a_redundant_env(
    scenario: Scenario, tmp_path: Path
) -> None:
    config = init_env(tmp_path / "boot")
    observed = run_scenario(scenario, lambda: UBootBackend(config), emulator_only(config))
    assert mismatches(scenario, observed) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_real_uboot_and_the_emulator_agree_on_the_scenario(
    scenario: Scenario, uboot_rig: UBootRig, tmp_path: Path
) -> None:
    device = LockstepDevice(uboot_rig, tmp_path)
    observed = run_scenario(scenario, lambda: UBootBackend(device.config), device.boot)
    assert mismatches(scenario, observed) == []


# -- unusual envs, one boot each ----------------------------------------------------------

OURS_ARMED = {"KRUXOS_DEFAULT": "A", "KRUXOS_TRIAL": "B", "KRUXOS_TRIES": "3",
              "KRUXOS_A": "good", "KRUXOS_B": "staged"}


def env(**variables: str) -> bytes:
    return ubootenv.encode(variables, ENV_SIZE)


EDGE_ENVS: dict[str, tuple[bytes | None, str]] = {
    "never written": (None, "A"),
    "only foreign variables": (env(bootcmd="echo hi", note="a=b é"), "A"),
    "default B, no trial": (env(KRUXOS_DEFAULT="B", KRUXOS_TRIES="3"), "B"),
    "damaged default": (env(KRUXOS_DEFAULT="b"), "A"),
    "trial of an unknown slot": (env(KRUXOS_DEFAULT="A", KRUXOS_TRIAL="C", KRUXOS_TRIES="3"),
                                 "A"),
    "trial of A from default B": (env(KRUXOS_DEFAULT="B", KRUXOS_TRIAL="A", KRUXOS_TRIES="9"),
                                  "A"),
    "countdown amid foreign variables": (env(**OURS_ARMED, bootcmd="x", zz="y"), "B"),
    "exhaustion": (env(**{**OURS_ARMED, "KRUXOS_TRIES": "0"}), "A"),
    "hex-looking damaged counter": (env(KRUXOS_TRIAL="B", KRUXOS_TRIES="a"), "A"),
    "two-digit counter": (env(KRUXOS_TRIAL="B", KRUXOS_TRIES="10"), "A"),
    "no counter, marks missing": (env(KRUXOS_TRIAL="B"), "A"),
    "bad CRC": (bytes([1]) + env(**OURS_ARMED)[1:], "A"),
    "blank file": (bytes(ENV_SIZE), "A"),
}


@pytest.mark.parametrize("name", EDGE_ENVS)
def test_real_uboot_and_the_emulator_agree_on_an_unusual_env(
    name: str, uboot_rig: UBootRig, tmp_path: Path
) -> None:
    raw, slot = EDGE_ENVS[name]
    device = LockstepDevice(uboot_rig, tmp_path)
    if raw is not None:
        device.env_path.write_bytes(raw)
    assert device.boot() == slot


@pytest.mark.needs_tool("fw_printenv")
def test_fw_printenv_reads_the_env_u_boot_wrote(uboot_rig: UBootRig, tmp_path: Path) -> None:
    device = LockstepDevice(uboot_rig, tmp_path)
    device.env_path.write_bytes(env(**OURS_ARMED))
    assert device.boot() == "B"
    out = subprocess.run(["fw_printenv", "-c", str(device.config)], capture_output=True,
                         text=True, timeout=10, check=True)
    assert dict(line.split("=", 1) for line in out.stdout.splitlines()) == {
        **OURS_ARMED, "KRUXOS_TRIES": "2"}


def test_the_rig_runs_the_shipped_script_verbatim(uboot_rig: UBootRig, tmp_path: Path) -> None:
    disk = uboot_rig.disk(tmp_path / "disk.img")
    installed = run(["mcopy", "-n", "-i", f"{disk}@@1M", "::/boot.scr", "-"])
    assert installed[64 + 8:].rstrip(b"\0") == SHIPPED_CMD.read_bytes().rstrip(b"\0")


def test_with_saveenv_storage_a_counter_u_boot_cannot_save_boots_the_default_on_both(
    uboot_rig: UBootRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boot.cmd's product flavour (no ``kruxos_store``): our variables in U-Boot's own env.

    ``saveenv`` to this QEMU's flash fails (QEMU issue 2343), which exercises
    the ``if run kruxos_save`` else branch: the trial is not booted, since
    its try would not count. The emulator does the same when its save fails.
    """
    disk = uboot_rig.disk(tmp_path / "disk.img")
    uboot_rig.seed_flash(disk, {"kruxos_store": None, **OURS_ARMED})
    assert uboot_rig.boot(disk).slot == "A"
    assert "cannot save the try counter; booting default slot A" in uboot_rig.last_console
    assert "Saving Environment to Flash" in uboot_rig.last_console

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    config = single_copy(tmp_path / "emulator")
    (config.parent / "uboot.env").write_bytes(env(**OURS_ARMED))
    monkeypatch.setattr(ubootenv, "edit", read_only)
    assert boot_once(config).slot == "A"
