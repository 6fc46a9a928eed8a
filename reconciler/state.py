"""The typed model of ``state.json``: one schema, one version number, one migration.

The state file was a JSON object with a section per owner and no schema, so
any writer could put anything in it. This module is the one place that says
what it may hold. Every read goes through :func:`parse_state` (which migrates
an older file) and every write through :func:`dump_state` (which refuses a
document the model does not accept), so a wrong type never reaches the disk.

Schema history:

- 1 (no ``schema`` key): the sections as the first releases wrote them.
- 2: ``schema`` added; ``trial_policy`` (the health policy captured when a
  trial is armed). A section of a version-1 file that does not fit the model
  is dropped, and the migration says which.
- 3: only the executor writes the state file. The audit head left it for
  ``audit/head.json`` (written by the audit trail), the rejected spec's revision
  for ``spec.rejected`` (written by the spec keeper). An older file's ``audit``
  section is still read (the trail takes its head from there once, when it
  opens); neither is written back.

What each fact is, and where it comes back from when the file is lost, is
listed in ``docs/states.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.errors import StateError

SCHEMA = 3

Slot = Literal["A", "B"]


class _Section(BaseModel):
    """A section: known fields typed; fields of a newer release kept, not lost."""

    model_config = ConfigDict(extra="allow")


class AuditHead(_Section):
    """The head of the audit chain as schema 1 and 2 kept it (read, never written)."""

    seq: int = Field(default=0, ge=0)
    hash: str = "0" * 64
    repeats: int = Field(default=0, ge=0)
    repeats_of: int | None = None


class TrialProgress(_Section):
    """The health check of the trial slot during one boot."""

    boot_id: str
    slot: Slot
    first_probe_at: str | None = None
    last_probe_at: str | None = None
    consecutive_ok: int = Field(default=0, ge=0)
    probes: int = Field(default=0, ge=0)
    last_summary: str | None = None
    last_answer: dict[str, Any] | None = None
    timeout_reason: str | None = None


class CapturedPolicy(_Section):
    """The health policy of a trial, captured when it was armed."""

    slot: Slot
    version: str
    url: str
    interval_s: float = Field(gt=0)
    timeout_s: float = Field(gt=0)
    success_threshold: int = Field(ge=1)
    automatic: bool
    armed_at: str | None = None


class RollbackRecord(_Section):
    """The last rollback: from which version, and why."""

    from_version: str | None = None
    reason: str = ""
    at: str | None = None


class FailedRecord(_Section):
    """The version that failed on trial (blocked until the desired version changes)."""

    version: str
    reason: str = ""
    at: str | None = None


class StagingRecord(_Section):
    """A staging in progress: what, where, how far."""

    version: str
    slot: Slot = "B"
    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)


class OverrideRecord(_Section):
    """A person's pin of the desired version at the device."""

    version: str
    actor: str = "cli"
    reboot: Literal["rules", "ask", "now", "next-boot"] = "rules"
    paused: bool = False
    by: str | None = None
    at: float | str | None = None
    spec_revision: str | None = None
    spec_wanted: str | None = None


class RequestRecord(_Section):
    """A confirm or rollback a person asked for, waiting for its decision."""

    kind: Literal["confirm", "rollback"]
    boot_id: str | None = None
    slot: Slot | None = None
    version: str | None = None


class ForwardReboots(_Section):
    """Reboots into a trial in a row without a confirm (the loop breaker counts them)."""

    count: int = Field(default=0, ge=0)
    spec_revision: str | None = None


class SpecRecord(_Section):
    """The revision of the last spec file rejected, as schema 1 and 2 kept it (read only)."""

    rejected: str | None = None


class ServiceUpdateRecord(_Section):
    """A service update on its way (``reconciler.service_rules``): its step, the root image
    it applies on, the health policy captured at the switch, this update's probes, and,
    once a restore began, its reason (the restore is then finished by the next pass)."""

    version: str
    from_version: str | None = None
    services: list[str] = Field(default_factory=list)
    step: Literal["staged", "switched", "restarted"] = "staged"
    root_sha256: str
    artifacts: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    policy: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    restoring: str | None = None


class DeviceState(BaseModel):
    """The whole state file."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA, alias="schema")
    audit: AuditHead | None = None
    trial: TrialProgress | None = None
    trial_policy: CapturedPolicy | None = None
    rollback: RollbackRecord | None = None
    failed: FailedRecord | None = None
    staging: StagingRecord | None = None
    override: OverrideRecord | None = None
    request: RequestRecord | None = None
    spec: SpecRecord | None = None
    reboots: ForwardReboots | None = None
    service_update: ServiceUpdateRecord | None = None
    #: The release whose services run on a root image after a committed service update,
    #: by the root image's SHA-256 (overlays belong to a root release).
    service_releases: dict[str, str] | None = None
    #: The last committed service update on a root image, by its SHA-256: what a hand
    #: rollback undoes (version, from_version, services, artifacts; ``kept`` when it stayed
    #: after a failed health check because it migrated data irreversibly).
    service_last: dict[str, dict[str, Any]] | None = None


SECTIONS = tuple(name for name in DeviceState.model_fields if name != "schema_version")
#: Sections an older release wrote that are read but never written again.
LEGACY = frozenset({"audit", "spec"})


def parse_state(raw: Any) -> tuple[DeviceState, list[str]]:
    """A document read from disk as the model, migrated; and what the migration dropped.

    Raises :class:`StateError` for something that is no state file at all
    (not an object, or written by a newer schema this release cannot read).
    """
    if not isinstance(raw, dict):
        raise StateError("expected a JSON object")
    schema = raw.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA:
        raise StateError(f"schema {str(schema)[:20]!r} is not one this release reads "
                         f"(1 to {SCHEMA})")
    doc, dropped = _migrate(dict(raw))
    return DeviceState.model_validate(doc), dropped


def _migrate(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Schema 1 -> 2: keep every section that fits the model, drop (and name) the others."""
    dropped = []
    for name in SECTIONS:
        value = doc.get(name)
        if value is None:
            continue
        try:
            DeviceState.model_validate({name: value})
        except ValidationError as exc:
            del doc[name]
            dropped.append(f"{name} ({exc.errors()[0]['msg'][:60]})")
    doc["schema"] = SCHEMA
    return doc, dropped


def dump_state(doc: dict[str, Any]) -> dict[str, Any]:
    """The plain document to write; a value that breaks the model is refused, not written."""
    doc = {k: v for k, v in doc.items() if v is not None and k not in LEGACY}
    doc["schema"] = SCHEMA
    try:
        model = DeviceState.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StateError(f"refusing to write a state with {where}: {first['msg'][:80]}") from None
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")
