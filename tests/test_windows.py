"""Maintenance windows: wall-clock rule, midnight and week wrap, DST days, unions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from reconciler.windows import (
    Window,
    closes_at,
    current_window,
    describe,
    is_open,
    next_open,
)

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def window(days: set[int], start: str, duration: timedelta, zone: str = "Europe/Berlin") -> Window:
    hour, minute = (int(p) for p in start.split(":"))
    return Window(days=frozenset(days), start=time(hour, minute), duration=duration,
                  timezone=zone)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int,
          second: int = 0, micro: int = 0, fold: int = 0) -> datetime:
    """A wall-clock time in ``zone``; ``fold=1`` picks the second pass of a repeated hour."""
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone, fold=fold)


H = timedelta(hours=1)
M = timedelta(minutes=1)
US = timedelta(microseconds=1)


# --- no windows, boundaries, midnight, week wrap --------------------------------------


def test_no_windows_means_open_at_any_time_with_nothing_to_schedule() -> None:
    now = utc(2027, 5, 5, 12, 0)
    assert is_open([], now)
    assert current_window([], now) is None
    assert next_open([], now) is None
    assert closes_at([], now) is None


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    w = [window({WED}, "02:00", 90 * M)]
    assert not is_open(w, local(BERLIN, 2027, 5, 5, 1, 59, 59))
    assert is_open(w, local(BERLIN, 2027, 5, 5, 2, 0))
    assert is_open(w, local(BERLIN, 2027, 5, 5, 3, 29, 59, 999999))
    assert not is_open(w, local(BERLIN, 2027, 5, 5, 3, 30))


def test_window_is_closed_on_days_it_does_not_list() -> None:
    w = [window({WED}, "02:00", H)]
    assert not is_open(w, local(BERLIN, 2027, 5, 6, 2, 30))


def test_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    w = [window({FRI}, "23:00", 3 * H)]
    assert is_open(w, local(BERLIN, 2027, 5, 7, 23, 0))  # Fri
    assert is_open(w, local(BERLIN, 2027, 5, 8, 1, 0))  # Sat, still Friday's window
    assert not is_open(w, local(BERLIN, 2027, 5, 8, 2, 0))
    assert not is_open(w, local(BERLIN, 2027, 5, 8, 23, 30))  # Sat is not listed
    assert not is_open(w, local(BERLIN, 2027, 5, 7, 1, 0))  # Thursday night: no window


def test_window_crossing_midnight_opens_saturday_night_when_saturday_is_listed() -> None:
    w = [window({FRI, SAT}, "23:00", 3 * H)]
    assert is_open(w, local(BERLIN, 2027, 5, 8, 23, 30))


def test_sunday_window_wraps_into_monday_of_the_next_week() -> None:
    w = [window({SUN}, "23:00", 2 * H)]
    assert is_open(w, local(BERLIN, 2027, 5, 10, 0, 30))  # Mon
    assert not is_open(w, local(BERLIN, 2027, 5, 10, 1, 0))
    assert next_open(w, local(BERLIN, 2027, 5, 8, 12, 0)) == local(BERLIN, 2027, 5, 9, 23, 0)
    assert closes_at(w, local(BERLIN, 2027, 5, 10, 0, 30)) == local(BERLIN, 2027, 5, 10, 1, 0)


def test_week_long_window_is_open_until_it_starts_again() -> None:
    w = [window({MON}, "00:00", timedelta(days=7) - M)]
    assert is_open(w, local(BERLIN, 2027, 5, 9, 23, 58))
    assert not is_open(w, local(BERLIN, 2027, 5, 9, 23, 59))
    assert next_open(w, local(BERLIN, 2027, 5, 9, 23, 59)) == local(BERLIN, 2027, 5, 10, 0, 0)


def test_now_may_be_given_in_any_zone() -> None:
    w = [window({WED}, "02:00", H)]
    tokyo_now = local(ZoneInfo("Asia/Tokyo"), 2027, 5, 5, 9, 30)  # 02:30 in Berlin
    assert is_open(w, tokyo_now)
    assert closes_at(w, tokyo_now) == utc(2027, 5, 5, 1, 0)


# --- next_open, current_window, closes_at ---------------------------------------------


def test_next_open_is_now_while_a_window_is_open() -> None:
    w = [window({WED}, "02:00", H)]
    now = local(BERLIN, 2027, 5, 5, 2, 30)
    assert next_open(w, now) == now
    assert next_open(w, now).tzinfo is UTC  # type: ignore[union-attr]


def test_next_open_before_a_window_is_its_start_in_utc() -> None:
    w = [window({WED}, "02:00", H)]
    assert next_open(w, local(BERLIN, 2027, 5, 4, 12, 0)) == utc(2027, 5, 5, 0, 0)


def test_next_open_after_a_window_is_the_next_weeks_start() -> None:
    w = [window({WED}, "02:00", H)]
    assert next_open(w, local(BERLIN, 2027, 5, 5, 3, 0)) == local(BERLIN, 2027, 5, 12, 2, 0)


def test_closed_window_has_no_current_interval_and_no_closing_time() -> None:
    w = [window({WED}, "02:00", H)]
    assert current_window(w, local(BERLIN, 2027, 5, 5, 4, 0)) is None
    assert closes_at(w, local(BERLIN, 2027, 5, 5, 4, 0)) is None


def test_current_window_is_the_open_interval_in_utc() -> None:
    w = [window({WED}, "02:00", 90 * M)]
    assert current_window(w, local(BERLIN, 2027, 5, 5, 2, 45)) == (
        utc(2027, 5, 5, 0, 0), utc(2027, 5, 5, 1, 30))


def test_closes_at_merges_overlapping_windows() -> None:
    w = [window({WED}, "02:00", 2 * H), window({WED}, "03:00", 2 * H)]
    now = local(BERLIN, 2027, 5, 5, 2, 30)
    assert closes_at(w, now) == local(BERLIN, 2027, 5, 5, 5, 0)
    assert current_window(w, local(BERLIN, 2027, 5, 5, 4, 30)) == (
        local(BERLIN, 2027, 5, 5, 2, 0), local(BERLIN, 2027, 5, 5, 5, 0))


def test_closes_at_merges_adjacent_windows() -> None:
    w = [window({WED}, "02:00", H), window({WED}, "03:00", H)]
    assert closes_at(w, local(BERLIN, 2027, 5, 5, 2, 30)) == local(BERLIN, 2027, 5, 5, 4, 0)


def test_windows_covering_the_whole_week_never_close() -> None:
    w = [window(set(range(7)), "00:00", 24 * H)]
    now = utc(2027, 10, 31, 0, 30)  # 02:30 CEST, the first pass of the repeated hour
    assert is_open(w, now)
    assert next_open(w, now) == now
    assert closes_at(w, now) is None
    assert current_window(w, now) is None


# --- two zones ------------------------------------------------------------------------


def test_windows_in_two_zones_combine_as_a_union() -> None:
    w = [window({WED}, "02:00", H, "Europe/Berlin"), window({WED}, "02:00", H, "America/New_York")]
    assert is_open(w, local(BERLIN, 2027, 5, 5, 2, 30))
    assert is_open(w, local(NEW_YORK, 2027, 5, 5, 2, 30))
    assert not is_open(w, utc(2027, 5, 5, 3, 0))
    assert next_open(w, utc(2027, 5, 5, 3, 0)) == utc(2027, 5, 5, 6, 0)  # 02:00 EDT
    assert closes_at(w, utc(2027, 5, 5, 6, 0)) == utc(2027, 5, 5, 7, 0)


def test_windows_in_two_zones_that_touch_merge_into_one_interval() -> None:
    # Berlin is 6 hours ahead of New York in May: Berlin 08:00-09:00 == NY 02:00-03:00.
    w = [window({WED}, "07:00", H, "Europe/Berlin"), window({WED}, "02:00", H, "America/New_York")]
    assert current_window(w, utc(2027, 5, 5, 5, 30)) == (utc(2027, 5, 5, 5, 0),
                                                         utc(2027, 5, 5, 7, 0))


# --- spring forward: the skipped hour -------------------------------------------------


@pytest.mark.parametrize(("zone", "day", "jump_utc"), [
    ("Europe/Berlin", (2027, 3, 28), utc(2027, 3, 28, 1, 0)),     # 02:00 CET -> 03:00 CEST
    ("America/New_York", (2027, 3, 14), utc(2027, 3, 14, 7, 0)),  # 02:00 EST -> 03:00 EDT
])
def test_window_starting_in_the_skipped_hour_opens_at_the_jump_for_30_real_minutes(
        zone: str, day: tuple[int, int, int], jump_utc: datetime) -> None:
    w = [window({SUN}, "02:30", H, zone)]
    day_before = datetime(*day, tzinfo=UTC) - timedelta(days=1)
    assert next_open(w, day_before) == jump_utc
    assert not is_open(w, jump_utc - US)
    assert is_open(w, jump_utc)
    assert current_window(w, jump_utc) == (jump_utc, jump_utc + 30 * M)  # 03:30 local


@pytest.mark.parametrize(("zone", "day", "next_week_open"), [
    ("Europe/Berlin", (2027, 3, 28), utc(2027, 4, 4, 0, 10)),      # 02:10 CEST
    ("America/New_York", (2027, 3, 14), utc(2027, 3, 21, 6, 10)),  # 02:10 EDT
])
def test_window_entirely_inside_the_skipped_hour_does_not_open_that_day(
        zone: str, day: tuple[int, int, int], next_week_open: datetime) -> None:
    w = [window({SUN}, "02:10", 20 * M, zone)]
    day_start = datetime(*day, tzinfo=ZoneInfo(zone))
    assert not any(is_open(w, day_start + i * M) for i in range(24 * 60))
    assert next_open(w, day_start) == next_week_open


# --- fall back: the repeated hour -----------------------------------------------------


@pytest.mark.parametrize(("zone", "day", "start", "opens", "closes"), [
    # Berlin: 03:00 CEST -> 02:00 CET; wall [01:30, 03:30) is 23:30 -> 02:30 UTC.
    ("Europe/Berlin", (2027, 10, 31), "01:30", utc(2027, 10, 30, 23, 30), utc(2027, 10, 31, 2, 30)),
    # New York: 02:00 EDT -> 01:00 EST; wall [00:30, 02:30) is 04:30 -> 07:30 UTC.
    ("America/New_York", (2027, 11, 7), "00:30", utc(2027, 11, 7, 4, 30), utc(2027, 11, 7, 7, 30)),
])
def test_window_spanning_the_repeated_hour_stays_open_for_three_real_hours(
        zone: str, day: tuple[int, int, int], start: str, opens: datetime,
        closes: datetime) -> None:
    w = [window({SUN}, start, 2 * H, zone)]
    assert next_open(w, opens - timedelta(days=1)) == opens
    assert current_window(w, opens + H) == (opens, closes)
    assert closes - opens == 3 * H
    assert all(is_open(w, opens + i * M) for i in range(180))
    assert not is_open(w, closes)


@pytest.mark.parametrize(("zone", "start", "first", "second"), [
    # Berlin repeats 02:00-03:00: 02:15 CEST is 00:15 UTC, 02:15 CET is 01:15 UTC.
    ("Europe/Berlin", "02:15", utc(2027, 10, 31, 0, 15), utc(2027, 10, 31, 1, 15)),
    # New York repeats 01:00-02:00: 01:15 EDT is 05:15 UTC, 01:15 EST is 06:15 UTC.
    ("America/New_York", "01:15", utc(2027, 11, 7, 5, 15), utc(2027, 11, 7, 6, 15)),
])
def test_window_entirely_inside_the_repeated_hour_opens_on_both_passes(
        zone: str, start: str, first: datetime, second: datetime) -> None:
    w = [window({SUN}, start, 30 * M, zone)]
    assert next_open(w, first - timedelta(days=1)) == first
    assert current_window(w, first) == (first, first + 30 * M)
    between = first + 30 * M
    assert not is_open(w, between)
    assert closes_at(w, between) is None
    assert next_open(w, between) == second
    assert current_window(w, second + 29 * M) == (second, second + 30 * M)
    assert not is_open(w, second + 30 * M)


def test_fall_back_times_given_with_fold_are_read_as_the_instant_they_name() -> None:
    w = [window({SUN}, "02:15", 30 * M)]
    assert is_open(w, local(BERLIN, 2027, 10, 31, 2, 20, fold=0))
    assert is_open(w, local(BERLIN, 2027, 10, 31, 2, 20, fold=1))
    assert not is_open(w, local(BERLIN, 2027, 10, 31, 2, 50, fold=0))


# --- invalid input --------------------------------------------------------------------


@pytest.mark.parametrize("query", [is_open, current_window, next_open, closes_at])
def test_naive_now_is_refused(query: object) -> None:
    with pytest.raises(ValueError, match="aware"):
        query([window({WED}, "02:00", H)], datetime(2027, 5, 5, 2, 30))  # type: ignore[operator]


def test_naive_now_is_refused_even_without_windows() -> None:
    with pytest.raises(ValueError, match="aware"):
        is_open([], datetime(2027, 5, 5, 2, 30))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"days": frozenset()}, "days"),
    ({"days": frozenset({7})}, "days"),
    ({"duration": timedelta(0)}, "duration"),
    ({"duration": timedelta(days=7, seconds=1)}, "duration"),
    ({"timezone": "Mars/Olympus_Mons"}, "time zone"),
    ({"start": time(2, 0, tzinfo=UTC)}, "tzinfo"),
])
def test_invalid_window_is_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"days": frozenset({WED}), "start": time(2, 0),
                                 "duration": H, "timezone": "Europe/Berlin"}
    with pytest.raises(ValueError, match=message):
        Window(**{**fields, **kwargs})  # type: ignore[arg-type]


# --- describe -------------------------------------------------------------------------


def test_describe_names_days_start_duration_and_zone_for_status_lines() -> None:
    assert describe(window({WED, MON}, "02:00", 90 * M)) == "Mon,Wed 02:00+1h30m Europe/Berlin"
    assert describe(window({FRI}, "23:00", timedelta(days=1, hours=2), "UTC")) == (
        "Fri 23:00+1d2h UTC")


# --- properties over random windows and instants --------------------------------------

ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/St_Johns", "Pacific/Chatham", "UTC", "Australia/Sydney")
# Instants near the 2027 clock changes of the zones above, and a quiet week.
ANCHORS = (utc(2027, 3, 28), utc(2027, 10, 31), utc(2027, 3, 14), utc(2027, 11, 7),
           utc(2027, 4, 4), utc(2027, 10, 3), utc(2027, 6, 16))


def random_windows(rng: random.Random) -> list[Window]:
    return [Window(days=frozenset(rng.sample(range(7), rng.randint(1, 3))),
                   start=time(rng.randrange(24), rng.choice((0, 10, 15, 30, 45))),
                   duration=rng.choice((10 * M, 30 * M, H, 2 * H, 5 * H, timedelta(days=1))),
                   timezone=rng.choice(ZONES))
            for _ in range(rng.randint(1, 3))]


def random_instant(rng: random.Random) -> datetime:
    minutes = rng.randrange(-3 * 24 * 60, 3 * 24 * 60)
    offset = timedelta(minutes=minutes, seconds=rng.choice((0, 30)))
    return rng.choice(ANCHORS) + offset


@pytest.mark.parametrize("seed", range(60))
def test_next_open_is_open_and_nothing_before_it_is(seed: int) -> None:
    rng = random.Random(seed)
    windows, now = random_windows(rng), random_instant(rng)
    opens = next_open(windows, now)
    assert opens is not None and opens >= now
    assert is_open(windows, opens)
    gap = opens - now
    samples = [now + gap * rng.random() for _ in range(40)]
    samples += [opens - US, opens - timedelta(seconds=1)]
    assert not any(is_open(windows, t) for t in samples if now <= t < opens)


@pytest.mark.parametrize("seed", range(60))
def test_current_window_is_a_maximal_open_stretch_around_now(seed: int) -> None:
    rng = random.Random(1000 + seed)
    windows = random_windows(rng)
    now = next_open(windows, random_instant(rng))
    assert now is not None
    run = current_window(windows, now)
    if run is None:  # windows that leave no gap
        assert closes_at(windows, now) is None
        return
    start, end = run
    assert start <= now < end and closes_at(windows, now) == end
    inside = [start + (end - start) * rng.random() for _ in range(40)] + [start, end - US]
    assert all(is_open(windows, t) for t in inside)
    assert not is_open(windows, end) and not is_open(windows, start - US)
