"""The simulated bootloader: grub.cfg's trial logic applied to a grubenv file."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from reconciler.boot import grubenv
from reconciler.sim.bootloader import COUNTDOWN, BootChoice, boot_once

GRUB_CFG = Path(__file__).resolve().parent.parent / "deploy" / "grub" / "grub.cfg"


def env_file(tmp_path: Path, **variables: str) -> Path:
    path = tmp_path / "grubenv"
    grubenv.write_env(path, {"foreign": "kept", **variables})
    return path


def test_a_missing_env_boots_slot_a(tmp_path: Path) -> None:
    choice = boot_once(tmp_path / "grubenv")
    assert (choice.slot, choice.trial, choice.fell_back) == ("A", False, False)


def test_a_corrupt_env_boots_slot_a_like_a_failed_load_env(tmp_path: Path) -> None:
    (tmp_path / "grubenv").write_bytes(b"garbage")
    assert boot_once(tmp_path / "grubenv").slot == "A"


@pytest.mark.parametrize(("default", "slot"), [("A", "A"), ("B", "B"), ("", "A"), ("C", "A")])
def test_no_trial_boots_the_default_without_touching_the_env(
    tmp_path: Path, default: str, slot: str
) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT=default, KRUXOS_TRIAL="", KRUXOS_TRIES="3")
    before = path.read_bytes()
    assert boot_once(path) == BootChoice(slot, False, 0, False,  # type: ignore[arg-type]
                                         f"no trial: boot default {slot}")
    assert path.read_bytes() == before


def test_a_trial_counts_down_before_booting_the_trial_slot(tmp_path: Path) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT="A", KRUXOS_TRIAL="B", KRUXOS_TRIES="2")
    choice = boot_once(path)
    assert (choice.slot, choice.trial, choice.tries_left_after) == ("B", True, 1)
    assert grubenv.read_env(path)["KRUXOS_TRIES"] == "1"


def test_exhausted_tries_mark_the_trial_slot_bad_and_boot_the_default(tmp_path: Path) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT="A", KRUXOS_TRIAL="B", KRUXOS_TRIES="0",
                    KRUXOS_A="good", KRUXOS_B="staged", KRUXOS_FALLBACK="")
    choice = boot_once(path)
    assert (choice.slot, choice.trial, choice.fell_back) == ("A", False, True)
    assert "B: trial tries exhausted" in choice.trace
    assert grubenv.read_env(path) == {
        "foreign": "kept", "KRUXOS_DEFAULT": "A", "KRUXOS_TRIAL": "", "KRUXOS_TRIES": "0",
        "KRUXOS_A": "good", "KRUXOS_B": "bad", "KRUXOS_FALLBACK": "B: trial tries exhausted",
    }


def test_a_damaged_try_counter_counts_as_exhausted(tmp_path: Path) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT="B", KRUXOS_TRIAL="A", KRUXOS_TRIES="x")
    choice = boot_once(path)
    assert (choice.slot, choice.fell_back) == ("B", True)
    assert grubenv.read_env(path)["KRUXOS_A"] == "bad"


def test_a_counter_that_cannot_be_saved_boots_the_default_not_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT="A", KRUXOS_TRIAL="B", KRUXOS_TRIES="3")

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(grubenv, "edit", read_only)
    choice = boot_once(path)
    assert (choice.slot, choice.trial) == ("A", False)
    assert grubenv.read_env(path)["KRUXOS_TRIES"] == "3"


def test_every_try_count_is_one_boot_until_the_fallback(tmp_path: Path) -> None:
    path = env_file(tmp_path, KRUXOS_DEFAULT="A", KRUXOS_TRIAL="B", KRUXOS_TRIES="9")
    slots = [boot_once(path).slot for _ in range(11)]
    assert slots == ["B"] * 9 + ["A", "A"]


def test_the_countdown_table_is_grub_cfgs_elif_chain() -> None:
    chain = re.findall(
        r'if \[ "\$\{KRUXOS_TRIES\}" = "(\d)" \]; then set KRUXOS_TRIES=(\d);',
        GRUB_CFG.read_text(),
    )
    assert dict(chain) == COUNTDOWN
    assert list(COUNTDOWN) == [str(n) for n in range(9, 0, -1)]


def test_grub_cfg_leaves_the_same_fallback_trace_as_the_emulator() -> None:
    text = GRUB_CFG.read_text()
    assert 'set KRUXOS_FALLBACK="${kruxos_trial}: trial tries exhausted"' in text
    saved = 'save_env --file "${kruxos_env}" KRUXOS_A KRUXOS_B KRUXOS_TRIAL KRUXOS_FALLBACK'
    assert saved in text


@pytest.mark.needs_tool("grub-script-check")
def test_the_shipped_grub_cfg_is_valid_grub_script() -> None:
    result = subprocess.run(
        ["grub-script-check", str(GRUB_CFG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
