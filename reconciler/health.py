"""The health probe: ask the booted OS once whether it is ready, and say why not.

After a reboot into a slot on trial the daemon probes the OS's readiness URL
(``http://127.0.0.1:7800/health/ready`` by default) until enough healthy
answers in a row confirm the slot, or until the trial times out and the device
rolls back. The loop, its interval and its counters live elsewhere; this module
does one probe, turns whatever came back (an answer, an error page, silence)
into a :class:`HealthAnswer`, and words the rollback reason a person reads in
``kruxos update status``.

A probe never raises for the state of the device: an unreachable or hanging
endpoint is an answer too. Only a health URL that cannot be a URL at all is a
:class:`~reconciler.errors.ConfigError`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx

from reconciler.errors import ConfigError, StateError

__all__ = ["DEFAULT_URL", "HealthAnswer", "probe", "read_answer", "rollback_reason"]

DEFAULT_URL = "http://127.0.0.1:7800/health/ready"

_OK_VALUES = frozenset({"ok", "healthy", "running"})
#: Bytes of an answer's body read at most; the rest is never received into memory.
MAX_BODY = 64 * 1024
#: Nesting of arrays and objects in a body beyond which it is not read as JSON.
MAX_DEPTH = 16
#: Failing services named in an answer at most (the rest are counted).
MAX_FAILING = 8
#: Characters of a service name or state, or of an error, kept.
QUOTE_LIMIT = 80
_USER_AGENT = "kruxos-reconciler health probe"


@dataclass(frozen=True)
class HealthAnswer:
    """What one probe learned; kept in the state file between probes of a trial.

    ``failing`` keeps the order the OS listed its services in, so the rollback
    reason reads the same on every device and after every restart.
    """

    healthy: bool
    status: int | None = None
    failing: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def summary(self) -> str:
        """One line for the audit trail: ``503: gateway failed to start``."""
        if self.status is None:
            return f"unreachable: {self.error or 'no answer'}"
        if self.healthy:
            return f"{self.status} healthy"
        if self.failing:
            return f"{self.status}: {_join_failing(self.failing)}"
        return _status_line(self.status)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; ``failing`` is a list of pairs so sorted dumps keep its order."""
        return {
            "healthy": self.healthy,
            "status": self.status,
            "failing": [[name, what] for name, what in self.failing.items()],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Any) -> HealthAnswer:
        """Read back :meth:`to_dict`; a damaged record is a :class:`StateError`."""
        try:
            status = data.get("status")
            error = data.get("error")
            if not isinstance(data["healthy"], bool) or not isinstance(status, int | None):
                raise TypeError("healthy must be a bool and status an int or null")
            return cls(
                healthy=data["healthy"],
                status=status,
                failing=_failing_from_json(data.get("failing") or []),
                error=None if error is None else str(error),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"health answer: unreadable record {_clean(repr(data))} "
                             f"({_clean(str(exc))})") from exc


def probe(
    url: str = DEFAULT_URL,
    timeout: float = 2.0,
    transport: httpx.BaseTransport | None = None,
) -> HealthAnswer:
    """Probe ``url`` once; any 200 is healthy, anything else says what is wrong.

    ``timeout`` bounds each network step and, as a whole, the reading of the
    body, so a trickling endpoint cannot stall the trial loop. Proxy settings
    from the environment are ignored: the health endpoint is on the device.
    """
    try:
        status, body = _fetch(url, timeout, transport)
    except httpx.TimeoutException:
        return _unreachable(f"timed out after {float(timeout)}s")
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ConfigError(f"health probe: invalid health URL {url!r} ({exc})") from exc
    except httpx.HTTPError as exc:
        return _unreachable(_clean(_describe_error(exc)))
    return read_answer(status, body)


def read_answer(status: int, body: bytes) -> HealthAnswer:
    """What an HTTP answer says: any 200 is healthy; otherwise which services fail.

    The body is hostile input: at most :data:`MAX_BODY` bytes are looked at,
    JSON nested deeper than :data:`MAX_DEPTH` is not read, at most
    :data:`MAX_FAILING` services are named, and names and states are cut to
    :data:`QUOTE_LIMIT` printable characters, so a reason always fits a line.
    """
    if status == 200:
        return HealthAnswer(healthy=True, status=status)
    return HealthAnswer(healthy=False, status=status, failing=_failing_services(body[:MAX_BODY]))


