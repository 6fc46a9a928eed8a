"""The grub backend's state machine, driven together with the simulated bootloader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.boot import REGISTRY, BootState, grubenv, open_backend
from reconciler.boot.grub import GrubBackend
from reconciler.errors import BootEnvError
from reconciler.sim.bootloader import boot_once

FOREIGN = {"saved_entry": "KruxOS (slot A)", "vendor_note": "multi\nline \\ é"}


@pytest.fixture
def env_path(tmp_path: Path) -> Path:
    return tmp_path / "grubenv"


@pytest.fixture
def grub(env_path: Path) -> GrubBackend:
    return GrubBackend(env_path)


def staged_b(grub: GrubBackend) -> GrubBackend:
    grub.set_mark("B", "bad")
    grub.set_mark("B", "staged")
    return grub


def foreign_of(env_path: Path) -> dict[str, str]:
    return {k: v for k, v in grubenv.read_env(env_path).items() if not k.startswith("KRUXOS_")}


def test_the_backend_is_registered_as_grub(env_path: Path) -> None:
    assert REGISTRY["grub"] is GrubBackend
    assert isinstance(open_backend("grub", env_path), GrubBackend)


def test_a_missing_env_reads_as_a_fresh_device(grub: GrubBackend) -> None:
    assert grub.read() == BootState(default="A", marks={"A": "good", "B": "empty"})


def test_an_env_without_our_variables_reads_as_a_fresh_device(
    grub: GrubBackend, env_path: Path
) -> None:
    grubenv.write_env(env_path, FOREIGN)
    assert grub.read() == BootState(default="A", marks={"A": "good", "B": "empty"})


def test_set_mark_records_the_mark(grub: GrubBackend) -> None:
    staged_b(grub)
    assert grub.read().marks == {"A": "good", "B": "staged"}


def test_the_default_slot_cannot_be_marked_anything_but_good(grub: GrubBackend) -> None:
    with pytest.raises(BootEnvError, match="grub backend: A is the default slot"):
        grub.set_mark("A", "bad")


def test_arming_sets_trial_and_tries_and_keeps_the_good_default(grub: GrubBackend) -> None:
    staged_b(grub).arm_trial("B", 3)
    assert grub.read() == BootState(
        default="A", trial="B", tries_left=3, marks={"A": "good", "B": "staged"}
    )


def test_trial_boots_count_down_then_fall_back_and_mark_the_slot_bad(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 3)
    choices = [boot_once(env_path) for _ in range(4)]
    assert [(c.slot, c.trial, c.tries_left_after) for c in choices] == [
        ("B", True, 2), ("B", True, 1), ("B", True, 0), ("A", False, 0)
    ]
    assert choices[-1].fell_back
    state = grub.read()
    assert (state.default, state.trial, state.marks["B"]) == ("A", None, "bad")
    assert state.fallback_reason == "B: trial tries exhausted"
    assert boot_once(env_path).slot == "A"


def test_confirm_after_a_trial_boot_makes_the_slot_the_default(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 3)
    assert boot_once(env_path).slot == "B"
    grub.mark_good("B")
    assert grub.read() == BootState(default="B", marks={"A": "good", "B": "good"})
    assert [boot_once(env_path).slot for _ in range(4)] == ["B"] * 4


def test_confirm_on_the_last_try_still_counts(grub: GrubBackend, env_path: Path) -> None:
    staged_b(grub).arm_trial("B", 1)
    assert boot_once(env_path).tries_left_after == 0
    assert grub.read().trial == "B"
    grub.mark_good("B")
    assert boot_once(env_path).slot == "B"


def test_confirming_twice_is_harmless(grub: GrubBackend) -> None:
    staged_b(grub).arm_trial("B", 3)
    grub.mark_good("B")
    grub.mark_good("B")
    assert grub.read().default == "B"


def test_a_slot_the_bootloader_gave_up_on_cannot_be_confirmed(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 1)
    boot_once(env_path)
    boot_once(env_path)
    with pytest.raises(BootEnvError, match="cannot confirm B: it is marked bad"):
        grub.mark_good("B")


def test_rollback_during_a_trial_marks_it_bad_and_keeps_the_default(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 3)
    boot_once(env_path)
    grub.rollback("health check failed: api not ready")
    assert grub.read() == BootState(
        default="A", marks={"A": "good", "B": "bad"},
        fallback_reason="health check failed: api not ready",
    )
    assert boot_once(env_path).slot == "A"


def test_manual_rollback_after_a_confirmed_update_returns_to_the_previous_good_slot(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 3)
    boot_once(env_path)
    grub.mark_good("B")
    grub.rollback("asked by operator")
    state = grub.read()
    assert (state.default, state.trial, state.fallback_reason) == ("A", None, "asked by operator")
    assert boot_once(env_path).slot == "A"


def test_rollback_is_refused_with_nothing_good_to_go_back_to(grub: GrubBackend) -> None:
    staged_b(grub)
    with pytest.raises(BootEnvError, match="grub backend: nothing to roll back to"):
        grub.rollback("asked by operator")
    assert grub.read().default == "A"


def test_power_loss_between_arming_and_booting_leaves_the_good_default(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 2)
    reread = GrubBackend(env_path).read()  # a new process after the power cut
    assert (reread.default, reread.trial, reread.tries_left) == ("A", "B", 2)
    assert [boot_once(env_path).slot for _ in range(3)] == ["B", "B", "A"]


def test_power_loss_while_arming_leaves_the_env_as_before(
    grub: GrubBackend, env_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged_b(grub)
    before = env_path.read_bytes()

    def cut_power(fd: int, data: object, offset: int) -> int:
        raise OSError(5, "Input/output error")

    # The block is overwritten in place (GRUB reads its sectors, not the journal):
    # the power goes before the write reaches them.
    monkeypatch.setattr("reconciler.boot.grubenv.os.pwrite", cut_power)
    with pytest.raises(OSError):
        grub.arm_trial("B", 2)
    monkeypatch.undo()
    assert env_path.read_bytes() == before
    assert boot_once(env_path).slot == "A"


def test_arming_clears_the_trace_of_the_last_fallback(grub: GrubBackend, env_path: Path) -> None:
    staged_b(grub).arm_trial("B", 1)
    boot_once(env_path)
    boot_once(env_path)
    staged_b(grub).arm_trial("B", 2)
    assert grub.read().fallback_reason is None


def test_foreign_variables_are_kept_in_place_through_every_operation(
    grub: GrubBackend, env_path: Path
) -> None:
    grubenv.write_env(env_path, FOREIGN)
    operations: list[Callable[[], object]] = [
        lambda: grub.set_mark("B", "bad"), lambda: grub.set_mark("B", "staged"),
        lambda: grub.arm_trial("B", 2), lambda: boot_once(env_path),
        lambda: grub.mark_good("B"), lambda: grub.rollback("operator"),
        lambda: grub.set_mark("B", "bad"), lambda: grub.set_mark("B", "staged"),
        lambda: grub.arm_trial("B", 1), lambda: boot_once(env_path),
        lambda: boot_once(env_path), lambda: grub.read(),
    ]
    for operation in operations:
        operation()
        assert list(grubenv.read_env(env_path).items())[:2] == list(FOREIGN.items())
    assert foreign_of(env_path) == FOREIGN


def test_a_corrupt_env_raises_naming_the_file_and_safe_state_answers(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub).arm_trial("B", 2)
    grub.mark_good("B")
    env_path.write_bytes(b"\0" * 1024)
    with pytest.raises(BootEnvError, match=f"^grub backend: grub env {env_path}: .*header"):
        grub.read()
    assert grub.safe_state() == BootState(default="B", marks={"B": "good", "A": "bad"})


def test_writes_over_a_corrupt_env_are_refused(grub: GrubBackend, env_path: Path) -> None:
    env_path.write_bytes(b"short")
    with pytest.raises(BootEnvError, match="grub backend: "):
        grub.set_mark("B", "bad")
    assert env_path.read_bytes() == b"short"


def test_safe_state_without_a_backup_is_slot_a(grub: GrubBackend, env_path: Path) -> None:
    env_path.write_bytes(b"short")
    assert grub.safe_state() == BootState(default="A", marks={"A": "good", "B": "bad"})


def test_a_value_we_never_write_is_reported_as_corrupt(grub: GrubBackend, env_path: Path) -> None:
    grubenv.write_env(env_path, {"KRUXOS_DEFAULT": "C"})
    with pytest.raises(BootEnvError, match="KRUXOS_DEFAULT='C' is not A or B"):
        grub.read()


@pytest.mark.parametrize("tries", [0, 10, 99, -1])
def test_tries_outside_one_to_nine_are_refused(grub: GrubBackend, tries: int) -> None:
    staged_b(grub)
    with pytest.raises(BootEnvError, match="tries must be 1..9"):
        grub.arm_trial("B", tries)
    assert grub.read().trial is None


@pytest.mark.parametrize("mark", ["empty", "bad"])
def test_arming_an_empty_or_bad_slot_is_refused(grub: GrubBackend, mark: str) -> None:
    if mark == "bad":
        grub.set_mark("B", "bad")
    with pytest.raises(BootEnvError, match=f"cannot arm B for a trial: it is marked {mark}"):
        grub.arm_trial("B", 3)


def test_arming_the_default_slot_is_refused(grub: GrubBackend) -> None:
    with pytest.raises(BootEnvError, match="A is the default slot"):
        grub.arm_trial("A", 3)


def test_marking_the_trial_slot_bad_disarms_the_trial(grub: GrubBackend, env_path: Path) -> None:
    staged_b(grub).arm_trial("B", 3)
    grub.set_mark("B", "bad")
    assert grub.read().trial is None
    assert boot_once(env_path).slot == "A"


def test_arming_is_refused_when_grub_could_not_record_the_fallback(
    grub: GrubBackend, env_path: Path
) -> None:
    staged_b(grub)
    used = len(grubenv.render(grubenv.read_env(env_path)).rstrip(b"#"))
    spare = 10  # enough for the arming itself, not for GRUB's fallback trace
    filler = "x" * (grubenv.BLOCK_SIZE - used - len("filler=\n") - spare)
    grubenv.edit(env_path, set={"filler": filler})
    grubenv.render({**grubenv.read_env(env_path), "KRUXOS_TRIAL": "B", "KRUXOS_TRIES": "3"})
    with pytest.raises(BootEnvError, match="no room for GRUB to record a failed trial"):
        grub.arm_trial("B", 3)
    assert grub.read().trial is None


def test_every_write_keeps_a_backup_beside_the_env(grub: GrubBackend, env_path: Path) -> None:
    staged_b(grub)
    assert (env_path.parent / "grubenv.bak").read_bytes() == env_path.read_bytes()
