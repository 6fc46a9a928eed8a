"""Hostile documents derived from valid ones: the byte-level mutations every fuzz test uses.

A parser is mostly attacked near the shape it expects, so each fuzz test
starts from valid documents (its own strategy) and :func:`mutated` damages
them the ways storage, networks and attackers do: flipped bits, truncation,
bytes inserted, deleted or overwritten, a chunk repeated until it is huge,
and (for nested formats) brackets opened thousands deep.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Findings, ParserWorker, examples

Mutation = Callable[[st.DrawFn, bytes], bytes]


def _position(draw: st.DrawFn, data: bytes) -> int:
    return draw(st.integers(0, len(data)))


def flip_bits(draw: st.DrawFn, data: bytes) -> bytes:
    """One to eight bits flipped anywhere."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(out) - 1))
        out[index] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def truncate(draw: st.DrawFn, data: bytes) -> bytes:
    """Cut short, as a torn write or a short read leaves it."""
    return data[:_position(draw, data)]


def insert(draw: st.DrawFn, data: bytes) -> bytes:
    """A few bytes of anything (NUL, 0xFF, UTF-8 fragments, escapes) inserted."""
    at = _position(draw, data)
    extra = draw(st.one_of(st.binary(min_size=1, max_size=16),
                           st.sampled_from([b"\0", b"\xff", b"\\", b"\n", b"\xc3", b"\xed\xa0\x80",
                                            b"\"", b"=", b"{", b"}", b"[", b"]", b",", b":"])))
    return data[:at] + extra + data[at:]


def delete(draw: st.DrawFn, data: bytes) -> bytes:
    """A stretch of bytes removed."""
    start = _position(draw, data)
    end = draw(st.integers(start, min(len(data), start + 64)))
    return data[:start] + data[end:]


def overwrite(draw: st.DrawFn, data: bytes) -> bytes:
    """A stretch overwritten by one repeated byte (erased flash, zeroed sectors)."""
    if not data:
        return data
    start = draw(st.integers(0, len(data) - 1))
    length = draw(st.integers(1, len(data) - start))
    fill = draw(st.sampled_from([b"\0", b"\xff", b"#", b"a"]))
    return data[:start] + fill * length + data[start + length:]


def repeat(draw: st.DrawFn, data: bytes) -> bytes:
    """A chunk repeated until the document is large (up to about 300 KB)."""
    start = _position(draw, data)
    chunk = data[start:start + draw(st.integers(1, 32))] or b"9"
    times = draw(st.sampled_from([100, 10_000, 300_000])) // len(chunk)
    return data[:start] + chunk * times + data[start:]


def nest(draw: st.DrawFn, data: bytes) -> bytes:
    """Brackets opened (and perhaps closed) thousands deep at one place."""
    at = _position(draw, data)
    depth = draw(st.sampled_from([50, 2000, 20_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    closed = draw(st.booleans())
    return data[:at] + opener * depth + (b"1" + closer * depth if closed else b"") + data[at:]


BYTE_MUTATIONS: tuple[Mutation, ...] = (flip_bits, truncate, insert, delete, overwrite, repeat)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes],
            mutations: tuple[Mutation, ...] = BYTE_MUTATIONS, rounds: int = 3) -> bytes:
    """A valid document with zero to ``rounds`` mutations applied."""
    data = draw(valid)
    for _ in range(draw(st.integers(0, rounds))):
        data = draw(st.sampled_from(mutations))(draw, data)
    return data


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
