"""The desired state: pydantic models of ``kind: UpdatePolicy`` (pure).

A spec is what an operator commits to Git; the device follows it. Field names
are the YAML names (camelCase). Unknown fields are errors, so a typo never
silently falls back to a default. Trusted keys are deliberately absent: what
the device trusts is a fact of the device config, not of the spec.
"""

from __future__ import annotations

import hashlib
import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from reconciler.semver import is_semver
from reconciler.windows import Window

API_VERSION = "kruxos.io/v1"
KIND = "UpdatePolicy"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: No duration in a spec is longer than this (and date arithmetic never overflows).
MAX_DURATION = timedelta(days=366)
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> timedelta:
    """``5s``, ``2m``, ``1h30m``, ``1d`` -> timedelta; anything else is an error."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not value or _DURATION.match(value) is None:
        raise ValueError(f"{value!r} is not a duration (use forms like 5s, 2m, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in _DURATION.match(value).groups())  # type: ignore[union-attr]
    try:
        result = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        result = MAX_DURATION + timedelta(seconds=1)
    if result > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {format_duration(MAX_DURATION)}")
    if result <= timedelta(0):
        raise ValueError(f"{value!r} is not a positive duration")
    return result


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration`: ``timedelta(minutes=90)`` -> ``1h30m``."""
    total = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern,
                    "examples": ["5s", "2m", "1h30m"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(_Model):
    """Who this policy is, for people and the audit trail."""

    name: str = Field(min_length=1)


class ChannelRef(_Model):
    """Where the signed release channel is published."""

    url: str = Field(description="Base URL of the channel (http or https)")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value if value.endswith("/") else value + "/"


class HealthPolicy(_Model):
    """How a slot on trial proves it is healthy."""

    url: str = "http://127.0.0.1:7800/health/ready"

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value
    interval: Duration = timedelta(seconds=5)
    timeout: Duration = Field(default=timedelta(minutes=2),
                              description="Counted from the first probe after boot")
    success_threshold: int = Field(default=1, ge=1, alias="successThreshold")


class WindowSpec(_Model):
    """A maintenance window: reboots only while the wall clock is inside it."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: str = Field(description="HH:MM local time",
                       json_schema_extra={"pattern": r"^([01]\d|2[0-3]):[0-5]\d$"})
    duration: Duration
    timezone: str = "UTC"

    @field_validator("start", mode="before")
    @classmethod
    def _hh_mm(cls, value: Any) -> str:
        if not isinstance(value, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value

    @field_validator("duration")
    @classmethod
    def _at_most_a_week(cls, value: timedelta) -> timedelta:
        if value > timedelta(days=7):
            raise ValueError("a window lasts at most 7d")
        return value

    def window(self) -> Window:
        """The pure window value the window arithmetic works on."""
        hour, minute = (int(p) for p in self.start.split(":"))
        return Window(days=frozenset(DAYS.index(d) for d in self.days),
                      start=time(hour, minute), duration=self.duration,
                      timezone=self.timezone)


class Rollout(_Model):
    """When the device may stage and reboot."""

    windows: list[WindowSpec] = Field(default_factory=list)
    stage: Literal["immediate", "in-window"] = "immediate"
    auto_reboot: bool = Field(default=True, alias="autoReboot")

    def window_values(self) -> tuple[Window, ...]:
        """The windows as pure values (empty: any time)."""
        return tuple(w.window() for w in self.windows)


class RollbackPolicy(_Model):
    """Whether a failed trial rolls back (and a healthy one confirms) by itself."""

    automatic: bool = True


class UpdateSpec(_Model):
    """The desired state of the device."""

    version: str = Field(description="An exact semver such as 1.0.1, or 'latest'")
    channel: ChannelRef
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    rollout: Rollout = Field(default_factory=Rollout)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    allow_downgrade: bool = Field(default=False, alias="allowDowngrade")
    suspend: bool = False

    @field_validator("version", mode="before")
    @classmethod
    def _semver_or_latest(cls, value: Any) -> str:
        # YAML reads `version: 1.0` as a number; name it as written, not as a type error.
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or (value != "latest" and not is_semver(value)):
            raise ValueError(f"{value!r} is neither 'latest' nor a semantic version like 1.0.1")
        return value


class UpdatePolicy(_Model):
    """A desired-state document: ``apiVersion: kruxos.io/v1``, ``kind: UpdatePolicy``."""

    api_version: Literal["kruxos.io/v1"] = Field(alias="apiVersion")
    kind: Literal["UpdatePolicy"]
    metadata: Metadata
    spec: UpdateSpec


def revision_of(content: bytes) -> str:
    """A spec's revision: the first 12 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(content).hexdigest()[:12]
