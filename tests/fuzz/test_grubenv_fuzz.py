"""GRUB env blocks, fuzzed: any bytes give variables or a short ``BootEnvError``.

A block that parses must also be writable again and read back the same, so
the reconciler can never read an env it then cannot rewrite (or rewrites
differently).
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from reconciler.boot import grubenv
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

TARGET = "tests.fuzz.test_grubenv_fuzz:parse_and_rewrite"
ACCEPTED = ("reconciler.errors.BootEnvError",)


def parse_and_rewrite(document: bytes) -> None:
    """Parse; when that works, render and parse again: the same variables must come back."""
    env = grubenv.parse(document, "fuzz")
    try:
        block = grubenv.render(env)
    except BootEnvError as exc:
        if not document.startswith(grubenv.HEADER) and "too small" in str(exc):
            return  # a block cut to its first line: the second one no longer fits; the
            # write is refused and the file left as it is, like any edit that does not fit
        raise AssertionError(f"a block that reads cannot be written back: {exc}") from exc
    again = grubenv.parse(block, "fuzz")
    if again != env:
        raise AssertionError(f"rewritten block reads {again!r}, not {env!r}")


def block(rnd: random.Random) -> bytes:
    """A block grub-editenv could have written, variables escaped as it escapes them."""
    env = {}
    for _ in range(rnd.randint(0, 8)):
        name = random_text(rnd, 12, avoid="=\n\0\ud800").lstrip("#") or "x"
        env[name] = rnd.choice(["\\", "\\\\\n", "a\\", "\n", "A\nB", "caf\xe9",
                                random_text(rnd, 40, avoid="\0\ud800")])
    try:
        return grubenv.render(env)
    except BootEnvError:  # too many or too long to fit, or not UTF-8: the empty block then
        return grubenv.render({})


SAME_SIZE = mutated(seeded(block), (flip_bits, overwrite, flip_bits), rounds=4)
ANY_SIZE = mutated(seeded(block), BYTE_MUTATIONS, rounds=2)
DOCUMENTS = st.one_of(SAME_SIZE, SAME_SIZE, ANY_SIZE, st.binary(min_size=1024, max_size=1024),
                      st.binary(max_size=2048))


def test_any_grub_env_block_gives_variables_or_a_short_boot_env_error() -> None:
    with ParserWorker(TARGET, ACCEPTED,
                      message_limit=SHORT_MESSAGE) as worker:
        findings = feed_examples(worker, DOCUMENTS)
    print(report("GRUB env blocks", findings))
    findings.assert_clean()
    assert findings.answers.get("ok", 0) > 0 and findings.answers.get("refused", 0) > 0
