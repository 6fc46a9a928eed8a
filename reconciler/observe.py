"""Build :class:`ObservedState` from the device: slot headers, boot env, state file.

Everything is read fresh on each pass. A slot's version comes from its own
header bytes, its mark and the trial counter from the bootloader environment,
and the rest (health progress of this boot, the last rollback, a failed
version, a staging in progress) from the state file on the data dir.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.boot import Backend, BootState, open_backend
from reconciler.config import Device
from reconciler.errors import BootEnvError
from reconciler.observed import (
    SLOTS,
    ChannelView,
    FailedVersion,
    HealthProgress,
    ObservedState,
    Override,
    Slot,
    Staging,
)
from reconciler.release.image import read_slot_header
from reconciler.store import StateStore


def backend_for(device: Device) -> Backend:
    """The bootloader backend named in the device config."""
    return open_backend(device.bootloader, device.boot_env)


def read_boot_state(backend: Backend) -> tuple[BootState, str | None]:
    """The boot state, or the backend's safe answer plus the error when it is corrupt."""
    try:
        return backend.read(), None
    except BootEnvError as exc:
        safe = getattr(backend, "safe_state", None)
        return (safe() if safe else BootState(default="A")), str(exc)


def observe(device: Device, store: StateStore, backend: Backend,
            channel: ChannelView | None = None) -> ObservedState:
    """What is on the device now; ``channel`` is the last verified channel view."""
    boot, _ = read_boot_state(backend)
    booted = device.booted_slot()
    doc = store.load()
    slots = {name: _slot(device, boot, name) for name in SLOTS}
    return ObservedState(
        booted=booted,
        slots=slots,
        default=boot.default,
        trial=boot.trial,
        tries_left=boot.tries_left,
        fallback_trace=boot.fallback_reason,
        health=_health(doc.get("trial"), device.current_boot_id(), booted),
        rolled_back_from=_get(doc, "rollback", "from_version"),
        rollback_reason=_get(doc, "rollback", "reason"),
        staging=_staging(doc.get("staging")),
        failed=_failed(doc.get("failed")),
        channel=channel or ChannelView(error="channel not fetched yet"),
        override=_override(doc.get("override")),
        request=_request(doc.get("request")),
    )


def _slot(device: Device, boot: BootState, name: Any) -> Slot:
    header = read_slot_header(device.slot_paths[name])
    mark = boot.marks.get(name, "empty")
    if header is None and mark != "bad":
        mark = "empty"
    return Slot(name, device.slot_device(name), header.version if header else None, mark)


def _get(doc: dict[str, Any], section: str, key: str) -> Any:
    value = doc.get(section)
    return value.get(key) if isinstance(value, dict) else None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _health(trial: Any, boot_id: str, booted: str) -> HealthProgress | None:
    """This boot's health progress; a record from an earlier boot does not count."""
    if not isinstance(trial, dict) or trial.get("boot_id") != boot_id:
        return None
    if trial.get("slot") != booted:
        return None
    return HealthProgress(
        first_probe_at=_time(trial.get("first_probe_at")),
        last_probe_at=_time(trial.get("last_probe_at")),
        consecutive_ok=int(trial.get("consecutive_ok", 0)),
        probes=int(trial.get("probes", 0)),
        last_summary=trial.get("last_summary"),
        timeout_reason=trial.get("timeout_reason") or HealthProgress().timeout_reason,
    )


def _staging(value: Any) -> Staging | None:
    if not isinstance(value, dict) or "version" not in value:
        return None
    return Staging(value["version"], value.get("slot", "B"), int(value.get("done", 0)),
                   int(value.get("total", 0)))


def _failed(value: Any) -> FailedVersion | None:
    if not isinstance(value, dict) or "version" not in value:
        return None
    return FailedVersion(value["version"], value.get("reason", ""), _time(value.get("at")))


def _override(value: Any) -> Override | None:
    if not isinstance(value, dict) or not value.get("version"):
        return None
    reboot = value.get("reboot", "rules")
    if reboot not in ("rules", "ask", "now", "next-boot"):
        reboot = "rules"
    return Override(value["version"], value.get("actor", "cli"), reboot,
                    bool(value.get("paused", False)), str(value.get("by") or ""))


def _request(value: Any) -> Any:
    kind = value.get("kind") if isinstance(value, dict) else None
    return kind if kind in ("confirm", "rollback") else None
