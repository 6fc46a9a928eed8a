"""The bls backend (systemd-boot entry names + loader.conf) and its emulator, without QEMU."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# -- repair: a damaged ESP rewritten from what is known good ---------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd-boot"
STAGED_B = BootState(default="A", marks={"A": "good", "B": "staged"})
B_ON_TRIAL = BootState(default="A", trial="B", tries_left=1, marks={"A": "good", "B": "staged"})
GOOD_B = BootState(default="B", marks={"A": "bad", "B": "good"})


def conf(esp: Path) -> Path:
    return esp / "loader" / "loader.conf"


def ent(esp: Path) -> Path:
    return esp / "loader" / "entries"


def settings(text: str) -> list[str]:
    """The setting lines of a loader.conf or an entry: no comments, no blank lines."""
    return [" ".join(line.split()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def damage_esp(esp: Path, damage: str) -> None:
    """One kind of damage the repair must undo (on a fresh ESP: A good, B empty at +0)."""
    loader, entries = conf(esp), ent(esp)
    if damage == "loader.conf missing":
        loader.unlink()
    elif damage == "loader.conf garbage":
        loader.write_bytes(bytes(range(256)) * 4)
    elif damage == "loader.conf too large":
        loader.write_bytes(b"timeout 0\n" + b"#" * (64 * 1024))
    elif damage == "foreign default":
        loader.write_text("timeout 5\neditor no\ndefault arch-*\n# kruxos: A=good B=empty\n")
    elif damage == "marks line odd":
        loader.write_text(loader.read_text().replace("B=empty", "B=great"))
    elif damage == "marks line missing":
        loader.write_text(loader.read_text().replace("# kruxos: A=good B=empty\n", ""))
    elif damage == "entry of B missing":
        (entries / "kruxos-b+0.conf").unlink()
    elif damage == "entry of A missing":
        (entries / "kruxos-a.conf").unlink()
    elif damage == "entry of B emptied":
        (entries / "kruxos-b+0.conf").write_bytes(b"")
    elif damage == "entry of B not UTF-8":
        (entries / "kruxos-b+0.conf").write_bytes(b"\xff\xfe" * 100)
    elif damage == "entry of B under two names":
        (entries / "kruxos-b.conf").write_bytes((entries / "kruxos-b+0.conf").read_bytes())
    elif damage == "odd counter name":
        (entries / "kruxos-b+0.conf").rename(entries / "kruxos-b+01.conf")
    elif damage == "entries swapped":
        a, b = (entries / "kruxos-a.conf").read_bytes(), (entries / "kruxos-b+0.conf").read_bytes()
        (entries / "kruxos-a.conf").write_bytes(b)
        (entries / "kruxos-b+0.conf").write_bytes(a)
    elif damage == "a stray kruxos entry":
        (entries / "kruxos-c.conf").write_text("title who knows\n")
    else:
        raise AssertionError(damage)


DAMAGES = ["loader.conf missing", "loader.conf garbage", "loader.conf too large",
           "foreign default", "marks line odd", "marks line missing", "entry of B missing",
           "entry of A missing", "entry of B emptied", "entry of B not UTF-8",
           "entry of B under two names", "odd counter name", "entries swapped",
           "a stray kruxos entry"]


@pytest.mark.parametrize("want", [STAGED_B, B_ON_TRIAL, GOOD_B], ids=["staged", "trial", "B good"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_each_kind_of_damage_is_repaired_to_exactly_the_state_asked(
    damage: str, want: BootState, bls: BlsBackend, esp: Path
) -> None:
    damage_esp(esp, damage)
    if damage != "marks line missing":  # read as "B empty": conservative, not damage
        with pytest.raises(BootEnvError, match="^bls backend: "):
            bls.read()
    bls.repair(want)
    assert bls.read() == want
    ours = [p for p in ent(esp).iterdir() if p.name.startswith("kruxos-")]
    assert len(ours) == 2, ours
    for entry in ours:  # each slot boots its own kernel, as shipped
        shipped = DEPLOY / f"kruxos-{entry.name[7]}.conf"
        assert settings(entry.read_text()) == settings(shipped.read_text()), entry.name
    booted = boot_once(esp)
    assert booted.slot == (want.trial or want.default) and booted.trial == (want.trial is not None)


def tree(esp: Path) -> dict[str, bytes]:
    """Every file under the boot directory (ESP and efivars), by path, with its bytes."""
    root = esp.parent
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_repair_run_twice_changes_nothing_the_second_time(bls: BlsBackend, esp: Path) -> None:
    damage_esp(esp, "entry of B missing")
    damage_esp(esp, "loader.conf garbage")
    assert bls.repair(STAGED_B) is not None
    once = tree(esp)
    assert bls.repair(STAGED_B) is None
    assert tree(esp) == once


def test_the_repair_says_what_it_rebuilt_removed_and_moved_aside(
    bls: BlsBackend, esp: Path
) -> None:
    damage_esp(esp, "entry of B emptied")
    (ent(esp) / "kruxos-a+3.conf").write_bytes((ent(esp) / "kruxos-a.conf").read_bytes())
    conf(esp).unlink()
    said = bls.repair(STAGED_B)
    assert said == ("slot B's entry rebuilt from kruxos-a.conf; kruxos-a+3.conf removed (a "
                    "copy of kruxos-a.conf); kruxos-b+0.conf moved to kruxos/damaged/, as it "
                    "names no kernel (no linux or efi line); loader.conf written with the "
                    "shipped settings")
    assert (esp / "kruxos" / "damaged" / "kruxos-b+0.conf").read_bytes() == b""
    assert "rebuilt by the reconciler from kruxos-a.conf" in \
        (ent(esp) / "kruxos-b+0.conf").read_text()


def test_the_settings_of_a_damaged_loader_conf_that_parse_are_kept(
    bls: BlsBackend, esp: Path
) -> None:
    conf(esp).write_bytes(b"timeout 5\n\xff\xfe garbage\nconsole-mode max\nbeep\x07 yes\n"
                          b"default arch-*\n# kruxos: A=great\n# a note of ours\n" + b"x" * 300
                          + b"\n")
    assert bls.repair(STAGED_B) is None
    assert conf(esp).read_text() == ("timeout 5\nconsole-mode max\n# a note of ours\n"
                                     "default kruxos-a[+.][1-9c]*\n# kruxos: A=good B=staged\n")


def test_the_shipped_settings_are_those_of_the_shipped_loader_conf() -> None:
    from reconciler.boot.blsentry import SHIPPED_SETTINGS

    shipped = [line for line in settings((DEPLOY / "loader.conf").read_text())
               if not line.startswith("default ")]
    assert list(SHIPPED_SETTINGS) == shipped


def test_a_bad_slot_keeps_the_tries_it_had_done_and_the_reason_is_one_line(
    bls: BlsBackend, esp: Path
) -> None:
    (ent(esp) / "kruxos-b+0.conf").rename(ent(esp) / "kruxos-b+0-2.conf")
    damage_esp(esp, "loader.conf garbage")
    bls.repair(BootState(default="A", marks={"A": "good", "B": "bad"},
                         fallback_reason="B failed\n# kruxos: A=bad"))
    assert entries(esp) == ["kruxos-a.conf", "kruxos-b+0-2.conf"]
    assert bls.read().fallback_reason == "B failed # kruxos: A=bad"
    assert bls.read().marks == {"A": "good", "B": "bad"}


@pytest.mark.parametrize(("state", "refusal"), [
    (BootState(default="A", marks={"A": "bad", "B": "good"}), "A is the default slot; it stays"),
    (BootState(default="A", trial="A", tries_left=1, marks={"A": "good", "B": "staged"}),
     "cannot repair to a trial of 'A'"),
    (BootState(default="A", trial="B", tries_left=1, marks={"A": "good", "B": "empty"}),
     "cannot repair to a trial of 'B' marked 'empty'"),
    (BootState(default="A", trial="B", tries_left=10, marks={"A": "good", "B": "staged"}),
     "tries must be 0..9"),
    (BootState(default="A", marks={"A": "good"}), "cannot repair to marks"),
])
def test_a_state_the_esp_cannot_say_is_refused_before_anything_is_written(
    state: BootState, refusal: str, bls: BlsBackend, esp: Path
) -> None:
    damage_esp(esp, "loader.conf garbage")
    before = tree(esp)
    with pytest.raises(BootEnvError, match=f"^bls backend: {refusal}"):
        bls.repair(state)
    assert tree(esp) == before


@pytest.mark.parametrize(("damage", "edit", "refusal"), [
    ("both entries gone", None, "no entry of slot A or B to rebuild the other from"),
    ("two different entries for A", None,
     "slot A has two different entries, 'kruxos-a.conf' and 'kruxos-a.conf.conf'"),
    ("A's root by device name", ("root=PARTLABEL=root-a", "root=/dev/sda2"),
     "option 'root=/dev/sda2' is not root=PARTLABEL=root-a"),
    ("A's kernel elsewhere", ("/kruxos/a/vmlinuz", "/vmlinuz-a"),
     "linux '/vmlinuz-a' is not under /kruxos/a/"),
    ("A's version line", ("title", "version 1.0.0\ntitle"),
     "its 'version' line is not one the backend knows"),
    ("another option naming A", (" ro ", " ro mount.usr=PARTLABEL=usr-a "),
     "option 'mount.usr=PARTLABEL=usr-a' may name slot A"),
])
def test_damage_that_needs_a_guess_is_refused_with_the_reason_and_nothing_written(
    damage: str, edit: tuple[str, str] | None, refusal: str, bls: BlsBackend, esp: Path
) -> None:
    a = ent(esp) / "kruxos-a.conf"
    (ent(esp) / "kruxos-b+0.conf").unlink()
    if damage == "both entries gone":
        a.unlink()
    elif damage == "two different entries for A":
        (ent(esp) / "kruxos-a.conf.conf").write_text(a.read_text() + "options quiet\n")
    else:
        assert edit is not None
        a.write_text(a.read_text().replace(*edit))
    before = tree(esp)
    with pytest.raises(BootEnvError, match="^bls backend: cannot repair .* without a guess: ") \
            as caught:
        bls.repair(STAGED_B)
    assert refusal in str(caught.value)
    assert "docs/bootloader-systemd-boot.md" in str(caught.value)
    assert tree(esp) == before


class Killed(BaseException):
    """The process died here (raised instead of the filesystem change it was about to make)."""


@contextlib.contextmanager
def killed_at_step(step: int) -> Iterator[list[int]]:
    """Die before the ``step``-th rename, replace or unlink (counting from 0), as a kill
    would: what was done before is on disk, nothing after. Yields the count of steps done."""
    done = [0]

    def dying(real: Callable[..., Any]) -> Callable[..., Any]:
        def change(*args: Any, **kwargs: Any) -> Any:
            if done[0] == step:
                raise Killed
            done[0] += 1
            return real(*args, **kwargs)
        return change

    with pytest.MonkeyPatch.context() as patch:
        for name in ("rename", "replace", "unlink"):
            patch.setattr(os, name, dying(getattr(os, name)))
        yield done


def a_renamed_and_copied_b_gone(esp: Path) -> None:
    """Slot A's entry under an odd name and a copy of it, B's gone, a stray, loader.conf garbage:
    a repair that renames, removes, moves aside, rebuilds and rewrites (5 steps)."""
    entries = ent(esp)
    (entries / "kruxos-a.conf").rename(entries / "kruxos-a+x.conf")
    (entries / "kruxos-a+9-99.conf").write_bytes((entries / "kruxos-a+x.conf").read_bytes())
    (entries / "kruxos-b+0.conf").unlink()
    (entries / "kruxos-c.conf").write_text("title not ours to boot\n")
    conf(esp).write_bytes(bytes(range(256)) * 4)


def b_good_and_copied_a_gone(esp: Path) -> None:
    """Slot B confirmed, then: a copy of its entry, A's gone, a stray, loader.conf garbage
    (4 steps: remove the copy, move the stray, rebuild A, rewrite loader.conf)."""
    entries = ent(esp)
    (entries / "kruxos-b+0.conf").rename(entries / "kruxos-b.conf")
    (entries / "kruxos-b+1-2.conf").write_bytes((entries / "kruxos-b.conf").read_bytes())
    (entries / "kruxos-a.conf").unlink()
    (entries / "kruxos-c.conf").write_text("title not ours to boot\n")
    conf(esp).write_bytes(bytes(range(256)) * 4)


def a_emptied_while_it_runs(esp: Path) -> None:
    """Slot A runs; its entry is emptied, B's is good, loader.conf garbage: the damaged ESP
    boots B (4 steps: A's empty entry aside, A rebuilt, loader.conf, B to +0)."""
    entries = ent(esp)
    (entries / "kruxos-b+0.conf").rename(entries / "kruxos-b.conf")
    (entries / "kruxos-a.conf").write_bytes(b"")
    conf(esp).write_bytes(bytes(range(256)) * 4)


def boots(esp: Path, where: Path) -> str:
    """The slot the emulator boots on a copy of ``esp``'s boot directory."""
    shutil.copytree(esp.parent, where)
    return boot_once(where / "esp").slot


@pytest.mark.parametrize(("want", "damage", "steps"), [
    (STAGED_B, a_renamed_and_copied_b_gone, 5),
    (B_ON_TRIAL, a_renamed_and_copied_b_gone, 5),
    (GOOD_B, b_good_and_copied_a_gone, 4),
    (STAGED_B, a_emptied_while_it_runs, 4),
], ids=["A default, B staged", "B on trial", "B default, A bad", "A emptied while it runs"])
def test_a_kill_between_any_two_steps_boots_a_slot_the_state_allows_and_repairs_again(
    want: BootState, damage: Callable[[Path], None], steps: int, tmp_path: Path
) -> None:
    """After a kill at any step the ESP boots what the damaged one booted or what ``want``
    allows, and only the latter once loader.conf is rewritten; the next repair ends
    exactly where an uninterrupted one does."""
    whole = init_env(tmp_path / "whole" / "boot")
    damage(whole)
    before = boots(whole, tmp_path / "whole" / "probe")
    BlsBackend(whole).repair(want)
    allowed = {want.default, *([want.trial] if want.trial else [])}
    step = 0
    while True:
        esp = init_env(tmp_path / f"kill-{step}" / "boot")
        damage(esp)
        try:
            with killed_at_step(step):
                BlsBackend(esp).repair(want)
            break  # the repair needs fewer steps than this: every cut was tried
        except Killed:
            pass
        rewritten = conf(esp).read_bytes() == conf(whole).read_bytes()
        may_boot = allowed if rewritten else allowed | {before}
        assert boots(esp, tmp_path / f"kill-{step}" / "probe") in may_boot, \
            f"killed before step {step}"
        BlsBackend(esp).repair(want)
        assert BlsBackend(esp).read() == want, f"killed before step {step}"
        assert entries(esp) == entries(whole), f"killed before step {step}"
        assert conf(esp).read_bytes() == conf(whole).read_bytes(), f"killed before step {step}"
        step += 1
    assert step == steps
