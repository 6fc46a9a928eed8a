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
import os
import pwd
import re
import signal
import time
from pathlib import Path
from typing import Any

from reconciler.store import LOCK_FILE, atomic_write_json

INBOX = "inbox"
KINDS = frozenset({"pin", "reboot", "stop", "cancel", "resume", "confirm", "rollback"})


def submit(data_dir: Path, kind: str, **fields: Any) -> Path:
    """Drop a request for the reconciler; returns its path (gone once taken)."""
    if kind not in KINDS:
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
            value = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(value, dict) and value.get("kind") in KINDS:
            out.append((folder / name, value))
    return out


def waiting(data_dir: Path, kinds: frozenset[str]) -> bool:
    """True when a request of one of ``kinds`` waits (cheap: file names only)."""
    try:
        names = os.listdir(data_dir / INBOX)
    except FileNotFoundError:
        return False
    return any(re.match(r"^\d+-([a-z]+)\.json$", n) and n.split("-", 1)[1][:-5] in kinds
               for n in names)


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
