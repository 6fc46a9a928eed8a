"""A deliberately bad parser, to prove the fuzz harness catches each kind of failure."""

from __future__ import annotations


def bad_parser(document: bytes) -> None:
    """Crash, exhaust memory, hang, refuse with a long message, or accept."""
    if document == b"crash":
        raise KeyError("unexpected")
    if document == b"memory":
        _ = b"a" * (1 << 30)
    if document == b"hang":
        while True:
            pass
    if document == b"chatty":
        raise ValueError("v" * 5000)
    if document == b"refuse":
        raise ValueError("a short reason")
