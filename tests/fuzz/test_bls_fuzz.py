"""BLS entry names, loader.conf and entry contents, fuzzed: a slot and counters, a foreign
entry, or a short ``BootEnvError``; never a number guessed from digits systemd-boot would not
read; a repair from any entry either refused or leaving an ESP that reads as asked.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import strategies as st

from reconciler.boot.bls import BlsBackend, entry_name, parse_entry_name
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import (
    BYTE_MUTATIONS,
    SHORT_MESSAGE,
    feed_examples,
    mutated,
    report,
    seeded,
)

ACCEPTED = ("reconciler.errors.BootEnvError",)


def parse_name(document: bytes) -> None:
    """One file name as ``os.listdir`` gives it; ours must be exactly the name we would write."""
    name = document.decode("utf-8", "surrogateescape")
    parsed = parse_entry_name(name)
    if parsed is not None and entry_name(*parsed) != name:
        raise AssertionError(f"{name!r} reads as {parsed}, written {entry_name(*parsed)!r}")


def read_esp(document: bytes) -> None:
    """The backend's read of an ESP whose loader.conf holds ``document``."""
    esp = Path(os.environ["KRUXOS_FUZZ_DIR"]) / "esp"
    entries = esp / "loader" / "entries"
    if not entries.is_dir():
        entries.mkdir(parents=True)
        (esp / "efivars").mkdir()
        for name in ("kruxos-a.conf", "kruxos-b+3-1.conf"):
            slot = name[7].upper()
            (entries / name).write_text(f"linux /kruxos/{name[7]}/vmlinuz\n"
                                        f"options kruxos.slot={slot}\n")
    (esp / "loader" / "loader.conf").write_bytes(document)
    BlsBackend(esp, efivars=esp / "efivars").read()


def repair_esp(document: bytes) -> None:
    """A repair of an ESP whose only entry, slot A's, holds ``document`` and whose loader.conf
    is garbage: refused with a reason, or an ESP that then reads as the state asked for."""
    import shutil

    from reconciler.boot import BootState
    from reconciler.sim.boot_bls import init_env

    place = Path(os.environ["KRUXOS_FUZZ_DIR"]) / "repair"
    shutil.rmtree(place, ignore_errors=True)
    esp = init_env(place / "boot")
    (esp / "loader" / "entries" / "kruxos-b+0.conf").unlink()
    (esp / "loader" / "entries" / "kruxos-a.conf").write_bytes(document)
    (esp / "loader" / "loader.conf").write_bytes(document[::-1])
    want = BootState(default="A", marks={"A": "good", "B": "staged"})
    backend = BlsBackend(esp, efivars=place / "boot" / "efivars")
    backend.repair(want)
    if backend.read() != want:
        raise AssertionError(f"repaired, then read as {backend.read()}")


ENTRY_LINES = ["title      KruxOS (slot A)\n", "linux      /kruxos/a/vmlinuz\n",
               "initrd     /kruxos/a/initrd.img\n", "efi /kruxos/a/x.efi\n",
               "options    root=PARTLABEL=root-a ro kruxos.slot=A quiet\n",
               "options kruxos.slot=B\n", "options root=/dev/sda2\n", "version 1.0.0\n",
               "sort-key kruxos\n", "# kruxos-a.conf\n", "devicetree /kruxos/a/x.dtb\n",
               "machine-id 0123456789abcdef0123456789abcdef\n", "\n", "options a\n"]


def entry(rnd: random.Random) -> bytes:
    """The shipped entry of A, some of its lines dropped or doubled, other lines added."""
    shipped = ENTRY_LINES[:5]
    lines = [line for line in shipped if rnd.random() < 0.9]
    lines += [rnd.choice(ENTRY_LINES) for _ in range(rnd.randint(0, 3))]
    rnd.shuffle(lines)
    return "".join(lines).encode()


PIECES = ["kruxos-", "a", "b", "c", "+", "-", ".conf", "0", "1", "9", "00", "99999", "100000",
          "9" * 5000, "\u0663", "\uff11", "\u00b2", "/", ".", " ", "\n", "\0", "\udcff", "A", "é",
          "+-", "--"]


def name(rnd: random.Random) -> bytes:
    """One of our names with any counters, or pieces of one put together any way."""
    pieces = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 8)))
    text = rnd.choice([
        entry_name(rnd.choice(["A", "B"]), rnd.choice([None, rnd.randint(0, 99999)]),
                   rnd.choice([None, rnd.randint(0, 99999)])),
        "kruxos-" + pieces + ".conf", pieces])
    return text.encode("utf-8", "surrogateescape")


CONF_LINES = ["timeout 3\n", "default kruxos-a[+.][1-9c]*\n", "default kruxos-b[+.][1-9c]*\n",
              "# kruxos: A=good B=staged\n", "# kruxos: A=good B=bad\n", "# kruxos: B=odd\n",
              "# kruxos-fallback: B: trial tries exhausted\n", "default  \n",
              "default\tkruxos-*\n", "editor no\n", "\n"]


def loader_conf(rnd: random.Random) -> bytes:
    return "".join(rnd.choice(CONF_LINES) for _ in range(rnd.randint(1, 5))).encode()


NAME_DOCUMENTS = mutated(seeded(name), BYTE_MUTATIONS, rounds=2)
CONF_DOCUMENTS = mutated(seeded(loader_conf), BYTE_MUTATIONS, rounds=2)
ENTRY_DOCUMENTS = mutated(seeded(entry), BYTE_MUTATIONS, rounds=2)


@pytest.mark.parametrize("name, target, documents", [
    ("BLS entry names", "parse_name", NAME_DOCUMENTS),
    ("BLS loader.conf", "read_esp", CONF_DOCUMENTS),
    ("BLS entry repaired from", "repair_esp", ENTRY_DOCUMENTS),
])
def test_any_entry_name_or_loader_conf_reads_or_is_refused_with_a_boot_env_error(
        name: str, target: str, documents: st.SearchStrategy[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as place:
        monkeypatch.setenv("KRUXOS_FUZZ_DIR", place)
        with ParserWorker(f"tests.fuzz.test_bls_fuzz:{target}", ACCEPTED,
                          message_limit=SHORT_MESSAGE) as worker:
            findings = feed_examples(worker, documents)
    print(report(name, findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0 and findings.answers.get("refused", 0) > 0
