"""The uboot backend's state machine, driven together with the simulated U-Boot (boot.cmd)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.boot import REGISTRY, BootState, open_backend, ubootenv
from reconciler.boot.uboot import OWN, UBootBackend
from reconciler.errors import BootEnvError
from reconciler.sim.boot_uboot import BOARD_ENV, COPY_SIZE, boot_once, init_env
from reconciler.sim.bootloader import COUNTDOWN

BOOT_CMD = Path(__file__).resolve().parent.parent / "deploy" / "uboot" / "boot.cmd"

FOREIGN = {"bootcmd": "run distro_bootcmd", "bootargs": "console=ttyAMA0 quiet",
           "vendor_note": "multi\nline \\ é"}
FRESH = BootState(default="A", marks={"A": "good", "B": "empty"})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_env(tmp_path / "boot")


@pytest.fixture
def uboot(config: Path) -> UBootBackend:
    return UBootBackend(config)


def staged_b(uboot: UBootBackend) -> UBootBackend:
    uboot.set_mark("B", "bad")
    uboot.set_mark("B", "staged")
    return uboot


def foreign_of(config: Path) -> dict[str, str]:
    return {k: v for k, v in ubootenv.read_env(config).items() if not k.startswith("KRUXOS_")}


def test_the_backend_is_registered_as_uboot(config: Path) -> None:
    assert REGISTRY["uboot"] is UBootBackend
    assert isinstance(open_backend("uboot", config), UBootBackend)


def test_a_board_env_without_our_variables_reads_as_a_fresh_device(uboot: UBootBackend) -> None:
    assert uboot.read() == FRESH


@pytest.mark.parametrize("content", [None, b"\0" * 2 * COPY_SIZE, b"\xff" * 2 * COPY_SIZE])
def test_a_missing_or_blank_env_is_fresh_and_set_mark_creates_a_valid_env(
    config: Path, content: bytes | None
) -> None:
    env = config.parent / "uboot.env"
    env.unlink()
    if content is not None:
        env.write_bytes(content)
    uboot = UBootBackend(config)
    assert uboot.read() == FRESH
    uboot.set_mark("B", "bad")
    assert ubootenv.read_env(config) == {"KRUXOS_DEFAULT": "A", "KRUXOS_A": "good",
                                         "KRUXOS_B": "bad"}
    assert env.stat().st_size == 2 * COPY_SIZE


def test_empty_variables_are_absent_as_in_u_boot(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot)
    assert ubootenv.read_env(config) == {**BOARD_ENV, "KRUXOS_DEFAULT": "A", "KRUXOS_A": "good",
                                         "KRUXOS_B": "staged"}


def test_set_mark_records_the_mark(uboot: UBootBackend) -> None:
    staged_b(uboot)
    assert uboot.read().marks == {"A": "good", "B": "staged"}


def test_the_default_slot_cannot_be_marked_anything_but_good(uboot: UBootBackend) -> None:
    with pytest.raises(BootEnvError, match="^uboot backend: A is the default slot"):
        uboot.set_mark("A", "bad")


def test_arming_sets_trial_and_tries_and_keeps_the_good_default(uboot: UBootBackend) -> None:
    staged_b(uboot).arm_trial("B", 3)
    assert uboot.read() == BootState(
        default="A", trial="B", tries_left=3, marks={"A": "good", "B": "staged"})


def test_trial_boots_count_down_then_fall_back_and_mark_the_slot_bad(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 3)
    choices = [boot_once(config) for _ in range(4)]
    assert [(c.slot, c.trial, c.tries_left_after) for c in choices] == [
        ("B", True, 2), ("B", True, 1), ("B", True, 0), ("A", False, 0)]
    assert choices[-1].fell_back
    state = uboot.read()
    assert (state.default, state.trial, state.marks["B"]) == ("A", None, "bad")
    assert state.fallback_reason == "B: trial tries exhausted"
    assert boot_once(config).slot == "A"


def test_confirm_after_a_trial_boot_makes_the_slot_the_default(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 3)
    assert boot_once(config).slot == "B"
    uboot.mark_good("B")
    assert uboot.read() == BootState(default="B", marks={"A": "good", "B": "good"})
    before = (config.parent / "uboot.env").read_bytes()
    assert [boot_once(config).slot for _ in range(4)] == ["B"] * 4
    assert (config.parent / "uboot.env").read_bytes() == before  # no counting, no save


def test_confirm_on_the_last_try_still_counts(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot).arm_trial("B", 1)
    assert boot_once(config).tries_left_after == 0
    uboot.mark_good("B")
    assert boot_once(config).slot == "B"


def test_a_slot_the_bootloader_gave_up_on_cannot_be_confirmed(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 1)
    boot_once(config)
    boot_once(config)
    with pytest.raises(BootEnvError, match="cannot confirm B: it is marked bad"):
        uboot.mark_good("B")


def test_rollback_during_a_trial_marks_it_bad_and_keeps_the_default(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 3)
    boot_once(config)
    uboot.rollback("health check failed: api not ready")
    assert uboot.read() == BootState(default="A", marks={"A": "good", "B": "bad"},
                                     fallback_reason="health check failed: api not ready")
    assert boot_once(config).slot == "A"


def test_manual_rollback_after_a_confirmed_update_returns_to_the_previous_good_slot(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 3)
    boot_once(config)
    uboot.mark_good("B")
    uboot.rollback("asked by operator")
    state = uboot.read()
    assert (state.default, state.trial, state.fallback_reason) == ("A", None, "asked by operator")
    assert boot_once(config).slot == "A"


def test_rollback_is_refused_with_nothing_good_to_go_back_to(uboot: UBootBackend) -> None:
    staged_b(uboot)
    with pytest.raises(BootEnvError, match="^uboot backend: nothing to roll back to"):
        uboot.rollback("asked by operator")


def test_power_loss_mid_write_leaves_the_previous_state(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot).arm_trial("B", 2)
    env = config.parent / "uboot.env"
    before = ubootenv.read_env(config)
    raw = bytearray(env.read_bytes())
    current = 1 if ubootenv.newer(raw[COPY_SIZE + 4], raw[4]) else 0
    other = 1 - current
    raw[other * COPY_SIZE:other * COPY_SIZE + 64] = bytes(64)  # the next write, torn
    env.write_bytes(bytes(raw))
    assert ubootenv.read_env(config) == before
    assert UBootBackend(config).read().trial == "B"
    assert [boot_once(config).slot for _ in range(3)] == ["B", "B", "A"]


def test_arming_clears_the_trace_of_the_last_fallback(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot).arm_trial("B", 1)
    boot_once(config)
    boot_once(config)
    staged_b(uboot).arm_trial("B", 2)
    assert uboot.read().fallback_reason is None


def test_foreign_variables_are_kept_through_every_operation(
    uboot: UBootBackend, config: Path
) -> None:
    ubootenv.write_env(config, FOREIGN)
    operations: list[Callable[[], object]] = [
        lambda: uboot.set_mark("B", "bad"), lambda: uboot.set_mark("B", "staged"),
        lambda: uboot.arm_trial("B", 2), lambda: boot_once(config),
        lambda: uboot.mark_good("B"), lambda: uboot.rollback("operator"),
        lambda: uboot.set_mark("B", "bad"), lambda: uboot.set_mark("B", "staged"),
        lambda: uboot.arm_trial("B", 1), lambda: boot_once(config),
        lambda: boot_once(config), lambda: uboot.read(),
    ]
    for operation in operations:
        operation()
        assert foreign_of(config) == FOREIGN


def test_a_corrupt_env_raises_naming_the_config_and_safe_state_answers(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot).arm_trial("B", 2)
    uboot.mark_good("B")
    env = config.parent / "uboot.env"
    env.write_bytes(bytes(b ^ 0x5A for b in env.read_bytes()))
    with pytest.raises(BootEnvError, match=f"^uboot backend: {config}: no valid env copy"):
        uboot.read()
    assert uboot.safe_state() == BootState(default="B", marks={"B": "good", "A": "bad"})
    assert boot_once(config).slot == "A"  # U-Boot falls back to its default env


def test_writes_over_a_corrupt_env_are_refused(uboot: UBootBackend, config: Path) -> None:
    env = config.parent / "uboot.env"
    env.write_bytes(b"\x01" * 2 * COPY_SIZE)
    with pytest.raises(BootEnvError, match="^uboot backend: "):
        uboot.set_mark("B", "bad")
    assert env.read_bytes() == b"\x01" * 2 * COPY_SIZE


def test_safe_state_without_a_backup_is_slot_a(uboot: UBootBackend, config: Path) -> None:
    (config.parent / "uboot.env").write_bytes(b"\x01" * 2 * COPY_SIZE)
    assert uboot.safe_state() == BootState(default="A", marks={"A": "good", "B": "bad"})


def test_a_missing_config_is_an_error_and_safe_state_answers(tmp_path: Path) -> None:
    uboot = UBootBackend(tmp_path / "fw_env.config")
    with pytest.raises(BootEnvError, match="^uboot backend: .*fw_env.config"):
        uboot.read()
    assert uboot.safe_state().default == "A"


def test_a_value_we_never_write_is_reported_as_corrupt(uboot: UBootBackend, config: Path) -> None:
    ubootenv.write_env(config, {"KRUXOS_DEFAULT": "C"})
    with pytest.raises(BootEnvError, match="KRUXOS_DEFAULT='C' is not A or B"):
        uboot.read()


@pytest.mark.parametrize("tries", [0, 10, 99, -1, True])
def test_tries_outside_one_to_nine_are_refused(uboot: UBootBackend, tries: int) -> None:
    staged_b(uboot)
    with pytest.raises(BootEnvError, match="tries must be 1..9"):
        uboot.arm_trial("B", tries)
    assert uboot.read().trial is None


@pytest.mark.parametrize("mark", ["empty", "bad"])
def test_arming_an_empty_or_bad_slot_is_refused(uboot: UBootBackend, mark: str) -> None:
    if mark == "bad":
        uboot.set_mark("B", "bad")
    with pytest.raises(BootEnvError, match=f"cannot arm B for a trial: it is marked {mark}"):
        uboot.arm_trial("B", 3)


def test_arming_the_default_slot_is_refused(uboot: UBootBackend) -> None:
    with pytest.raises(BootEnvError, match="A is the default slot"):
        uboot.arm_trial("A", 3)


def test_marking_the_trial_slot_bad_disarms_the_trial(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot).arm_trial("B", 3)
    uboot.set_mark("B", "bad")
    assert uboot.read().trial is None
    assert boot_once(config).slot == "A"


def test_arming_is_refused_when_u_boot_could_not_record_the_fallback(
    uboot: UBootBackend, config: Path
) -> None:
    staged_b(uboot)
    used = len(ubootenv.encode(ubootenv.read_env(config), COPY_SIZE, 1).rstrip(b"\xff"))
    filler = "x" * (COPY_SIZE - used - len("filler=\0") - 30)
    ubootenv.edit(config, set={"filler": filler})
    with pytest.raises(BootEnvError, match="no room for U-Boot to record a failed trial"):
        uboot.arm_trial("B", 3)
    assert uboot.read().trial is None


def test_a_damaged_counter_ends_the_trial_rather_than_being_read_as_hex(config: Path) -> None:
    ubootenv.write_env(config, {"KRUXOS_TRIAL": "B", "KRUXOS_TRIES": "a", "KRUXOS_B": "staged"})
    choice = boot_once(config)
    assert (choice.slot, choice.fell_back) == ("A", True)
    assert ubootenv.read_env(config)["KRUXOS_B"] == "bad"


def test_a_counter_that_cannot_be_saved_boots_the_default(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ubootenv.write_env(config, {"KRUXOS_TRIAL": "B", "KRUXOS_TRIES": "3", "KRUXOS_B": "staged"})

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ubootenv, "edit", fail)
    assert boot_once(config).slot == "A"


def test_every_write_keeps_a_backup_of_our_variables(uboot: UBootBackend, config: Path) -> None:
    staged_b(uboot).arm_trial("B", 2)
    raw = (config.parent / "kruxos-uboot.bak").read_bytes()
    decoded = ubootenv.decode(raw, False)
    assert decoded is not None and decoded[1] == {k: v for k, v in ubootenv.read_env(
        config).items() if k.startswith("KRUXOS_")}


def test_boot_cmd_counts_the_emulator_s_digits_and_stores_our_variables() -> None:
    text = BOOT_CMD.read_text()
    loop = re.search(r"for n in ([\d ]+); do", text)
    assert loop is not None
    assert {n: str(int(n) - 1) for n in loop.group(1).split()} == COUNTDOWN
    stored = re.search(r"setenv kruxos_vars (.*)", text)
    assert stored is not None and set(stored.group(1).split()) == set(OWN)
    assert '"${kruxos_trial}: trial tries exhausted"' in text
