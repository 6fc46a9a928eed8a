"""The daemon's log lines: one line each on stderr (the journal on a real device).

A command that reconciles in its own process (no daemon runs) turns them off
with :func:`silence`: its screen shows bars and outcomes read from the audit
trail, which holds every decision these lines would repeat.
"""

from __future__ import annotations

import sys

from reconciler.redact import redact

_ON = [True]


def log(message: str) -> None:
    """``kruxos daemon: MESSAGE`` on stderr, secrets masked (unless silenced)."""
    if _ON[0]:
        print(redact(f"kruxos daemon: {message}"), file=sys.stderr, flush=True)


def silence() -> None:
    """No more log lines from this process."""
    _ON[0] = False
