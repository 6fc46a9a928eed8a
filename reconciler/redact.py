"""The one redaction of secrets, applied by every output path.

Audit records, the daemon log, ``update status`` (text and JSON), ``audit
list`` and every error a command prints pass their text through
:func:`redact` before it leaves the process. It removes three kinds of secret:

- the password (or token) in the userinfo of a URL: ``https://user:pw@host``
  becomes ``https://user:***@host``, ``https://token@host`` becomes ``https://***@host``;
- the value of an ``Authorization`` header, and a token written after ``Bearer``;
- any value registered with :func:`register_secret` — the channel password
  and token read from the files the device config names — wherever it appears.

One function for every path, so a new output cannot forget a kind of secret;
it is cheap enough (a few regular expressions) to run on every line.
"""

from __future__ import annotations

import io
import re
import sys
import threading
from typing import Any, TextIO

MASK = "***"
#: Shorter registered values are not masked: they would blank out ordinary words.
MIN_SECRET_LENGTH = 4

# scheme://userinfo@ — userinfo may hold anything but '/', '@' and whitespace. The
# bounded repeats keep the time linear in the text, whatever the text is.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<info>[^/@\s?#]{1,4096})@")
# An Authorization header's whole value (scheme and credentials), quoted or not.
_AUTH_HEADER = re.compile(r"(?i)(?P<word>\bauthorization[\"']?\s*[:=]\s*)"
                          r"(?P<value>\"[^\"]*\"|'[^']*'|(?:(?:basic|bearer|digest)\s+)?[^\s,;]+)")
# A bearer token written on its own ("Bearer eyJ..."): the word as RFC 6750 spells it.
_BEARER = re.compile(r"(?P<word>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it appears in any later output of this process."""
    global _secrets
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            # Longest first, so a secret containing another is masked whole.
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def _userinfo(match: re.Match[str]) -> str:
    info = match.group("info")
    user, sep, _ = info.partition(":")
    kept = f"{user}:{MASK}" if sep else MASK
    return f"{match.group('scheme')}{kept}@"


def _header(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('word')}{quote}{MASK}{quote}"


def redact(text: str) -> str:
    """``text`` with every secret it holds masked as ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    text = _AUTH_HEADER.sub(_header, text)
    return _BEARER.sub(lambda m: m.group("word") + MASK, text)


def redact_json(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with :func:`redact` on every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)) if isinstance(k, str) else k: redact_json(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v) for v in value]
    return value


class RedactingStream(io.TextIOBase):
    """A text stream that passes everything written to it through :func:`redact`.

    A command installs it over ``sys.stdout`` and ``sys.stderr`` once, so no
    line it prints — a status, an error, a message from a library — can carry
    a secret, however it was printed. Each ``write`` is redacted whole (``print``
    and ``click.echo`` write a message in one call).
    """

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self._inner = inner

    def write(self, text: str) -> int:
        """Write ``text`` redacted; report it as written whole."""
        if isinstance(text, bytes | bytearray):  # click.echo of bytes ends up here
            self._inner.write(redact(bytes(text).decode("utf-8", "replace")))
        else:
            self._inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self._inner.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The wrapped stream's encoding (click asks for it)."""
        return self._inner.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        """The wrapped stream's error handler."""
        return self._inner.errors

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal (colours, prompts)."""
        return self._inner.isatty()

    def fileno(self) -> int:
        """The wrapped stream's descriptor."""
        return self._inner.fileno()

    def writable(self) -> bool:
        """Always: this is an output stream."""
        return True


def redact_standard_streams() -> None:
    """Route this process's ``stdout`` and ``stderr`` through :func:`redact`."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
