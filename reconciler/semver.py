"""Semantic versions: parsing and ordering (pure).

Only what release ordering needs: ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``.
A prerelease sorts before its release; build metadata is ignored in ordering.
"""

from __future__ import annotations

import re
from functools import total_ordering

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?\Z",
    re.ASCII,  # \d is 0-9 only, and \Z (unlike $) refuses a trailing newline
)


def is_semver(text: str) -> bool:
    """True when ``text`` is an exact semantic version such as ``1.0.1``."""
    return _SEMVER.match(text) is not None


@total_ordering
class Version:
    """A parsed semantic version, ordered by semver precedence."""

    __slots__ = ("text", "_key")

    def __init__(self, text: str) -> None:
        match = _SEMVER.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version (expected MAJOR.MINOR.PATCH)")
        self.text = text
        core = tuple(int(match.group(i)) for i in (1, 2, 3))
        pre = match.group(4)
        pre_key: tuple[tuple[int, int | str], ...] = tuple(
            (0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")
        ) if pre else ()
        # A release (no prerelease) sorts after every prerelease of the same core.
        self._key = (core, 0 if pre else 1, pre_key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: Version) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def newest(versions: list[str]) -> str | None:
    """The highest of ``versions`` by semver precedence; ``None`` for an empty list."""
    valid = [v for v in versions if is_semver(v)]
    return max(valid, key=Version) if valid else None
