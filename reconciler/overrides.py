"""A person's requests become state: the override pin and its end, confirm and rollback.

The rule that reconciles GitOps with a person at the device: the spec file is
the fleet's desired state; an imperative command writes an **override** (what,
by whom, when, against which spec revision and which version the spec wanted
then). While it holds, the override's version is the desired one. It ends when
the version the spec asks for resolves to something new — the spec's
``version`` is edited, or ``latest`` resolves to a newer release — or when a
person runs ``kruxos update resume``. Every change is recorded in the audit
trail with the actor ``cli`` and why.
"""

from __future__ import annotations

from typing import Any

from reconciler.audit import AuditTrail
from reconciler.boot import Backend
from reconciler.config import Device
from reconciler.inbox import pending
from reconciler.observed import ObservedState
from reconciler.specfile import LoadedSpec
from reconciler.store import StateStore

#: Requests that stop a download in progress at the next block boundary.
STOPPING_REQUESTS = frozenset({"stop", "cancel"})
RESUME_FILE = "staging.resume.json"
#: Audit action names of requests whose kind would read like a step that ran.
AUDIT_ACTIONS = {"reboot": "reboot-answer", "rollback": "rollback-request",
                 "confirm": "confirm-request"}


def spec_wants(spec: LoadedSpec, observed: ObservedState) -> str | None:
    """The version the spec itself asks for now (``latest`` resolved), ignoring pins."""
    wanted = spec.policy.spec.version
    return observed.channel.latest if wanted == "latest" else wanted


class RequestDesk:
    """Takes the inbox's requests in order and keeps the override rule."""

    def __init__(self, device: Device, store: StateStore, audit: AuditTrail,
                 backend: Backend) -> None:
        self.device, self.store, self.audit, self.backend = device, store, audit, backend

    def take(self, spec: LoadedSpec, observed: ObservedState) -> set[str]:
        """Apply every waiting request: audit first, then state, then drop the request."""
        taken: set[str] = set()
        for path, request in pending(self.device.data_dir):
            taken.add(request["kind"])
            handler = getattr(self, f"_on_{request['kind']}")
            reason, change = handler(request, spec, observed)
            action = AUDIT_ACTIONS.get(request["kind"], request["kind"])
            self.audit.event("cli", action, f"{reason} (by {request.get('by', '?')})",
                             spec_revision=spec.revision, details=request)
            self.store.update(_clearing_the_loop_breaker(change))
            path.unlink(missing_ok=True)
        return taken

    def end_override(self, spec: LoadedSpec, observed: ObservedState) -> None:
        """End the pin once the spec's own desired version resolves to something new."""
        pin = self.store.section("override")
        now_wanted = spec_wants(spec, observed)
        if not pin or now_wanted is None or now_wanted == pin.get("spec_wanted"):
            return
        self.audit.event("spec", "override-ended",
                         f"the pin of {pin.get('version')} ended: the spec now wants "
                         f"{now_wanted} (it wanted {pin.get('spec_wanted')} when pinned)",
                         spec_revision=spec.revision)
        self.store.put("override", None)

    # ---- one handler per request kind: (audit reason, state change) ----------------------

    def _on_pin(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        pin = {"version": req["version"], "actor": "cli", "reboot": req.get("reboot", "ask"),
               "paused": False, "by": req.get("by"), "at": req.get("at"),
               "spec_revision": spec.revision, "spec_wanted": spec_wants(spec, obs)}
        reason = (f"{req['version']} pinned by a person (kruxos update apply); the spec "
                  f"wanted {pin['spec_wanted']}")
        retry = obs.failed is not None and obs.failed.version == req["version"]
        if retry:
            reason += f"; {req['version']} was rolled back before and is tried again, as asked"

        def change(doc: dict[str, Any]) -> None:
            doc["override"] = pin
            if retry:
                doc.pop("failed", None)

        return reason, change

    def _on_reboot(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        answer = req.get("answer", "next-boot")
        reason = ("a person at the device asked to reboot now, even outside a maintenance "
                  "window" if answer == "now" else
                  "a person at the device chose to activate the update on the next reboot")
        return reason, _edit_pin(reboot=answer)

    def _on_stop(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        return ("the download was stopped by a person (Ctrl-C); the next apply resumes it",
                _edit_pin(paused=True))

    def _on_resume(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        return ("the pin ended: the spec rules again (kruxos update resume)",
                lambda doc: doc.pop("override", None))

    def _on_confirm(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        return ("a person asked to confirm the slot on trial (kruxos update confirm)",
                self._bound("confirm", obs))

    def _on_rollback(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        return ("a person asked to roll back (kruxos update rollback)",
                self._bound("rollback", obs))

    def _bound(self, kind: str, obs: ObservedState) -> Any:
        """A confirm or rollback holds for the boot and slot it was asked in, never later.

        A rollback asked while a staging runs must not roll back the trial that
        follows it: that trial is another boot, so the request no longer applies.
        """
        record = {"kind": kind, "boot_id": self.device.current_boot_id(), "slot": obs.booted,
                  "version": obs.booted_slot.version}
        return lambda doc: doc.__setitem__("request", record)

    def _on_cancel(self, req: dict[str, Any], spec: LoadedSpec, obs: ObservedState) -> Any:
        """Forget the staging and the staged slot; pin the running version."""
        target = obs.other_slot
        if target.mark == "staged" or (obs.staging and obs.staging.slot == target.name):
            self.backend.set_mark(target.name, "bad")
        (self.device.data_dir / RESUME_FILE).unlink(missing_ok=True)
        running = obs.booted_slot.version
        pin = {"version": running, "actor": "cli", "reboot": "rules", "paused": False,
               "by": req.get("by"), "at": req.get("at"), "spec_revision": spec.revision,
               "spec_wanted": spec_wants(spec, obs)}

        def change(doc: dict[str, Any]) -> None:
            doc.pop("staging", None)
            doc["override"] = pin

        return (f"staging cancelled and slot {target.label} forgotten; {running} stays pinned "
                "until the spec changes or kruxos update resume", change)


def _clearing_the_loop_breaker(change: Any) -> Any:
    """Every request of a person also clears the loop breaker: a person decided."""

    def both(doc: dict[str, Any]) -> None:
        if change:
            change(doc)
        doc.pop("reboots", None)

    return both


def _edit_pin(**fields: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        if isinstance(doc.get("override"), dict):
            doc["override"].update(fields)

    return change


__all__ = ["RequestDesk", "STOPPING_REQUESTS", "spec_wants"]
