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

from reconciler.quoting import control_character, excerpt
from reconciler.semver import is_semver
from reconciler.urls import parse_channel_url, parse_url
from reconciler.windows import Window

API_VERSION = "kruxos.io/v1"
KIND = "UpdatePolicy"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: The longest ``metadata.name``: it names the policy in one line of the audit trail.
MAX_NAME_LENGTH = 128
#: YAML 1.1 spellings of booleans; YAML 1.2 (what a spec is) reads them as strings.
_YAML11_BOOLEANS = {"y": "true", "yes": "true", "on": "true",
                    "n": "false", "no": "false", "off": "false"}
#: No duration in a spec is longer than this (and date arithmetic never overflows).
MAX_DURATION = timedelta(days=366)
_DURATION_LENGTH = 40
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> timedelta:
    """``5s``, ``2m``, ``1h30m``, ``1d`` -> timedelta; anything else is an error."""
    if isinstance(value, timedelta):
        return value
    if (not isinstance(value, str) or not value or len(value) > _DURATION_LENGTH
            or _DURATION.match(value) is None):
        raise ValueError(f"{excerpt(value)} is not a duration (use forms like 5s, 2m, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in _DURATION.match(value).groups())  # type: ignore[union-attr]
    try:
        result = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        result = MAX_DURATION + timedelta(seconds=1)
    if result > MAX_DURATION:
        raise ValueError(f"{excerpt(value)} is longer than {format_duration(MAX_DURATION)}")
    if result <= timedelta(0):
        raise ValueError(f"{excerpt(value)} is not a positive duration")
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


def strict_bool(value: Any) -> bool:
    """Only ``true`` and ``false``: a string, a number or a YAML 1.1 ``off`` is refused.

    A loose reading turns ``'false'`` (quoted) or ``no`` into a boolean the
    writer may not have meant; the message names the form to write instead.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        raise ValueError(f"{excerpt(value)} is a string, not a boolean: write "
                         f"{value.lower()} without quotes")
    if isinstance(value, str) and value.lower() in _YAML11_BOOLEANS:
        raise ValueError(f"{excerpt(value)} is not a boolean in YAML 1.2: write "
                         f"{_YAML11_BOOLEANS[value.lower()]}")
    raise ValueError(f"{excerpt(value)} is not a boolean: write true or false")


def strict_int(value: Any) -> int:
    """Only a plain integer: ``true``, ``'3'`` or ``3.0`` is refused, naming the form to write."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{excerpt(value)} is not an integer: write a plain integer such as 3")


StrictBool = Annotated[bool, BeforeValidator(strict_bool)]
StrictInt = Annotated[int, BeforeValidator(strict_int)]


def printable_name(value: Any) -> str:
    """A name shown in one line of a log: no control characters, at most 128 characters."""
    if not isinstance(value, str):
        raise ValueError(f"{excerpt(value)} is not a name (write it as a string)")
    char = control_character(value)
    if char is not None:
        raise ValueError(f"{excerpt(value)} contains the control character {excerpt(char)}: "
                         "a name is one line of printable text")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{excerpt(value)} is longer than {MAX_NAME_LENGTH} characters")
    return value


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

    name: Annotated[str, BeforeValidator(printable_name)] = Field(
        min_length=1, max_length=MAX_NAME_LENGTH)


class ChannelRef(_Model):
    """Where the signed release channel is published."""

    url: str = Field(description="Base URL of the channel (http or https)")

    @field_validator("url", mode="before")
    @classmethod
    def _http(cls, value: Any) -> str:
        # The runtime parses it with the same function before every fetch.
        parse_channel_url(value)
        text = str(value)
        return text if text.endswith("/") else text + "/"


class HealthPolicy(_Model):
    """How a slot on trial proves it is healthy."""

    url: str = "http://127.0.0.1:7800/health/ready"

    @field_validator("url", mode="before")
    @classmethod
    def _http(cls, value: Any) -> str:
        parse_url(value)
        return str(value)
    interval: Duration = timedelta(seconds=5)
    timeout: Duration = Field(default=timedelta(minutes=2),
                              description="Counted from the first probe after boot")
    success_threshold: StrictInt = Field(default=1, ge=1, alias="successThreshold")


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
            raise ValueError(f"{excerpt(value)} is not a time of day as HH:MM (00:00 to 23:59)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if len(value) > 64:
            raise ValueError(f"{excerpt(value)} is not an IANA time zone (e.g. Europe/Berlin)")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{excerpt(value)} is not an IANA time zone (e.g. Europe/Berlin)"
                             ) from None
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


class FleetLockRef(_Model):
    """The FleetLock server that hands out reboot slots to the fleet (the lock group is
    the device's own: its configuration layer's ``fleetLock.group``)."""

    url: str = Field(description="The server's base URL (http or https)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parse_url(value, query=False)
        return value


class Rollout(_Model):
    """When the device may stage and reboot."""

    windows: list[WindowSpec] = Field(default_factory=list)
    stage: Literal["immediate", "in-window"] = "immediate"
    auto_reboot: StrictBool = Field(default=True, alias="autoReboot")
    service_restarts: Literal["in-window", "any-time"] = Field(
        default="in-window", alias="serviceRestarts",
        description="When a service update may restart services: in a maintenance window "
                    "like a reboot, or at any time (a restore is never held)")
    fleet_lock: FleetLockRef | None = Field(
        default=None, alias="fleetLock",
        description="A FleetLock server: a forward reboot waits for a reboot slot there")

    def window_values(self) -> tuple[Window, ...]:
        """The windows as pure values (empty: any time)."""
        return tuple(w.window() for w in self.windows)


class RollbackPolicy(_Model):
    """Whether a failed trial rolls back (and a healthy one confirms) by itself."""

    automatic: StrictBool = True


class UpdateSpec(_Model):
    """The desired state of the device."""

    version: str = Field(description="An exact semver such as 1.0.1, or 'latest'")
    channel: ChannelRef
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    rollout: Rollout = Field(default_factory=Rollout)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    allow_downgrade: StrictBool = Field(default=False, alias="allowDowngrade")
    suspend: StrictBool = False

    @field_validator("version", mode="before")
    @classmethod
    def _semver_or_latest(cls, value: Any) -> str:
        # YAML reads `version: 1.0` as a number; name it as written, not as a type error.
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or (value != "latest" and not is_semver(value)):
            raise ValueError(f"{excerpt(value)} is neither 'latest' nor a semantic version "
                             "like 1.0.1")
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
