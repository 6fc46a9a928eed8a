"""Quoting input in messages: a short, printable excerpt of any value (pure).

An error message that shows the value it refuses must stay small and safe
whatever the value is: a YAML alias can make a tiny file hold a structure of
a billion items (``{value!r}`` of it once wrote a 312 MB audit record), and a
name can hold newlines or terminal escapes that would forge lines of a log or
recolour an operator's terminal. So every message quotes values through
:func:`excerpt`, which never walks a container, shows at most ``limit``
characters, and escapes every control character.
"""

from __future__ import annotations

import unicodedata

__all__ = ["EXCERPT_LIMIT", "control_character", "excerpt", "printable"]

#: The most characters of a value a message quotes.
EXCERPT_LIMIT = 80
#: Unicode categories that must never reach a terminal or a log line raw:
#: controls, format characters (bidi overrides), surrogates, private use, line separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_ELLIPSIS = "..."


def control_character(text: str) -> str | None:
    """The first character of ``text`` that is not printable (``None`` when all are)."""
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE:
            return char
    return None


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, each unprintable one escaped (``\\x1b``)."""
    cut = text[:limit]
    shown = "".join(_escape(c) if unicodedata.category(c) in _UNPRINTABLE else c for c in cut)
    return shown + _ELLIPSIS if len(text) > limit else shown


def _escape(char: str) -> str:
    return repr(char)[1:-1] if char != "'" else char


def excerpt(value: object, limit: int = EXCERPT_LIMIT) -> str:
    """A quoted excerpt of ``value`` for a message: at most ``limit`` characters of it.

    Strings and bytes are cut before they are ``repr``-ed (so the cost does not
    grow with the value); containers are described by kind and size, never
    shown; very large integers are described by their number of digits;
    booleans and null are spelled as in YAML and JSON (``true``, ``null``).
    """
    if isinstance(value, str):
        return _quoted(value, limit)
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value[:limit])) + (_ELLIPSIS if len(value) > limit else "")
    if isinstance(value, bool) or value is None:  # as the YAML or JSON it came from
        return "null" if value is None else str(value).lower()
    if isinstance(value, int):
        return _integer(value, limit)
    if isinstance(value, float):
        return repr(value)[:limit]
    return _described(value)


def _quoted(text: str, limit: int) -> str:
    """``text`` in single quotes, escaped, with at most ``limit`` characters between them.

    The limit counts what is shown, escapes included: 80 undecodable bytes
    (``\\udcff`` each) must not become a 480-character quote.
    """
    pieces: list[str] = []
    size = 0
    for char in text[:limit]:
        piece = "\\'" if char == "'" else repr(char)[1:-1]
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    shown = "'" + "".join(pieces) + "'"
    return shown if len(pieces) == len(text) else shown + _ELLIPSIS


def _integer(value: int, limit: int) -> str:
    if value.bit_length() > 3 * limit:  # about limit decimal digits; str() of it stays cheap
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = str(value)
    return text if len(text) <= limit else text[:limit] + _ELLIPSIS


def _described(value: object) -> str:
    kinds = ((dict, "a mapping"), (list, "a list"), (tuple, "a list"), (set, "a set"))
    for kind, name in kinds:
        if isinstance(value, kind):
            return f"{name} of {len(value)} item{'s' if len(value) != 1 else ''}"
    return f"a value of type {type(value).__name__}"
