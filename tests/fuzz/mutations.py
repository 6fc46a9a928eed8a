"""Hostile documents derived from valid ones: the byte-level mutations every fuzz test uses.

A parser is mostly attacked near the shape it expects, so each fuzz test
starts from valid documents (its own strategy) and :func:`mutated` damages
them the ways storage, networks and attackers do: flipped bits, truncation,
bytes inserted, deleted or overwritten, a chunk repeated until it is huge,
and (for nested formats) brackets opened thousands deep.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Findings, ParserWorker, examples

Mutation = Callable[[random.Random, bytes], bytes]
#: The longest refusal a parser may give here: ~80 characters of a value, the file's
#: name and the words around them (the harness's own limit is a looser 2,000).
SHORT_MESSAGE = 400
#: Bytes that mean something to one format or another.
_SPECIAL = (b"\0", b"\xff", b"\\", b"\n", b"\xc3", b"\xed\xa0\x80", b'"', b"=", b"{", b"}",
            b"[", b"]", b",", b":", b"+", b"-", b"#")


def flip_bits(rnd: random.Random, data: bytes) -> bytes:
    """One to eight bits flipped anywhere."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
    return bytes(out)


def truncate(rnd: random.Random, data: bytes) -> bytes:
    """Cut short, as a torn write or a short read leaves it."""
    return data[:rnd.randint(0, len(data))]


def insert(rnd: random.Random, data: bytes) -> bytes:
    """A few bytes of anything (NUL, 0xFF, UTF-8 fragments, escapes) inserted."""
    at = rnd.randint(0, len(data))
    extra = rnd.choice(_SPECIAL) if rnd.random() < 0.5 else rnd.randbytes(rnd.randint(1, 16))
    return data[:at] + extra + data[at:]


def delete(rnd: random.Random, data: bytes) -> bytes:
    """A stretch of bytes removed."""
    start = rnd.randint(0, len(data))
    return data[:start] + data[start + rnd.randint(1, 64):]


def overwrite(rnd: random.Random, data: bytes) -> bytes:
    """A stretch overwritten by one repeated byte (erased flash, zeroed sectors)."""
    if not data:
        return data
    start = rnd.randrange(len(data))
    length = rnd.randint(1, len(data) - start)
    return data[:start] + rnd.choice((b"\0", b"\xff", b"#", b"a")) * length + data[start + length:]


def repeat(rnd: random.Random, data: bytes) -> bytes:
    """A chunk repeated until the document is large (up to about 300 KB)."""
    start = rnd.randint(0, len(data))
    chunk = data[start:start + rnd.randint(1, 32)] or b"9"
    return data[:start] + chunk * (rnd.choice((100, 10_000, 300_000)) // len(chunk)) + data[start:]


def nest(rnd: random.Random, data: bytes) -> bytes:
    """Brackets opened (and perhaps closed) thousands deep at one place."""
    at = rnd.randint(0, len(data))
    depth = rnd.choice((50, 2000, 20_000))
    opener, closer = rnd.choice(((b"[", b"]"), (b'{"a":', b"}")))
    tail = b"1" + closer * depth if rnd.random() < 0.5 else b""
    return data[:at] + opener * depth + tail + data[at:]


BYTE_MUTATIONS: tuple[Mutation, ...] = (flip_bits, truncate, insert, delete, overwrite, repeat)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes],
            mutations: tuple[Mutation, ...] = BYTE_MUTATIONS, rounds: int = 3) -> bytes:
    """A valid document with zero to ``rounds`` mutations applied.

    The mutations draw from a ``Random`` seeded by hypothesis rather than from
    hypothesis for each choice: a thousand documents then take a second, not ten.
    """
    data = draw(valid)
    rnd = random.Random(draw(st.integers(0, 2**64 - 1)))
    for _ in range(rnd.randint(0, rounds)):
        data = rnd.choice(mutations)(rnd, data)
    return data


_CHARACTERS = ("abcXYZ019 _.-+=#\\\n\t\0\x1b\x7f\x85\xa0\xe9\u00ff\u0663\u200b\u2028\ufeff"
               "\uffff\U0001f600\udcff\ud800")


def random_text(rnd: random.Random, max_size: int, avoid: str = "") -> str:
    """Text mixing ASCII, separators, controls, non-ASCII digits, emoji and lone surrogates."""
    pool = [c for c in _CHARACTERS if c not in avoid]
    return "".join(rnd.choice(pool) for _ in range(rnd.randint(0, max_size)))


def seeded(build: Callable[[random.Random], bytes]) -> st.SearchStrategy[bytes]:
    """Documents built by ``build`` from a ``Random`` seeded by hypothesis (one draw each)."""
    return st.integers(0, 2**64 - 1).map(lambda seed: build(random.Random(seed)))


def feed_examples(worker: ParserWorker, documents: st.SearchStrategy[bytes]) -> Findings:
    """Send :func:`examples` generated documents to ``worker``; its findings, for asserting."""

    @settings(max_examples=examples(), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents)
    def feed(document: bytes) -> None:
        worker.feed(document)

    feed()
    return worker.findings


def report(name: str, findings: Findings) -> str:
    """One line for the test log: how many documents, how they were answered, the slowest."""
    total = sum(findings.answers.values())
    answers = ", ".join(f"{kind} {count}" for kind, count in sorted(findings.answers.items()))
    return f"{name}: {total} documents ({answers}); slowest answer {findings.slowest:.3f}s"
