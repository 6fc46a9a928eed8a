"""What a person's request, once decided, writes: the override pin, its end, a bound request.

The rule that reconciles GitOps with a person at the device: the spec file is
the fleet's desired state; an imperative command writes an **override** (what,
by whom, when, against which spec revision and which version the spec wanted
then). While it holds, the override's version is the desired one. It ends when
the version the spec asks for resolves to something new — the spec's
``version`` is edited, or ``latest`` resolves to a newer release — or when a
person runs ``kruxos update resume``.

Which request is taken, and why, is decided by ``decide`` (``TakeRequest``,
``EndOverride``, ``LiftBlock``), recorded in the audit trail, and only then
written here by the executor: nothing changes the state before its decision
record is fsynced.
"""

from __future__ import annotations

from typing import Any

from reconciler.actions import TakeRequest

#: Requests that stop a download in progress at the next block boundary.
STOPPING_REQUESTS = frozenset({"stop", "cancel"})
RESUME_FILE = "staging.resume.json"


def apply_request(doc: dict[str, Any], action: TakeRequest, boot_id: str,
                  spec_revision: str | None) -> None:
    """Change the state document as the request ``action`` says (in place).

    Every request of a person also clears the loop breaker: a person decided.
    """
    req = action.request
    doc.pop("reboots", None)
    if req.kind == "pin" and req.version:
        doc["override"] = _pin(action, req.version, req.answer or "ask", spec_revision)
        if action.retry:
            doc.pop("failed", None)
    elif req.kind == "reboot":
        _edit_pin(doc, reboot=req.answer if req.answer in ("now", "next-boot") else "next-boot")
    elif req.kind == "stop":
        _edit_pin(doc, paused=True)
    elif req.kind == "resume":
        doc.pop("override", None)
    elif req.kind in ("confirm", "rollback"):
        doc["request"] = {"kind": req.kind, "boot_id": boot_id, "slot": action.slot,
                          "version": action.version}
    elif req.kind == "cancel":
        doc.pop("staging", None)
        if action.version:
            doc["override"] = _pin(action, action.version, "rules", spec_revision)


def _pin(action: TakeRequest, version: str, reboot: str,
         spec_revision: str | None) -> dict[str, Any]:
    req = action.request
    return {"version": version, "actor": "cli", "reboot": reboot, "paused": False,
            "by": req.by, "at": req.at, "spec_revision": spec_revision,
            "spec_wanted": action.spec_wanted}


def _edit_pin(doc: dict[str, Any], **fields: Any) -> None:
    if isinstance(doc.get("override"), dict):
        doc["override"].update(fields)


__all__ = ["STOPPING_REQUESTS", "RESUME_FILE", "apply_request"]
