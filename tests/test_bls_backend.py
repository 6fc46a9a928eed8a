"""The bls backend (systemd-boot entry names + loader.conf) and its emulator, without QEMU."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from reconciler.boot import REGISTRY, BootState, open_backend
from reconciler.boot.bls import LOADER_GUID, BlsBackend, default_pattern, parse_entry_name
from reconciler.errors import BootEnvError
from reconciler.sim.boot_bls import boot_once, init_env, parse_counter, strverscmp_improved


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    return init_env(tmp_path / "boot")


@pytest.fixture
def bls(esp: Path) -> BlsBackend:
    return BlsBackend(esp)


def entries(esp: Path) -> list[str]:
    return sorted(p.name for p in (esp / "loader" / "entries").iterdir())


def staged_b(bls: BlsBackend) -> BlsBackend:
    bls.set_mark("B", "bad")
    bls.set_mark("B", "staged")
    return bls


def selected(esp: Path, entry: str) -> None:
    path = esp.parent / "efivars" / f"LoaderEntrySelected-{LOADER_GUID}"
    path.write_bytes(struct.pack("<I", 6) + (entry + "\0").encode("utf-16-le"))


def test_the_backend_is_registered_as_bls(esp: Path) -> None:
    assert REGISTRY["bls"] is BlsBackend
    assert isinstance(open_backend("bls", esp), BlsBackend)


def test_a_fresh_esp_reads_a_good_and_b_empty(bls: BlsBackend, esp: Path) -> None:
    assert bls.read() == BootState(default="A", marks={"A": "good", "B": "empty"})
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0.conf"]


def test_marks_systemd_boot_cannot_express_keep_the_entry_at_zero_tries(
    bls: BlsBackend, esp: Path
) -> None:
    bls.set_mark("B", "bad")
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0-0.conf"]
    bls.set_mark("B", "staged")
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0.conf"]
    assert bls.read().marks == {"A": "good", "B": "staged"}


def test_arming_renames_the_entry_with_the_tries_and_targets_it(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 3)
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+3.conf"]
    assert f"default {default_pattern('B')}" in (esp / "loader" / "loader.conf").read_text()
    assert bls.read() == BootState(default="A", trial="B", tries_left=3,
                                   marks={"A": "good", "B": "staged"})


def test_confirm_strips_the_counter_like_bless_boot(bls: BlsBackend, esp: Path) -> None:
    staged_b(bls).arm_trial("B", 3)
    boot_once(esp)
    bls.mark_good("B")
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b.conf"]
    assert bls.read() == BootState(default="B", marks={"A": "good", "B": "good"})


def test_the_last_try_is_a_trial_while_it_is_the_booted_entry(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 1)
    assert boot_once(esp).slot == "B"
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0-1.conf"]
    assert bls.read().trial == "B" and bls.read().tries_left == 0


def test_a_zero_target_not_booted_is_an_exhausted_trial_with_a_trace(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 1)
    boot_once(esp)
    assert boot_once(esp).slot == "A"
    state = bls.read()
    assert (state.default, state.trial, state.marks["B"]) == ("A", None, "bad")
    assert state.fallback_reason == "B: trial tries exhausted"


def test_an_unknown_booted_entry_counts_a_zero_target_as_exhausted(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 1)
    boot_once(esp)
    (esp.parent / "efivars" / f"LoaderEntrySelected-{LOADER_GUID}").unlink()
    assert bls.read().fallback_reason == "B: trial tries exhausted"


def test_the_exhaustion_trace_survives_the_next_write(bls: BlsBackend, esp: Path) -> None:
    staged_b(bls).arm_trial("B", 1)
    boot_once(esp)
    boot_once(esp)
    bls.set_mark("B", "bad")
    assert "# kruxos-fallback: B: trial tries exhausted" in \
        (esp / "loader" / "loader.conf").read_text()
    assert bls.read().fallback_reason == "B: trial tries exhausted"
    bls.set_mark("B", "staged")
    bls.arm_trial("B", 2)
    assert bls.read().fallback_reason is None


def test_rollback_of_a_trial_marks_it_bad_and_keeps_the_reason(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 3)
    boot_once(esp)
    bls.rollback("Health check timeout — gateway failed to start")
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0-1.conf"]
    assert bls.read() == BootState(default="A", marks={"A": "good", "B": "bad"},
                                   fallback_reason="Health check timeout — gateway failed to start")
    assert boot_once(esp).slot == "A"


def test_manual_rollback_after_confirm_targets_the_other_good_slot(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 3)
    bls.mark_good("B")
    bls.rollback("asked")
    assert bls.read().default == "A"
    assert boot_once(esp).slot == "A"


def test_refusals_match_the_grub_backend(bls: BlsBackend) -> None:
    with pytest.raises(BootEnvError, match="bls backend: A is the default slot; it stays good"):
        bls.set_mark("A", "bad")
    with pytest.raises(BootEnvError, match="bls backend: cannot arm B for a trial: it is "
                                           "marked empty"):
        bls.arm_trial("B", 3)
    with pytest.raises(BootEnvError, match="bls backend: tries must be 1..9"):
        staged_b(bls).arm_trial("B", 10)
    with pytest.raises(BootEnvError, match="bls backend: A is the default slot; nothing"):
        bls.arm_trial("A", 3)
    bls.arm_trial("B", 3)
    with pytest.raises(BootEnvError, match="bls backend: B is on trial; confirm it"):
        bls.set_mark("B", "good")
    with pytest.raises(BootEnvError, match="bls backend: cannot confirm B: it is marked bad"):
        bls.set_mark("B", "bad")
        bls.mark_good("B")
    with pytest.raises(BootEnvError, match="bls backend: nothing to roll back to"):
        bls.rollback("why")


def test_unmarking_the_trial_slot_disarms_it_before_touching_the_entry(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls).arm_trial("B", 3)
    bls.set_mark("B", "bad")
    assert bls.read().trial is None
    assert boot_once(esp).slot == "A"


def test_power_cut_between_rename_and_loader_conf_when_arming_boots_the_default(
    bls: BlsBackend, esp: Path
) -> None:
    staged_b(bls)
    (esp / "loader" / "entries" / "kruxos-b+0.conf").rename(
        esp / "loader" / "entries" / "kruxos-b+3.conf")  # the arm's first step only
    assert bls.read() == BootState(default="A", marks={"A": "good", "B": "staged"})
    assert boot_once(esp).slot == "A"
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+3.conf"]


@pytest.mark.parametrize("damage", ["no loader.conf", "foreign default", "two entries for B",
                                    "odd entry name", "target without entry",
                                    "odd mark", "no good fallback"])
def test_a_damaged_esp_is_a_prefixed_error_and_a_safe_state(
    damage: str, bls: BlsBackend, esp: Path
) -> None:
    conf = esp / "loader" / "loader.conf"
    ent = esp / "loader" / "entries"
    if damage == "no loader.conf":
        conf.unlink()
    elif damage == "foreign default":
        conf.write_text(conf.read_text().replace(default_pattern("A"), "arch-*"))
    elif damage == "two entries for B":
        (ent / "kruxos-b.conf").write_text("x\n")
    elif damage == "odd entry name":
        (ent / "kruxos-b+x.conf").write_text("x\n")
    elif damage == "target without entry":
        (ent / "kruxos-a.conf").unlink()
    elif damage == "odd mark":
        conf.write_text(conf.read_text().replace("B=empty", "B=great"))
    else:
        staged_b(bls).arm_trial("B", 3)
        (ent / "kruxos-a.conf").rename(ent / "kruxos-a+0.conf")
    with pytest.raises(BootEnvError, match="^bls backend: "):
        bls.read()
    safe = bls.safe_state()
    assert safe.trial is None and safe.marks[safe.default] == "good"


def test_foreign_entries_and_loader_settings_are_kept(bls: BlsBackend, esp: Path) -> None:
    (esp / "loader" / "entries" / "memtest.conf").write_text("title memtest\n")
    staged_b(bls).arm_trial("B", 2)
    assert "memtest.conf" in entries(esp)
    assert "timeout 0" in (esp / "loader" / "loader.conf").read_text()


def test_entry_names_parse_like_systemd_boot() -> None:
    assert parse_entry_name("kruxos-b+2-1.conf") == ("B", 2, 1)
    assert parse_entry_name("kruxos-a.conf") == ("A", None, None)
    assert parse_entry_name("memtest.conf") is None
    assert parse_counter("foo+3.conf") == (3, 0, "foo")
    assert parse_counter("foo+0-4.conf") == (0, 4, "foo")
    assert parse_counter("foo.conf") == (None, None, "foo")


@pytest.mark.parametrize(("a", "b", "order"), [
    ("kruxos-a.conf", "kruxos-b+1-2.conf", -1), ("1.10", "1.2", 1), ("1.0~rc1", "1.0", -1),
    ("123-9", "123.1-1", -1), ("abc", "abcde", -1), ("007", "7", 0), ("a", "1", -1),
])
def test_versions_compare_like_systemd(a: str, b: str, order: int) -> None:
    assert strverscmp_improved(a, b) == order
    assert strverscmp_improved(b, a) == -order


def test_the_emulator_skips_entries_whose_image_is_missing(esp: Path) -> None:
    (esp / "kruxos" / "a" / "vmlinuz").unlink()
    bls = BlsBackend(esp)
    staged_b(bls)
    bls.mark_good("B")  # B good but not the target; A's image is gone
    bls.rollback("back to A")
    assert boot_once(esp).slot == "B"


@pytest.mark.parametrize("name", [
    "kruxos-a+\u0663.conf",           # an Arabic-Indic three: a digit to Python only
    "kruxos-b+\uff11-1.conf",         # a fullwidth one
    "kruxos-a+01.conf",               # systemd-boot never writes a leading zero
    "kruxos-a+100000.conf",           # more digits than any counter we write or accept
    "kruxos-b+1-" + "9" * 5000 + ".conf",  # past Python's int() digit limit
    "kruxos-a+1+2.conf", "kruxos-a+-1.conf", "kruxos-a+1-.conf", "kruxos-a/b.conf",
    "kruxos-a+1.conf\n.conf",
])
def test_an_odd_counter_in_one_of_our_names_is_a_short_boot_env_error(name: str) -> None:
    with pytest.raises(BootEnvError, match="odd entry name") as caught:
        parse_entry_name(name)
    assert len(str(caught.value)) < 120


def test_the_largest_counters_we_accept_read_as_numbers() -> None:
    assert parse_entry_name("kruxos-b+99999-99999.conf") == ("B", 99999, 99999)
    assert parse_entry_name("kruxos-a+0-0.conf") == ("A", 0, 0)


def test_a_huge_loader_conf_is_refused_unread(bls: BlsBackend, esp: Path) -> None:
    (esp / "loader" / "loader.conf").write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(BootEnvError, match="larger than 65536 bytes"):
        bls.read()


def test_a_foreign_default_is_quoted_short(bls: BlsBackend, esp: Path) -> None:
    (esp / "loader" / "loader.conf").write_text("default " + "x" * 10_000 + "\n")
    with pytest.raises(BootEnvError, match="is not ours") as caught:
        bls.read()
    assert len(str(caught.value)) < 300
