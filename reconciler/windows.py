"""Maintenance-window arithmetic (pure): is a reboot allowed now, and when next.

A window is **wall-clock time in its zone**. It opens on each of its ``days``
at ``start`` and stays open for ``duration`` of *wall-clock* time, counted by
naive local arithmetic from the day it starts (so ``fri 23:00 + 3h`` belongs to
Friday and closes Saturday 02:00). An instant is inside a window when the zone's
wall clock, read at that instant, shows a time in ``[start, start + duration)``
of one of its start days. On the days the clocks change this gives:

* spring forward (the clock skips an hour): a window that starts in the skipped
  hour opens at the jump and still closes at its wall-clock end, so it is
  shorter in real time; a window entirely inside the skipped hour does not
  open that day;
* fall back (the clock repeats an hour): a window spanning the repeated hour is
  open throughout, so it is longer in real time; a window entirely inside the
  repeated hour opens twice, once on each pass, and is closed in between.

Several windows, also in different zones, combine as a union. No windows means
any time. Nothing here reads the clock or a file (``zoneinfo`` reads the tz
database, which is the standard library's job): ``now`` is always an argument,
and every returned instant is an aware UTC datetime.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Window", "closes_at", "current_window", "describe", "is_open", "next_open"]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MAX_DURATION = timedelta(days=7)
# How far around ``now`` we look, widened only when a stretch of open time
# reaches the edge (windows that chain into each other, or a window that never
# opens because it lies in a skipped hour every week).
_SPANS = (timedelta(days=9), timedelta(days=64), timedelta(days=512))
# Offsets are sampled this often to find the zone's transitions; no zone in the
# tz database changes its offset twice within an hour.
_STEP = timedelta(hours=1)
_MARGIN = timedelta(days=2)  # more than any UTC offset (-12h .. +14h)

# (start, end) as naive UTC datetimes inside this module; half open.
_Interval = tuple[datetime, datetime]
# (start, end, UTC offset): a stretch of real time on which the offset holds.
_Segment = tuple[datetime, datetime, timedelta]


@dataclass(frozen=True)
class Window:
    """One weekly maintenance window, as the spec's ``windows`` entries say it.

    ``days`` are the days the window *starts* on (0 = Monday .. 6 = Sunday);
    ``start`` is a naive wall-clock time in ``timezone``. Invalid values raise
    ValueError here, so the arithmetic below never meets them.
    """

    days: frozenset[int]
    start: time
    duration: timedelta
    timezone: str

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise ValueError(f"window days must be a non-empty subset of 0..6, got {self.days}")
        if self.start.tzinfo is not None:
            raise ValueError("window start is a wall-clock time and carries no tzinfo")
        if not timedelta(0) < self.duration <= _MAX_DURATION:
            raise ValueError(f"window duration must be > 0 and <= 7d, got {self.duration}")
        _zone(self.timezone)


def is_open(windows: Sequence[Window], now: datetime) -> bool:
    """Whether a reboot may happen at ``now``: no windows means any time.

    Reads the wall clock of each zone at ``now`` directly, the definition itself.
    """
    utc_now = _to_utc(now)
    return not windows or any(_shows_open(w, utc_now) for w in windows)


def current_window(windows: Sequence[Window], now: datetime) -> tuple[datetime, datetime] | None:
    """The stretch of open time containing ``now`` as aware UTC ``(start, end)``.

    Overlapping and adjacent windows count as one stretch, because that is how
    long a reboot stays allowed. None when closed, when there are no windows
    (there is no interval to show), and when the windows leave no gap at all.
    """
    utc_now = _to_utc(now)
    if not windows:
        return None
    for span in _SPANS:
        lo, hi = utc_now - span, utc_now + span
        run = _run_at(_open_intervals(windows, lo, hi), utc_now)
        if run is None:
            return None
        if lo < run[0] and run[1] < hi:
            return _aware(run[0]), _aware(run[1])
    return None


def next_open(windows: Sequence[Window], now: datetime) -> datetime | None:
    """The earliest instant at or after ``now`` when a reboot is allowed.

    This is ``now`` itself while a window is open, so a caller can schedule its
    wake-up from the answer alone. None when there are no windows (any time)
    and, in theory only, when no window opens within a year and a half.
    """
    utc_now = _to_utc(now)
    if not windows:
        return None
    if is_open(windows, now):
        return _aware(utc_now)
    for span in _SPANS:
        intervals = _open_intervals(windows, utc_now, utc_now + span)
        if intervals:
            return _aware(intervals[0][0])
    return None


def closes_at(windows: Sequence[Window], now: datetime) -> datetime | None:
    """When the open stretch containing ``now`` closes (overlaps merged).

    None when closed, with no windows, or when the windows never close.
    """
    run = current_window(windows, now)
    return None if run is None else run[1]


def describe(window: Window) -> str:
    """One line for status and audit output: ``Mon,Wed 02:00+1h30m Europe/Berlin``."""
    days = ",".join(_DAY_NAMES[d] for d in sorted(window.days))
    start = window.start.strftime("%H:%M:%S" if window.start.second else "%H:%M")
    return f"{days} {start}+{_format_duration(window.duration)} {window.timezone}"


# --- the definition: read the wall clock ----------------------------------------


def _shows_open(window: Window, utc_now: datetime) -> bool:
    """Whether the zone's wall clock at ``utc_now`` is inside an occurrence."""
    wall = _wall(_zone(window.timezone), utc_now)
    first = wall.date() - timedelta(days=window.duration.days + 2)
    return any(s <= wall < e for s, e in _occurrences(window, first, wall.date()))


