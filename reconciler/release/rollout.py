"""A phased rollout of one release, from the signed channel, without a server.

A release may carry ``rollout`` in the signed metadata (``docs/rollout.md``):
``start`` (a UTC time), ``startPercentage`` (0 to 100, default 0) and
``duration`` (how long from ``start`` to 100 %; absent: the share stays at
``startPercentage``, which is how a rollout is paused). At time ``t`` the
rollout's **share** is 0 before ``start``, then::

    startPercentage + (100 - startPercentage) * (t - start) / duration

capped at 100. Each device has a **wariness** in ``[0, 1)``, a hash of its id:
it is reached when ``wariness * 100 < share``. Everything here is pure: the
time comes from the caller, the id too, and the arithmetic is exact
(:class:`fractions.Fraction`), so 0 % reaches no device and 100 % every one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from reconciler.errors import ReleaseError
from reconciler.spec import MAX_DURATION, format_duration, parse_duration

#: The feature a release with a rollout requires: a device that would ignore the rollout
#: skips the release instead of taking it at once.
ROLLOUT_FEATURE = "phased-rollout"
#: The fields of ``rollout``; no other is signed or read.
ROLLOUT_FIELDS = frozenset({"start", "startPercentage", "duration"})
#: The longest ``duration``: the spec's limit for durations.
MAX_ROLLOUT_DURATION = MAX_DURATION
#: Bytes of the hash that make the wariness (64 bits).
_WARINESS_BITS = 64
#: Prefixed to the device id before hashing, so the wariness is no other hash's value.
_WARINESS_DOMAIN = b"kruxos-rollout-wariness\0"
_MAX_TIME_LENGTH = 64


@dataclass(frozen=True)
class Rollout:
    """A release's rollout: from ``start_percentage`` at ``start`` to 100 % ``duration``
    later (``None``: held at ``start_percentage``)."""

    start: datetime
    start_percentage: int = 0
    duration: timedelta | None = None

    def share(self, now: datetime) -> Fraction:
        """The percentage of devices reached at ``now`` (0 to 100, exact)."""
        if now < self.start:
            return Fraction(0)
        if self.duration is None or self.start_percentage == 100:
            return Fraction(self.start_percentage)
        elapsed = _micros(now - self.start)
        grown = Fraction(100 - self.start_percentage) * elapsed / _micros(self.duration)
        return min(Fraction(100), self.start_percentage + grown)

    def reaches(self, wariness: Fraction, now: datetime) -> bool:
        """Whether a device of ``wariness`` is offered the release at ``now``."""
        return wariness * 100 < self.share(now)

    def offered_at(self, wariness: Fraction) -> datetime | None:
        """The first moment (to the microsecond) the rollout reaches ``wariness``; ``None``
        when it never does (a paused rollout below the device's place)."""
        place = wariness * 100
        if place < self.start_percentage:
            return self.start
        if self.duration is None or self.start_percentage == 100:
            return None
        # share(t) > place  <=>  t - start > duration * (place - p) / (100 - p)
        cut = _micros(self.duration) * (place - self.start_percentage) \
            / (100 - self.start_percentage)
        try:
            return self.start + timedelta(microseconds=int(cut) + 1)
        except OverflowError:  # past year 9999: not in any time a device will see
            return None

    def to_json(self) -> dict[str, Any]:
        """``rollout`` as it appears in a release of the signed metadata."""
        doc: dict[str, Any] = {"start": format_moment(self.start),
                               "startPercentage": self.start_percentage}
        if self.duration is not None:
            doc["duration"] = format_duration(self.duration)
        return doc


def _micros(span: timedelta) -> int:
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


def format_moment(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, as the metadata spells times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wariness_of(device_id: str | None) -> Fraction:
    """The device's place in every rollout, in ``[0, 1)``: the first 64 bits of
    SHA-256(``kruxos-rollout-wariness\\0`` + id) over 2⁶⁴. Without an id the device is the
    most wary there is (just below 1): it is offered a release when its rollout ends."""
    if not device_id:
        return Fraction((1 << _WARINESS_BITS) - 1, 1 << _WARINESS_BITS)
    digest = hashlib.sha256(_WARINESS_DOMAIN + device_id.encode()).digest()
    return Fraction(int.from_bytes(digest[:_WARINESS_BITS // 8], "big"), 1 << _WARINESS_BITS)


def percent(value: Fraction) -> str:
    """``37 %``: a share or a place rounded down to a whole percent (``99.9`` is ``99 %``)."""
    return f"{int(value)} %"


def _fail(message: str) -> ReleaseError:
    return ReleaseError(f"channel metadata: {message}")


def parse_rollout(value: Any, where: str, requires: tuple[str, ...]) -> Rollout | None:
    """``rollout``: an object of ``start`` (required), ``startPercentage`` and ``duration``,
    and the release must require :data:`ROLLOUT_FEATURE`. Shared with the publisher
    (``kruxos release add --rollout-start``, ``kruxos release rollout``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected an object (start, startPercentage, duration)")
    unknown = sorted(str(k)[:40] for k in value if k not in ROLLOUT_FIELDS)
    if unknown:
        raise _fail(f"{where}: unknown field(s) {', '.join(map(repr, unknown[:4]))} (a "
                    "rollout has start, startPercentage and duration)")
    if "start" not in value:
        raise _fail(f"{where}.start: expected a UTC time YYYY-MM-DDTHH:MM:SSZ, got nothing")
    start = _start(value["start"], f"{where}.start")
    pct = value.get("startPercentage", 0)
    if type(pct) is not int or not 0 <= pct <= 100:
        raise _fail(f"{where}.startPercentage: expected an integer from 0 to 100, got "
                    f"{_quote(pct)}")
    duration = None
    if "duration" in value:
        raw = value["duration"]
        try:
            duration = parse_duration(raw)
        except ValueError as exc:
            raise _fail(f"{where}.duration: {exc}") from exc
    if ROLLOUT_FEATURE not in requires:
        raise _fail(f"{where}: a release with a rollout must require {ROLLOUT_FEATURE!r} "
                    "(devices that would ignore it skip the release)")
    return Rollout(start, pct, duration)


def _start(raw: Any, where: str) -> datetime:
    if not isinstance(raw, str):
        raise _fail(f"{where}: expected a UTC time YYYY-MM-DDTHH:MM:SSZ, got {_quote(raw)}")
    try:
        if len(raw) > _MAX_TIME_LENGTH:
            raise ValueError("too long")
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise _fail(f"{where}: {_quote(raw)} is not an RFC 3339 time "
                    "(YYYY-MM-DDTHH:MM:SSZ)") from exc
    if moment.tzinfo is None:
        raise _fail(f"{where}: {_quote(raw)} has no time zone (write it in UTC with Z)")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise _fail(f"{where}: {_quote(raw)} is out of range") from exc


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:80])
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int | float):
        text = str(value)
        return text if len(text) <= 80 else f"a number of {len(text)} digits"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Hold:
    """A release this device is not offered yet: when it will be (``None``: not while the
    rollout stays as signed), the rollout's share now and the device's place (percent)."""

    version: str
    offered_at: datetime | None
    share: Fraction
    place: Fraction

    def reason(self) -> str:
        """``1.2.0 is being rolled out: this device is offered it at ... (its place 37 %)``.

        Stable while the rollout is unchanged (the share now is not in it), so a
        daemon that says it again at every pass says the same thing.
        """
        if self.offered_at is None:
            return (f"{self.version} is being rolled out and held at "
                    f"{percent(self.share)}: this device is not offered it until the rollout "
                    f"is re-signed (its place {percent(self.place)})")
        return (f"{self.version} is being rolled out: this device is offered it at "
                f"{_minute_up(self.offered_at)} (its place {percent(self.place)})")


def _minute_up(moment: datetime) -> str:
    """``2026-12-05 14:00 UTC``: rounded up, so the device is offered it by the time shown."""
    moment = moment.astimezone(UTC)
    if moment.second or moment.microsecond:
        moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def hold_of(version: str, rollout: Rollout | None, wariness: Fraction,
            now: datetime) -> Hold | None:
    """The hold on ``version`` for a device of ``wariness`` at ``now`` (``None``: offered)."""
    if rollout is None or rollout.reaches(wariness, now):
        return None
    return Hold(version, rollout.offered_at(wariness), rollout.share(now), wariness * 100)


def holds(rollouts: Mapping[str, Rollout | None], wariness: Fraction,
          now: datetime) -> dict[str, Hold]:
    """Every release of ``rollouts`` (by version) not offered to the device at ``now``."""
    return {version: hold for version, rollout in rollouts.items()
            if (hold := hold_of(version, rollout, wariness, now)) is not None}
