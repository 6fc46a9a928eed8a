"""U-Boot envs, fuzzed: any copies and any ``fw_env.config`` give variables or a ``BootEnvError``.

The env target lays a document out as real files (a config naming one copy or
a redundant pair, and the copies' bytes), reads it as the backend does, and
when it reads, writes the same variables back and reads them again: the
current copy must then hold exactly what was read.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import strategies as st

from reconciler.boot import ubootenv
from reconciler.boot.ubootenv import EnvCopy
from reconciler.errors import BootEnvError
from tests.fuzz.harness import ParserWorker
from tests.fuzz.mutations import (
    BYTE_MUTATIONS,
    SHORT_MESSAGE,
    feed_examples,
    flip_bits,
    mutated,
    overwrite,
    random_text,
    report,
    seeded,
)

ACCEPTED = ("reconciler.errors.BootEnvError",)
#: Layout of an env document: mode (even: single, odd: redundant), copy size, then the bytes.
HEADER = struct.Struct(">BH")


def _place() -> Path:
    place = Path(os.environ["KRUXOS_FUZZ_DIR"])
    for name in ("env", "env.tmp"):
        (place / name).unlink(missing_ok=True)
    return place


def read_and_rewrite(document: bytes) -> None:
    """The backend's read of the copies in ``document``, then a write and a read back."""
    if len(document) < HEADER.size:
        raise BootEnvError("document too short for its header")
    mode, size = HEADER.unpack_from(document)
    body, place = document[HEADER.size:], _place()
    (place / "env").write_bytes(body)
    copies = [EnvCopy(place / "env", 0, size)]
    if mode % 2:
        copies.append(EnvCopy(place / "env", size, size))
    config = place / "fw_env.config"
    config.write_text(ubootenv.config_text(copies))
    env = ubootenv.read_env(config)
    ubootenv.write_env(config, env)
    if (again := ubootenv.read_env(config)) != env:
        raise AssertionError(f"rewritten env reads {again!r}, not {env!r}")


def read_config(document: bytes) -> None:
    """``fw_env.config`` parsing on any text."""
    config = _place() / "fw_env.config"
    config.write_bytes(document)
    ubootenv.read_config(config)


def env(rnd: random.Random) -> bytes:
    """One copy or a redundant pair as libubootenv writes them, with the layout header."""
    size = rnd.choice([9, 16, 64, 256, 1024, 4096])
    redundant = rnd.random() < 0.5
    variables = {(random_text(rnd, 10, avoid="=\0\ud800") or "x"):
                 random_text(rnd, 30, avoid="\0\ud800") for _ in range(rnd.randint(0, 6))}
    copies = []
    for _ in range(2 if redundant else 1):
        flag = rnd.randint(0, 255) if redundant else None
        try:
            copies.append(ubootenv.encode(variables, size, flag))
        except BootEnvError:
            copies.append(ubootenv.encode({}, size, flag))
    return HEADER.pack(int(redundant), size) + b"".join(copies)


ENV_DOCUMENTS = st.one_of(mutated(seeded(env), (flip_bits, overwrite), rounds=3),
                          mutated(seeded(env), BYTE_MUTATIONS, rounds=2), st.binary(max_size=600))

CONFIG_LINES = st.sampled_from(["/dev/mmcblk0 0x3f8000 0x4000\n", "env 0 0x2000 0x2000 1\n",
                                "# comment\n", "/dev/mtd0 0x0 0x10000 0x10000 2\n",
                                "rel 010 0x100\n", "x 0x_10 1_0\n", "x 0 99999999999999999\n"])
CONFIG_DOCUMENTS = mutated(st.lists(CONFIG_LINES, max_size=4).map("".join).map(str.encode),
                           BYTE_MUTATIONS, rounds=3)


@pytest.mark.parametrize("name, target, documents", [
    ("U-Boot env copies", "read_and_rewrite", ENV_DOCUMENTS),
    ("fw_env.config", "read_config", CONFIG_DOCUMENTS),
])
def test_any_uboot_env_or_config_reads_or_is_refused_with_a_boot_env_error(
        name: str, target: str, documents: st.SearchStrategy[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # In memory where there is a tmpfs: a thousand fsyncs on a busy disk take long.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as place:
        monkeypatch.setenv("KRUXOS_FUZZ_DIR", place)
        with ParserWorker(f"tests.fuzz.test_ubootenv_fuzz:{target}", ACCEPTED,
                          message_limit=SHORT_MESSAGE) as worker:
            findings = feed_examples(worker, documents)
    print(report(name, findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0 and findings.answers.get("refused", 0) > 0