def rollback_reason(answer: HealthAnswer | None, timed_out: bool) -> str:
    """The reason shown as ``Rollback reason:``, built from the last answer.

    ``Health check timeout — gateway failed to start`` when the trial ran out
    of time; ``Health check failed — ...`` when the policy ended it early.
    """
    prefix = "Health check timeout" if timed_out else "Health check failed"
    return f"{prefix} \u2014 {_problem(answer)}"


def _fetch(url: str, timeout: float, transport: httpx.BaseTransport | None) -> tuple[int, bytes]:
    """GET ``url``; the status and at most ``MAX_BODY`` bytes of body, within ``timeout``.

    The body is asked for uncompressed (``Accept-Encoding: identity``) and a
    compressed one is not read at all: inflating it could turn a small answer
    into a huge one in memory. The status alone then speaks.
    """
    deadline = time.monotonic() + timeout
    headers = {"Accept": "application/json", "Accept-Encoding": "identity",
               "User-Agent": _USER_AGENT}
    with httpx.Client(transport=transport, timeout=timeout, trust_env=False) as client:
        with client.stream("GET", url, headers=headers) as response:
            body = bytearray()
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                return response.status_code, b""
            for chunk in response.iter_bytes():
                body += chunk[:MAX_BODY + 1 - len(body)]
                if len(body) > MAX_BODY:
                    break
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("health answer too slow", request=response.request)
            return response.status_code, bytes(body)


def _unreachable(error: str) -> HealthAnswer:
    return HealthAnswer(healthy=False, status=None, error=error)


def _describe_error(exc: httpx.HTTPError) -> str:
    """A short, stable description of why no HTTP answer came back."""
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if any(marker in lowered for marker in ("name or service", "nodename", "name resolution")):
        return f"cannot resolve host {_host_of(exc)}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed without an answer"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _host_of(exc: httpx.HTTPError) -> str:
    try:
        return exc.request.url.host or "(none)"
    except RuntimeError:  # an error raised before any request was built
        return "(unknown)"


def _failing_services(body: bytes) -> dict[str, str]:
    """The services a JSON body reports as not ok; empty for any other body.

    A body over :data:`MAX_BODY` was cut and is not JSON; one nested too deep
    is not read either (its services would not be where we look anyway).
    """
    try:
        document = json.loads(body) if len(body) <= MAX_BODY else None
    except (ValueError, RecursionError):
        return {}
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict) or _deeper_than(services, MAX_DEPTH):
        return {}
    failing: dict[str, str] = {}
    for name, value in services.items():
        what = _service_state(value)
        if what.lower() in _OK_VALUES:
            continue
        if len(failing) == MAX_FAILING:
            failing["..."] = "and more"
            break
        failing[_clean(name)] = what
    return failing


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def _service_state(value: Any) -> str:
    """``"failed to start"`` from either ``"failed to start"`` or ``{"status": ...}``."""
    if isinstance(value, dict):
        value = value.get("status", "unknown")
    if isinstance(value, bool):
        return "ok" if value else "failing"
    if isinstance(value, dict | list):
        return "unknown"
    return _clean(str(value).strip()) or "unknown"


def _clean(text: str) -> str:
    """``text`` cut to :data:`QUOTE_LIMIT` characters, control characters shown as ``?``.

    What the OS says ends up in the audit trail and on a terminal: no escape
    sequence, newline or megabyte of it may pass.
    """
    cut = text[:QUOTE_LIMIT]
    shown = "".join(c if c.isprintable() else "?" for c in cut)
    return shown + "..." if len(text) > QUOTE_LIMIT else shown


def _failing_from_json(value: Any) -> dict[str, str]:
    """``failing`` as stored by :meth:`HealthAnswer.to_dict` (pairs) or as a plain object."""
    pairs = value.items() if isinstance(value, dict) else value
    return {str(name): str(what) for name, what in pairs}


def _join_failing(failing: dict[str, str]) -> str:
    return ", ".join(f"{name} {what}" for name, what in failing.items())


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _problem(answer: HealthAnswer | None) -> str:
    """What was wrong, in the words of the last answer."""
    if answer is None:
        return "no answer from the health endpoint"
    if answer.status is None:
        return f"health endpoint unreachable ({answer.error or 'no answer'})"
    if answer.failing:
        return _join_failing(answer.failing)
    if answer.healthy:
        return "not enough healthy answers in a row"
    return f"health endpoint answered {_status_line(answer.status)}"
