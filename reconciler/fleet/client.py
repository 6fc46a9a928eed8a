"""The FleetLock client: a device asks a server for a reboot slot and gives it back.

Zincati's protocol (``docs/fleet.md``): ``POST {base}/v1/pre-reboot`` before a
reboot, ``POST {base}/v1/steady-state`` once the device is steady again, each
with the header ``fleet-lock-protocol: true`` and the body
``{"client_params": {"id": ID, "group": GROUP}}``. Only 200 is success; any
other answer carries ``{"kind": …, "value": …}``. Both calls are idempotent on
the server, so the client keeps no lock state of its own that the server does
not also hold: asking again is always safe, and it is how a device makes sure
it still holds its slot right before it reboots (fencing).

Every call gives a :class:`LockAnswer`, never raises for what the server or the
network did: an unreachable server is an answer too (``kind: unreachable``). The
bearer token, when the device has one, is sent and never shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import httpx

from reconciler.quoting import excerpt, printable
from reconciler.urls import HttpUrl, parse_url

#: The protocol's group names (Zincati's rule), matched whole.
GROUP = re.compile(r"[a-zA-Z0-9.-]{1,256}")
#: A device id: what the server accepts (printable, no spaces), at most 256 characters.
DEVICE_ID = re.compile(r"[\x21-\x7e]{1,256}")
#: The header our client adds to ``pre-reboot``: the release it reboots into, so a server
#: can count confirmations and rollbacks per release (Zincati clients do not send it).
TARGET_HEADER = "kruxos-target-version"
#: The most of an error body read (a hostile server's answer is bounded).
MAX_ANSWER = 16 * 1024
_QUOTE = 200


class FleetLockError(ValueError):
    """A client that cannot be made: a bad group, device id or server URL."""


@dataclass(frozen=True)
class LockAnswer:
    """One answer of the server: ``ok`` only for 200; else its ``kind`` and ``value``
    (``unreachable`` when no answer came, ``bad_answer`` when it was not the protocol's)."""

    ok: bool
    status: int | None = None
    kind: str | None = None
    value: str | None = None

    def describe(self) -> str:
        """``200`` / ``409 failed_lock: all 1 slots are held``: how reasons quote it."""
        if self.ok:
            return "200"
        status = "" if self.status is None else f"{self.status} "
        value = f": {self.value}" if self.value else ""
        return f"{status}{self.kind or 'refused'}{value}"


class FleetLockClient:
    """The reboot slots of ``group`` on the server at ``base``, for device ``device_id``."""

    def __init__(self, base: str | HttpUrl, device_id: str, group: str, *,
                 token: str | None = None, timeout: float = 10.0) -> None:
        if not GROUP.fullmatch(group):
            raise FleetLockError(f"fleet lock group {excerpt(group)} does not match "
                                 "[a-zA-Z0-9.-]+ (at most 256 characters)")
        if not DEVICE_ID.fullmatch(device_id):
            raise FleetLockError(f"device id {excerpt(device_id)} is not 1-256 printable "
                                 "characters without spaces")
        try:
            url = base if isinstance(base, HttpUrl) else parse_url(base, query=False)
        except ValueError as exc:
            raise FleetLockError(f"fleet lock server: {exc}") from None
        self.base = url.text().rstrip("/")
        self.device_id, self.group = device_id, group
        self._token, self._timeout = token, timeout

    def pre_reboot(self, target_version: str | None = None) -> LockAnswer:
        """Ask for a reboot slot (200 also when this device holds one already)."""
        extra = {TARGET_HEADER: target_version} if target_version else {}
        return self._call("pre-reboot", extra)

    def steady_state(self) -> LockAnswer:
        """Give the slot back (200 also when this device holds none)."""
        return self._call("steady-state", {})

    def _call(self, endpoint: str, extra: dict[str, str]) -> LockAnswer:
        headers = {"fleet-lock-protocol": "true", **extra}
        if self._token is not None:
            headers["authorization"] = f"Bearer {self._token}"
        body = {"client_params": {"id": self.device_id, "group": self.group}}
        try:
            with httpx.Client(timeout=self._timeout, trust_env=False,
                              follow_redirects=False) as client, \
                    client.stream("POST", f"{self.base}/v1/{endpoint}", headers=headers,
                                  json=body) as answer:
                if answer.status_code == 200:
                    return LockAnswer(True, 200)
                return _refusal(answer.status_code, _bounded(answer))
        except httpx.HTTPError as exc:
            said = str(exc) or type(exc).__name__
            return LockAnswer(False, None, "unreachable", self._hidden(said)[:_QUOTE])

    def _hidden(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text


def _bounded(answer: httpx.Response) -> bytes:
    """At most :data:`MAX_ANSWER` bytes of the body (the rest is never read)."""
    read = bytearray()
    for chunk in answer.iter_bytes():
        read += chunk
        if len(read) > MAX_ANSWER:
            break
    return bytes(read[:MAX_ANSWER + 1])


def _refusal(status: int, raw: bytes) -> LockAnswer:
    """A non-200 answer as the protocol says it: ``{"kind", "value"}``, else ``bad_answer``."""
    if len(raw) > MAX_ANSWER:
        return LockAnswer(False, status, "bad_answer", "an error body over 16 KiB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return LockAnswer(False, status, "bad_answer", "not a JSON error body")
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return LockAnswer(False, status, "bad_answer", "no error kind in the body")
    value = doc.get("value")
    return LockAnswer(False, status, printable(doc["kind"], 64),
                      printable(value, _QUOTE) if isinstance(value, str) else None)
