"""The one error hierarchy of the reconciler.

::

    KruxosError                      everything we raise on purpose
    ├── PermanentError               retrying the same thing gives the same answer
    │   ├── SpecError                a desired-state file is invalid (file, field, line)
    │   ├── ConfigError              the device config is invalid
    │   ├── StateError               a state file on the data dir is unreadable
    │   ├── LockHeldError            another writer holds the data-dir lock
    │   ├── BootEnvError             a bootloader environment is corrupt or full
    │   ├── AuditError               the audit trail cannot be read or written
    │   ├── ReleaseError             a release or channel is refused (bad signature, ...)
    │   └── UrlError                 a URL that cannot be used (also a ValueError)
    └── TemporaryError(delay)        may work later; ``delay`` says when to try again
        └── ChannelUnavailable       the channel did not answer

Errors from libraries are translated at the edge (``raise X(...) from exc``) and
carry the name of the part that failed (``"grub backend: ..."``).
"""

from __future__ import annotations


class KruxosError(Exception):
    """Base of every error the reconciler raises on purpose."""


class PermanentError(KruxosError):
    """Retrying the same operation with the same input gives the same failure."""


class TemporaryError(KruxosError):
    """May succeed later; ``delay`` (seconds) says when a retry makes sense."""

    def __init__(self, message: str, delay: float = 30.0) -> None:
        super().__init__(message)
        self.delay = delay


class Stopped(TemporaryError):
    """Work stopped on purpose (a person's stop, a cancel, a shutdown), to resume where it
    stopped; not a failure of what it was doing."""


class SpecError(PermanentError):
    """A desired-state file is invalid; the message names file, field path and line."""


class ConfigError(PermanentError):
    """The device config is missing or invalid."""


class StateError(PermanentError):
    """A state file on the data dir is unreadable."""


class LockHeldError(PermanentError):
    """Another process holds the data-dir lock (one writer at a time).

    ``holder`` is what the lock file names (``kruxos daemon (pid 42)``), or
    ``another process`` when it names none (a holder that has not written its
    name yet, or a full disk)."""

    def __init__(self, message: str, holder: str = "another process") -> None:
        super().__init__(message)
        self.holder = holder

    @property
    def by_daemon(self) -> bool:
        """The holder is a ``kruxos daemon``, not a command."""
        return self.holder.startswith("kruxos daemon")


class BootEnvError(PermanentError):
    """A bootloader environment is corrupt, unreadable, or would overflow."""


class AuditError(PermanentError):
    """The audit trail cannot be written (so no action may run) or is damaged."""


class ReleaseError(PermanentError):
    """A channel or release is refused: signature, expiry, serial, hash, size..."""


class ChannelUnavailable(TemporaryError):
    """The release channel could not be reached or did not answer in time."""


class UrlError(PermanentError, ValueError):
    """A URL the product cannot fetch from; the message never shows its credentials.

    Also a ``ValueError``, so a spec's field validator reports it like any
    other bad value.
    """


#: The most characters of a value an error message quotes.
QUOTE_LIMIT = 80


def short_error(exc: BaseException, limit: int = 2 * QUOTE_LIMIT) -> str:
    """One short line naming an unexpected exception: its type and the start of its text.

    Used where anything at all may go wrong (a whole reconcile pass, a CLI
    command): the person reading it gets what happened, never a traceback,
    and a huge value inside the message is cut.
    """
    text = " ".join(str(exc).split()) or "no detail"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text if isinstance(exc, KruxosError) else f"{type(exc).__name__}: {text}"
