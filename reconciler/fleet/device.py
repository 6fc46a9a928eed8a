"""The device's reboot slot: the steps ``decide`` asks for, on the FleetLock server.

The state file's ``fleet_lock`` section records the last call, written after each
answer (the server holds the truth; every call is idempotent, so a crash between
an answer and its record only repeats a call)::

    {"group", "url", "held", "version", "taken_boot", "released_boot",
     "asked_at", "answer"}

- ``take``: ``pre-reboot`` with the release the device reboots into; granted →
  ``held`` in this boot (``taken_boot``); refused or failed → ``asked_at`` and the
  server's answer, and the step fails (``unavailable``) so ``decide`` waits.
- ``fence``: right before the reboot, ``pre-reboot`` again; a device that lost its
  slot (a TTL expired, a person force-released it) does not reboot.
- ``release``: ``steady-state`` once the reboot it was for is over, and once in
  every boot (``released_boot``).

The server's URL is the spec's ``rollout.fleetLock.url``, else the one the slot was
taken from (so a slot is given back even after the spec dropped the server); the
group and the token are the device's (``fleetLock`` in its configuration layer).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.actions import ReleaseRebootSlot, TakeRebootSlot
from reconciler.config import Device, rollout_id
from reconciler.errors import StateError, TemporaryError
from reconciler.failpoints import failpoint
from reconciler.fleet.client import FleetLockClient, FleetLockError, LockAnswer
from reconciler.redact import redact, register_secret
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore

SECTION = "fleet_lock"
#: A refused or failed call: the step is tried again this soon (``decide`` waits as long).
RETRY_S = 5.0


class SlotLost(TemporaryError):
    """The fence failed: the device no longer holds its slot, so it does not reboot."""


class FleetSlots:
    """The device's side of the fleet's reboot slots (one per executor)."""

    def __init__(self, device: Device, store: StateStore, clock: Callable[[], datetime],
                 boot_id: Callable[[], str]) -> None:
        self.device, self.store, self.clock, self.boot_id = device, store, clock, boot_id

    def take(self, action: TakeRebootSlot, policy: UpdatePolicy | None) -> str:
        url = self._url(policy)
        answer = self._client(url, action.group).pre_reboot(action.version)
        boot = self.boot_id()
        if answer.ok:
            self._record(group=action.group, url=url, held=True, version=action.version,
                         taken_boot=boot, asked_at=None, answer=None)
            failpoint("fleet.taken")
            return f"reboot slot taken (group {action.group}, {redact(url)})"
        self._refused(action.group, url, answer)
        raise TemporaryError(f"no reboot slot (group {action.group}): {answer.describe()}",
                             RETRY_S)

    def fence(self, version: str, policy: UpdatePolicy | None) -> str | None:
        """Right before a forward reboot: the slot must still be this device's. ``None``
        when the device takes part in no fleet lock."""
        record = self.store.section(SECTION)
        if not record.get("held"):
            if policy is not None and policy.spec.rollout.fleet_lock is not None:
                raise SlotLost(f"{version}: no reboot slot is held; not rebooting", RETRY_S)
            return None
        url, group = str(record.get("url")), str(record.get("group"))
        answer = self._client(url, group).pre_reboot(version)
        if answer.ok:
            return f"still holds its reboot slot (group {group})"
        self._record(held=False, taken_boot=None)
        self._refused(group, url, answer)
        raise SlotLost(f"{version}: the reboot slot (group {group}) was lost "
                       f"({answer.describe()}); not rebooting", RETRY_S)

    def release(self, action: ReleaseRebootSlot, policy: UpdatePolicy | None) -> str:
        record = self.store.section(SECTION)
        url = str(record["url"]) if record.get("held") and record.get("url") \
            else self._url(policy)
        answer = self._client(url, action.group).steady_state()
        if answer.ok:
            self._record(group=action.group, url=url, held=False, taken_boot=None,
                         released_boot=self.boot_id(), asked_at=None, answer=None)
            return f"reboot slot given back (group {action.group})"
        self._refused(action.group, url, answer)
        raise TemporaryError(f"the reboot slot (group {action.group}) could not be given "
                             f"back: {answer.describe()}", RETRY_S)

    # ---- helpers ---------------------------------------------------------------------------

    def _url(self, policy: UpdatePolicy | None) -> str:
        lock = policy.spec.rollout.fleet_lock if policy is not None else None
        if lock is not None:
            return lock.url
        recorded = self.store.section(SECTION).get("url")
        if isinstance(recorded, str):
            return recorded
        raise StateError("no FleetLock server: the spec names none (rollout.fleetLock.url) "
                         "and no slot was taken from one")

    def _client(self, url: str, group: str) -> FleetLockClient:
        device_id = rollout_id(self.device)
        if device_id is None:
            raise StateError(f"this device has no id to ask for a reboot slot with (no "
                             f"deviceId, and {self.device.machine_id} gives none)")
        try:
            return FleetLockClient(url, device_id, group, token=self._token())
        except FleetLockError as exc:
            raise StateError(str(exc)) from None

    def _token(self) -> str | None:
        path: Path | None = self.device.fleet_token_file
        if path is None:
            return None
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise StateError(f"fleetLock.tokenFile: cannot read {path}: {exc.strerror}") \
                from None
        register_secret(token)
        return token or None

    def _refused(self, group: str, url: str, answer: LockAnswer) -> None:
        self._record(group=group, url=url, asked_at=self.clock().isoformat(),
                     answer=answer.describe())

    def _record(self, **fields: Any) -> None:
        def change(doc: dict[str, Any]) -> None:
            record = dict(doc.get(SECTION) or {})
            record.update(fields)
            doc[SECTION] = record

        self.store.update(change)