def _occurrences(window: Window, first: date, last: date) -> Iterator[_Interval]:
    """Naive wall-clock ``[start, start + duration)`` for start days first..last."""
    day = first
    while day <= last:
        if day.weekday() in window.days:
            start = datetime.combine(day, window.start)
            yield start, start + window.duration
        day += timedelta(days=1)


# --- from wall-clock intervals to real time -------------------------------------


def _open_intervals(windows: Sequence[Window], lo: datetime, hi: datetime) -> list[_Interval]:
    """The open time within ``[lo, hi)`` (naive UTC), merged and clipped."""
    pieces: list[_Interval] = []
    for window in windows:
        pieces.extend(_real_intervals(window, lo, hi))
    return _merge(pieces, lo, hi)


def _real_intervals(window: Window, lo: datetime, hi: datetime) -> Iterator[_Interval]:
    """Real-time pieces of every occurrence that can touch ``[lo, hi)``.

    On each stretch of constant UTC offset the wall clock is ``utc + offset``,
    so an occurrence's wall interval maps back by subtracting the offset; the
    pieces of one occurrence meet (fall back) or vanish (spring forward) at
    the transitions, which is exactly the wall-clock rule.
    """
    first = (lo - window.duration - _MARGIN).date()
    last = (hi + _MARGIN).date()
    segments = _segments(_zone(window.timezone), lo - window.duration - 2 * _MARGIN,
                         hi + 2 * _MARGIN)
    for wall_start, wall_end in _occurrences(window, first, last):
        for seg_start, seg_end, offset in segments:
            start, end = max(seg_start, wall_start - offset), min(seg_end, wall_end - offset)
            if start < end:
                yield start, end


def _segments(zone: ZoneInfo, lo: datetime, hi: datetime) -> list[_Segment]:
    """``[lo, hi)`` (naive UTC) cut into stretches of constant UTC offset."""
    lo = lo.replace(minute=0, second=0, microsecond=0)
    segments: list[_Segment] = []
    seg_start, offset, t = lo, _offset(zone, lo), lo
    while t < hi:
        following = _offset(zone, t + _STEP)
        if following != offset:
            cut = _transition(zone, t, offset)
            segments.append((seg_start, cut, offset))
            seg_start, offset = cut, following
        t += _STEP
    segments.append((seg_start, t, offset))
    return segments


def _transition(zone: ZoneInfo, before: datetime, offset: timedelta) -> datetime:
    """The first whole second after ``before`` (within one step) not at ``offset``.

    The tz database puts every transition on a whole second, so a binary search
    over seconds finds it exactly.
    """
    low, high = 0, int(_STEP.total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if _offset(zone, before + timedelta(seconds=mid)) == offset:
            low = mid
        else:
            high = mid
    return before + timedelta(seconds=high)


def _merge(pieces: list[_Interval], lo: datetime, hi: datetime) -> list[_Interval]:
    """Sorted union of half-open intervals, touching ones joined, clipped to [lo, hi)."""
    merged: list[_Interval] = []
    for start, end in sorted(pieces):
        start, end = max(start, lo), min(end, hi)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _run_at(intervals: list[_Interval], utc_now: datetime) -> _Interval | None:
    """The interval containing ``utc_now``, if any."""
    return next(((s, e) for s, e in intervals if s <= utc_now < e), None)


# --- small conversions ------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    """The zone by IANA name; a bad name is a ValueError like any bad window field."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc


def _to_utc(now: datetime) -> datetime:
    """``now`` as naive UTC; a naive ``now`` is refused, its zone would be a guess."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be an aware datetime, got naive {now.isoformat()}")
    return now.astimezone(UTC).replace(tzinfo=None)


def _wall(zone: ZoneInfo, utc: datetime) -> datetime:
    """What the zone's wall clock shows at the naive UTC instant ``utc``."""
    return utc.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None, fold=0)


def _offset(zone: ZoneInfo, utc: datetime) -> timedelta:
    """The zone's UTC offset at the naive UTC instant ``utc``."""
    return _wall(zone, utc) - utc


def _aware(utc: datetime) -> datetime:
    return utc.replace(tzinfo=UTC)


def _format_duration(value: timedelta) -> str:
    """``1h30m``, ``1d2h``: the spec's own duration notation."""
    total, parts = int(value.total_seconds()), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"
