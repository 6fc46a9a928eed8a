"""Requests from a person at the device to the reconciler: an inbox on the data dir.

The daemon is the only writer of the state file and the audit trail. A CLI
command therefore never changes them itself: it drops a small JSON request
into ``DATA/inbox/`` (atomically), and wakes the daemon with ``SIGHUP``. The
daemon takes the requests in order at the start of its next pass, records each
in the audit trail, turns it into state (an override pin, a confirm or
rollback request...) and deletes it. When no daemon runs, the command takes
the data-dir lock and runs the same passes itself.

Kinds: ``pin`` (update apply), ``reboot`` (the answer to "Reboot now?"),
``stop`` (Ctrl-C during a download), ``cancel``, ``resume``, ``confirm``,
``rollback``.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pwd
import re
import signal
import time
from pathlib import Path
from typing import Any, Protocol

from reconciler.durable import atomic_write_json
from reconciler.errors import StateError
from reconciler.semver import is_semver
from reconciler.store import LOCK_FILE

INBOX = "inbox"
KINDS = frozenset({"pin", "reboot", "stop", "cancel", "resume", "confirm", "rollback"})
#: The largest request file read (a real one is about 150 bytes).
MAX_REQUEST_BYTES = 64 << 10
#: Nesting of arrays and objects allowed in a request.
MAX_DEPTH = 8
#: Characters of a bad value quoted in an error.
_QUOTE = 80
#: Fields every kind may carry, and the ones only some kinds carry: name -> allowed values
#: (``None``: any string of at most 200 characters).
_CHOICES: dict[str, frozenset[str] | None] = {
    "by": None,
    "reboot": frozenset({"ask", "now", "next-boot", "rules"}),
    "answer": frozenset({"now", "next-boot"}),
}


def submit(data_dir: Path, kind: str, **fields: Any) -> Path:
    """Drop a request for the reconciler; returns its path (gone once taken)."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    path = data_dir / INBOX / f"{time.time_ns():020d}-{kind}.json"
    atomic_write_json(path, {"kind": kind, "at": time.time(), "by": _who(), **fields})
    return path


def pending(data_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The requests not taken yet, oldest first; unreadable ones are skipped."""
    folder = data_dir / INBOX
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            out.append((folder / name, read_request(folder / name)))
        except (OSError, StateError):
            continue
    return out


def read_request(path: Path) -> dict[str, Any]:
    """One request file, read (at most :data:`MAX_REQUEST_BYTES`) and parsed."""
    with open(path, "rb") as f:
        raw = f.read(MAX_REQUEST_BYTES + 1)
    return parse_request(raw, path.name)


def parse_request(raw: bytes, name: str = "<bytes>") -> dict[str, Any]:
    """The request in ``raw``, every field the reconciler reads checked; else a ``StateError``.

    Anyone who can write the inbox can write anything there: the size, the
    nesting and the type of each known field are checked before the request
    reaches a decision, and the error quotes at most 80 characters of a value.
    Unknown fields are kept (a newer CLI may send more).
    """
    if len(raw) > MAX_REQUEST_BYTES:
        raise _bad(name, f"larger than {MAX_REQUEST_BYTES} bytes")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:
        raise _bad(name, f"nested more than {MAX_DEPTH} levels deep") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the digit limit
        raise _bad(name, f"not JSON ({str(exc)[:_QUOTE]})") from exc
    if not isinstance(value, dict):
        raise _bad(name, "not a JSON object")
    if _depth(value) > MAX_DEPTH:
        raise _bad(name, f"nested more than {MAX_DEPTH} levels deep")
    _check_fields(value, name)
    return value


def _check_fields(request: dict[str, Any], name: str) -> None:
    kind = request.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _bad(name, f"unknown kind {_quote(kind)}")
    at = request.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise _bad(name, f"'at' must be a time in seconds, not {_quote(at)}")
    for field, allowed in _CHOICES.items():
        if field in request:
            _check_choice(request[field], field, allowed, name)
    if kind == "pin":
        version = request.get("version")
        if not isinstance(version, str) or len(version) > 128 or not is_semver(version):
            raise _bad(name, f"'version' must be a semantic version, not {_quote(version)}")


def _check_choice(value: Any, field: str, allowed: frozenset[str] | None, name: str) -> None:
    if not isinstance(value, str) or (allowed is None and len(value) > 200):
        raise _bad(name, f"{field!r} must be a short string, not {_quote(value)}")
    if allowed is not None and value not in allowed:
        raise _bad(name, f"{field!r} must be one of {', '.join(sorted(allowed))}, "
                         f"not {_quote(value)}")


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _quote(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, str):
        return _quoted(value)
    text = json.dumps(value)
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def _bad(name: str, why: str) -> StateError:
    return StateError(f"inbox request {name[:_QUOTE]}: {why}")


def waiting(data_dir: Path, kinds: frozenset[str]) -> bool:
    """True when a request of one of ``kinds`` waits (cheap: file names only)."""
    try:
        names = os.listdir(data_dir / INBOX)
    except FileNotFoundError:
        return False
    return any(re.match(r"^\d+-([a-z]+)\.json$", n) and n.split("-", 1)[1][:-5] in kinds
               for n in names)


class Inbox(Protocol):
    """Where the reconciler finds a person's requests: one of its collaborators
    (:class:`reconciler.reconcile.Parts`), so a model can post requests in memory."""

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """The requests not taken yet, oldest first, as (id, parsed request)."""

    def waiting(self, kinds: frozenset[str]) -> bool:
        """True when a request of one of ``kinds`` waits (checked at every block)."""

    def take(self, request_id: str) -> None:
        """Remove a request once its decision is recorded and carried out."""


class FileInbox:
    """The device's inbox: the JSON files in ``DATA/inbox/`` that the CLI drops."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return [(path.name, value) for path, value in pending(self.data_dir)]

    def waiting(self, kinds: frozenset[str]) -> bool:
        return waiting(self.data_dir, kinds)

    def take(self, request_id: str) -> None:
        (self.data_dir / INBOX / request_id).unlink(missing_ok=True)


def daemon_pid(data_dir: Path) -> int | None:
    """The pid of the daemon holding the data-dir lock, or ``None`` when none runs."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            match = re.search(rb"kruxos daemon \(pid (\d+)\)", os.pread(fd, 200, 0))
            return int(match.group(1)) if match else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wake_daemon(pid: int) -> None:
    """Ask the daemon for a pass now (it takes the inbox first)."""
    os.kill(pid, signal.SIGHUP)


def _who() -> str:
    """Who asked, for the audit trail: the (sudo) user and the terminal."""
    user = os.environ.get("SUDO_USER") or _login_name()
    tty = os.environ.get("SSH_TTY") or (os.ttyname(0) if os.isatty(0) else "no terminal")
    return f"{user} on {tty}"


def _login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _quoted(text: str) -> str:
    """``text`` as JSON shows it, with at most :data:`_QUOTE` characters between the quotes,
    escapes included (80 control characters must not become a 480-character quote)."""
    pieces: list[str] = []
    size = 0
    for char in text[:_QUOTE]:
        piece = json.dumps(char)[1:-1]
        if size + len(piece) > _QUOTE:
            break
        pieces.append(piece)
        size += len(piece)
    shown = '"' + "".join(pieces) + '"'
    return shown if len(pieces) == len(text) else shown + "..."
