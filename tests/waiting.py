"""The one way a test waits: poll a condition until a deadline, never sleep and hope.

A loaded machine makes everything slower but changes no order of events, so a
test that waits for the event it needs (with a generous deadline) passes under
load where a ``sleep(n)`` guess fails. Deadlines are limits, not expectations:
set them well above the idle time (the suite must pass with both cores busy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: What a predicate may raise while the thing it looks at is still being made.
TRANSIENT = (AssertionError, OSError, ValueError, KeyError)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, *, every: float = 0.05,
             context: Callable[[], str] | None = None,
             abort: Callable[[], str | None] | None = None) -> T:
    """Return ``predicate()``'s first truthy value; fail naming ``what`` after ``timeout`` s.

    ``context`` adds diagnostics to the failure; ``abort`` returns a reason to give
    up at once (a process that exited). Transient errors of the predicate are
    retried and the last one is quoted on failure.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except TRANSIENT as exc:
            last_error = exc
        reason = abort() if abort is not None else None
        if reason is not None or time.monotonic() > deadline:
            why = reason or f"timed out after {timeout}s"
            raise AssertionError(f"{why} waiting for {what}"
                                 f"{f' (last error: {last_error})' if last_error else ''}"
                                 f"{context() if context is not None else ''}")
        time.sleep(every)


def holds_for(check: Callable[[], bool], seconds: float, what: str, *, every: float = 0.1,
              context: Callable[[], str] | None = None) -> None:
    """Assert ``check`` is true at every look for ``seconds`` (a steady state, not a wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            raise AssertionError(f"{what} stopped holding{context() if context else ''}")
        time.sleep(every)
