"""A read-only look at the device for the CLI: observed state and the next step.

``update status`` and ``spec plan`` run the same ``observe`` and ``decide`` as
the daemon, but change nothing: no lock, no state write, no audit record, and
the channel's stored trust is read, never advanced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.actions import Action
from reconciler.boot import BootState
from reconciler.channelwatch import ChannelWatch
from reconciler.config import Device
from reconciler.decide import decide
from reconciler.errors import KruxosError, short_error
from reconciler.observe import backend_for, fleet_url, observe, read_boot_state
from reconciler.observed import ChannelView, ObservedState
from reconciler.spec import UpdatePolicy
from reconciler.specfile import LoadedSpec, SpecKeeper, load_spec
from reconciler.store import StateStore


@dataclass(frozen=True)
class DeviceView:
    """What status and plan show."""

    observed: ObservedState
    boot_raw: dict[str, Any]
    policy: UpdatePolicy | None
    action: Action | None
    revision: str | None
    spec_path: str
    spec_error: str | None


def inspect_device(device: Device, now: datetime, candidate: LoadedSpec | None = None,
                   channel: ChannelView | None = None) -> DeviceView:
    """Observe the device and ask ``decide`` with the spec in force (or a candidate).

    ``channel``: a view the caller already verified (no second fetch).
    """
    store = StateStore(device.data_dir)
    backend = backend_for(device)
    boot, boot_error = (BootState(default="A"), None) if device.container is not None \
        else read_boot_state(backend)  # a container device has no bootloader
    spec, error = (candidate, None) if candidate is not None else spec_in_force(device)
    view = channel or _channel(device, store, spec, now)
    observed = observe(device, store, backend, view, spec.revision if spec else None,
                       fleet_url=fleet_url(spec))
    action = decide(spec.policy if spec else None, observed, now)
    raw = {"default": boot.default, "trial": boot.trial, "tries_left": boot.tries_left,
           "marks": dict(boot.marks), "fallback": boot.fallback_reason, "error": boot_error,
           "backend": device.bootloader, "env": str(device.boot_env)}
    return DeviceView(observed, raw, spec.policy if spec else None, action,
                      spec.revision if spec else None,
                      str(spec.path if spec else device.spec_path), error)


def spec_in_force(device: Device) -> tuple[LoadedSpec | None, str | None]:
    """The device's spec file if valid, else the last good one and why the file is not."""
    try:
        return load_spec(device.spec_path), None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is an invalid spec here
        error = str(exc) if isinstance(exc, KruxosError) else short_error(exc)
    try:
        return SpecKeeper(device.spec_path, device.data_dir).last_good(), error
    except Exception as exc:  # noqa: BLE001
        return None, f"{error}; the last good copy cannot be read either ({short_error(exc)})"


def _channel(device: Device, store: StateStore, spec: LoadedSpec | None,
             now: datetime) -> ChannelView:
    if spec is None:
        return ChannelView(error="no spec")
    watch = ChannelWatch(device, store, lambda: now, save_trust=False)
    try:
        return watch.view(spec.policy, spec.revision, now)
    except Exception as exc:  # noqa: BLE001 - a broken channel is shown, not raised
        return ChannelView(error=f"channel: {short_error(exc)}")
