"""Tests of metaq_core.cron: Quartz cron syntax, fire-time computation, rejections, properties.

Expected datetimes are written out by hand (checked against ``calendar``), never taken from the
implementation. The hypothesis properties compare ``next_fire_time`` with brute-force oracles
that are written independently of the module (plain sets and ``calendar`` scans).
"""

from __future__ import annotations

import calendar
import datetime
import itertools
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaq_core.cron import DEFAULT_DELETE_WHEN, CronError, CronExpression, parse_cron

D = datetime.datetime


def fires(expr: str, after: D, count: int) -> list[D]:
    return parse_cron(expr).fire_times(after, count)


def at_noon(*days: tuple[int, int, int]) -> list[D]:
    return [D(y, m, d, 12, 0, 0) for y, m, d in days]


def noon_2026(days_of_months: list[int]) -> list[D]:
    """Noon on day ``days_of_months[i]`` of month ``i + 1`` of 2026."""
    return [D(2026, m, d, 12) for m, d in zip(range(1, 13), days_of_months, strict=True)]


# ---------------------------------------------------------------------------------------------
# MetaQ's default deleteWhen
# ---------------------------------------------------------------------------------------------


def test_default_delete_when_constant() -> None:
    assert DEFAULT_DELETE_WHEN == "0 0 6,18 * * ?"


def test_default_fires_at_six_and_eighteen_daily() -> None:
    assert fires(DEFAULT_DELETE_WHEN, D(2026, 1, 1), 5) == [
        D(2026, 1, 1, 6),
        D(2026, 1, 1, 18),
        D(2026, 1, 2, 6),
        D(2026, 1, 2, 18),
        D(2026, 1, 3, 6),
    ]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (D(2026, 5, 10, 5, 59, 59), D(2026, 5, 10, 6)),
        (D(2026, 5, 10, 5, 59, 59, 999_999), D(2026, 5, 10, 6)),
        (D(2026, 5, 10, 6), D(2026, 5, 10, 18)),  # strictly after
        (D(2026, 5, 10, 6, 0, 0, 1), D(2026, 5, 10, 18)),
        (D(2026, 5, 10, 12, 34, 56), D(2026, 5, 10, 18)),
        (D(2026, 5, 10, 18), D(2026, 5, 11, 6)),
        (D(2026, 5, 31, 23, 59, 59), D(2026, 6, 1, 6)),  # month roll-over
        (D(2026, 12, 31, 18), D(2027, 1, 1, 6)),  # year roll-over
        (D(2028, 2, 28, 19), D(2028, 2, 29, 6)),  # leap day
        (D(2027, 2, 28, 19), D(2027, 3, 1, 6)),
    ],
)
def test_default_next_fire_time(after: D, expected: D) -> None:
    assert parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(after) == expected


# ---------------------------------------------------------------------------------------------
# Syntax elements, with hand-computed datetimes (2026 starts on a Thursday)
# ---------------------------------------------------------------------------------------------


def test_last_friday_6L_over_2026() -> None:
    last_fridays = [30, 27, 27, 24, 29, 26, 31, 28, 25, 30, 27, 25]
    expected = [D(2026, m, d, 10, 15) for m, d in zip(range(1, 13), last_fridays)]
    assert fires("0 15 10 ? * 6L", D(2026, 1, 1), 12) == expected
    assert fires("0 15 10 ? * FRIL", D(2026, 1, 1), 12) == expected
    assert fires("0 15 10 ? * fril", D(2026, 1, 1), 12) == expected
    # independent check of the table itself
    for m, d in zip(range(1, 13), last_fridays):
        assert calendar.weekday(2026, m, d) == calendar.FRIDAY
        assert d + 7 > calendar.monthrange(2026, m)[1]


def test_last_weekday_LW() -> None:
    # Jan 31, Feb 28 and Oct 31 2026 are Saturdays, May 31 is a Sunday.
    days = [30, 27, 31, 30, 29, 30, 31, 31, 30, 30, 30, 31]
    assert fires("0 0 12 LW * ?", D(2026, 1, 1), 12) == noon_2026(days)


def test_last_day_L() -> None:
    assert fires("0 0 12 L * ?", D(2027, 12, 31, 13), 4) == at_noon(
        (2028, 1, 31), (2028, 2, 29), (2028, 3, 31), (2028, 4, 30)
    )
    assert fires("0 0 12 L 2 ?", D(2026, 1, 1), 3) == at_noon(
        (2026, 2, 28), (2027, 2, 28), (2028, 2, 29)
    )


def test_last_day_offset_L_minus_3() -> None:
    assert fires("0 0 12 L-3 * ?", D(2026, 1, 1), 4) == at_noon(
        (2026, 1, 28), (2026, 2, 25), (2026, 3, 28), (2026, 4, 27)
    )
    assert parse_cron("0 0 12 L-3 * ?").next_fire_time(D(2028, 2, 1)) == D(2028, 2, 26, 12)
    # L-0 is L
    assert fires("0 0 12 L-0 * ?", D(2026, 1, 1), 2) == at_noon((2026, 1, 31), (2026, 2, 28))


def test_last_day_offset_too_far_back_skips_short_months() -> None:
    # L-30 is the 1st of 31-day months and does not exist in shorter ones
    assert fires("0 0 12 L-30 * ?", D(2026, 1, 2), 3) == at_noon(
        (2026, 3, 1), (2026, 5, 1), (2026, 7, 1)
    )


def test_nearest_weekday_to_last_day_offset_L_minus_1_W() -> None:
    # L-1 in 2026: May 30 is a Saturday -> Fri 29; Aug 30 and Nov 29 are Sundays -> the Monday after
    # (which is still in the month); the others are weekdays.
    days = [30, 27, 30, 29, 29, 29, 30, 31, 29, 30, 30, 30]
    assert fires("0 0 12 L-1W * ?", D(2026, 1, 1), 12) == noon_2026(days)


def test_nearest_weekday_15W_around_weekends() -> None:
    # The 15th of 2026: Feb, Mar, Nov are Sundays (-> Monday 16th), Aug a Saturday (-> Friday 14th)
    days = [15, 16, 16, 15, 15, 15, 15, 14, 15, 15, 16, 15]
    assert fires("0 0 12 15W * ?", D(2026, 1, 1), 12) == noon_2026(days)


def test_nearest_weekday_1W_does_not_cross_month_start() -> None:
    # Aug 1 2026 is a Saturday: Friday Jul 31 is in another month, so Monday Aug 3.
    assert parse_cron("0 0 12 1W * ?").next_fire_time(D(2026, 7, 2)) == D(2026, 8, 3, 12)
    # Feb 1, Mar 1 and Nov 1 2026 are Sundays -> Monday the 2nd
    days = [1, 2, 2, 1, 1, 1, 1, 3, 1, 1, 2, 1]
    assert fires("0 0 12 1W * ?", D(2026, 1, 1), 12) == noon_2026(days)


def test_nearest_weekday_31W_does_not_cross_month_end() -> None:
    # May 31 2026 is a Sunday: Monday Jun 1 is in another month, so Friday May 29.
    assert parse_cron("0 0 12 31W * ?").next_fire_time(D(2026, 5, 1)) == D(2026, 5, 29, 12)
    # Jan 31 and Oct 31 are Saturdays -> Friday the 30th. Months without a 31st never fire.
    expected = at_noon(
        (2026, 1, 30), (2026, 3, 31), (2026, 5, 29), (2026, 7, 31), (2026, 8, 31), (2026, 10, 30)
    )
    assert fires("0 0 12 31W * ?", D(2026, 1, 1), 6) == expected


def test_nearest_weekday_fires_on_the_adjusted_day_even_if_before_the_target() -> None:
    # Aug 15 2026 is a Saturday -> fires Friday 14th; after the 14th the next is Sep 15.
    expr = parse_cron("0 0 12 15W * ?")
    assert expr.next_fire_time(D(2026, 8, 13, 23)) == D(2026, 8, 14, 12)
    assert expr.next_fire_time(D(2026, 8, 14, 12)) == D(2026, 9, 15, 12)


def test_nth_day_of_week_third_friday() -> None:
    third_fridays = [16, 20, 20, 17, 15, 19, 17, 21, 18, 16, 20, 18]
    expected = [D(2026, m, d, 12) for m, d in zip(range(1, 13), third_fridays)]
    assert fires("0 0 12 ? * 6#3", D(2026, 1, 1), 12) == expected
    assert fires("0 0 12 ? * FRI#3", D(2026, 1, 1), 12) == expected


def test_nth_day_of_week_first_monday() -> None:
    first_mondays = [5, 2, 2, 6, 4, 1, 6, 3, 7, 5, 2, 7]
    expected = [D(2026, m, d, 12) for m, d in zip(range(1, 13), first_mondays)]
    assert fires("0 0 12 ? * 2#1", D(2026, 1, 1), 12) == expected
    assert fires("0 0 12 ? * MON#1", D(2026, 1, 1), 12) == expected


def test_fifth_occurrence_skips_months_without_one() -> None:
    # 2026 months with five Fridays: January, May, July, October
    assert fires("0 0 12 ? * 6#5", D(2026, 1, 1), 4) == at_noon(
        (2026, 1, 30), (2026, 5, 29), (2026, 7, 31), (2026, 10, 30)
    )


def test_L_alone_in_day_of_week_is_saturday() -> None:
    assert fires("0 0 0 ? * L", D(2026, 1, 1), 5) == [D(2026, 1, d) for d in (3, 10, 17, 24, 31)]
    assert fires("0 0 0 ? * 7", D(2026, 1, 1), 5) == [D(2026, 1, d) for d in (3, 10, 17, 24, 31)]


def test_day_of_week_numbering_1_is_sunday() -> None:
    # Jan 4 2026 is a Sunday
    assert parse_cron("0 0 0 ? * 1").next_fire_time(D(2026, 1, 1)) == D(2026, 1, 4)
    assert parse_cron("0 0 0 ? * SUN").next_fire_time(D(2026, 1, 1)) == D(2026, 1, 4)
    assert parse_cron("0 0 0 ? * 2").next_fire_time(D(2026, 1, 1)) == D(2026, 1, 5)


def test_every_15_seconds() -> None:
    assert fires("0/15 * * * * ?", D(2026, 1, 1, 23, 59, 20), 4) == [
        D(2026, 1, 1, 23, 59, 30),
        D(2026, 1, 1, 23, 59, 45),
        D(2026, 1, 2, 0, 0, 0),
        D(2026, 1, 2, 0, 0, 15),
    ]


def test_step_from_start_only() -> None:
    # "5/15" in seconds = 5,20,35,50
    assert fires("5/15 * * * * ?", D(2026, 1, 1), 5) == [
        D(2026, 1, 1, 0, 0, 5),
        D(2026, 1, 1, 0, 0, 20),
        D(2026, 1, 1, 0, 0, 35),
        D(2026, 1, 1, 0, 0, 50),
        D(2026, 1, 1, 0, 1, 5),
    ]
    # "/20" alone reads as "*/20" (as in Quartz)
    assert fires("/20 * * * * ?", D(2026, 1, 1), 3) == [
        D(2026, 1, 1, 0, 0, 20),
        D(2026, 1, 1, 0, 0, 40),
        D(2026, 1, 1, 0, 1, 0),
    ]


def test_range_with_step() -> None:
    assert fires("0 10-40/10 * * * ?", D(2026, 1, 1), 5) == [
        D(2026, 1, 1, 0, 10),
        D(2026, 1, 1, 0, 20),
        D(2026, 1, 1, 0, 30),
        D(2026, 1, 1, 0, 40),
        D(2026, 1, 1, 1, 10),
    ]


def test_star_steps_in_other_fields() -> None:
    assert fires("0 0 */6 * * ?", D(2026, 1, 1, 1), 4) == [
        D(2026, 1, 1, 6),
        D(2026, 1, 1, 12),
        D(2026, 1, 1, 18),
        D(2026, 1, 2, 0),
    ]
    # day-of-month */10 = 1,11,21,31 ; month */4 = JAN,MAY,SEP
    assert fires("0 0 0 */10 * ?", D(2026, 2, 1), 4) == [
        D(2026, 2, 11),
        D(2026, 2, 21),
        D(2026, 3, 1),
        D(2026, 3, 11),
    ]
    assert fires("0 0 0 1 */4 ?", D(2026, 1, 1), 4) == [
        D(2026, 5, 1),
        D(2026, 9, 1),
        D(2027, 1, 1),
        D(2027, 5, 1),
    ]


def test_leap_day_feb_29() -> None:
    expr = parse_cron("0 0 0 29 2 ?")
    assert expr.fire_times(D(2026, 1, 1), 3) == [D(2028, 2, 29), D(2032, 2, 29), D(2036, 2, 29)]
    # 2100 is not a leap year (divisible by 100, not by 400)
    assert expr.next_fire_time(D(2096, 3, 1)) == D(2104, 2, 29)
    assert expr.next_fire_time(D(2399, 1, 1)) is None  # beyond the search bound


def test_names_mon_fri_and_month_lists() -> None:
    # Fri Jan 2 2026 10:00 -> Monday Jan 5 09:00
    assert fires("0 0 9 ? * MON-FRI", D(2026, 1, 2, 10), 3) == [
        D(2026, 1, 5, 9),
        D(2026, 1, 6, 9),
        D(2026, 1, 7, 9),
    ]
    assert fires("0 0 9 ? * mon-fri", D(2026, 1, 2, 10), 1) == [D(2026, 1, 5, 9)]
    assert fires("0 0 0 1 JAN,MAR ?", D(2026, 1, 1), 3) == [
        D(2026, 3, 1),
        D(2027, 1, 1),
        D(2027, 3, 1),
    ]
    assert fires("0 0 0 1 jan,Mar ?", D(2026, 1, 1), 1) == [D(2026, 3, 1)]
    assert fires("0 0 0 1 1,3 ?", D(2026, 1, 1), 1) == [D(2026, 3, 1)]
    assert fires("0 0 0 1 JUL-SEP ?", D(2026, 1, 1), 4) == [
        D(2026, 7, 1),
        D(2026, 8, 1),
        D(2026, 9, 1),
        D(2027, 7, 1),
    ]


def test_weekday_list_with_names() -> None:
    # Mon/Wed/Fri from Thursday Jan 1 2026
    assert fires("0 30 8 ? * MON,WED,FRI", D(2026, 1, 1), 4) == [
        D(2026, 1, 2, 8, 30),
        D(2026, 1, 5, 8, 30),
        D(2026, 1, 7, 8, 30),
        D(2026, 1, 9, 8, 30),
    ]


def test_wrapping_ranges() -> None:
    # Quartz wraps a range whose start is after its stop: hours 22-2 = 22,23,0,1,2
    assert fires("0 0 22-2 * * ?", D(2026, 1, 1, 3), 6) == [
        D(2026, 1, 1, 22),
        D(2026, 1, 1, 23),
        D(2026, 1, 2, 0),
        D(2026, 1, 2, 1),
        D(2026, 1, 2, 2),
        D(2026, 1, 2, 22),
    ]
    # FRI-MON = Fri, Sat, Sun, Mon
    assert fires("0 0 0 ? * FRI-MON", D(2026, 1, 1), 5) == [
        D(2026, 1, 2),
        D(2026, 1, 3),
        D(2026, 1, 4),
        D(2026, 1, 5),
        D(2026, 1, 9),
    ]
    # seconds 50-10/5 = 50,55,0,5,10
    assert fires("50-10/5 0 0 * * ?", D(2025, 12, 31, 23, 59, 59), 5) == [
        D(2026, 1, 1, 0, 0, 0),
        D(2026, 1, 1, 0, 0, 5),
        D(2026, 1, 1, 0, 0, 10),
        D(2026, 1, 1, 0, 0, 50),
        D(2026, 1, 1, 0, 0, 55),
    ]


def test_year_field() -> None:
    assert fires("0 0 0 1 1 ? 2030", D(2026, 1, 1), 3) == [D(2030, 1, 1)]
    assert parse_cron("0 0 0 1 1 ? 2030").next_fire_time(D(2030, 1, 1)) is None
    assert fires("0 0 0 1 1 ? 2030-2032", D(2026, 1, 1), 5) == [
        D(2030, 1, 1),
        D(2031, 1, 1),
        D(2032, 1, 1),
    ]
    assert fires("0 0 0 1 1 ? 2027,2029", D(2026, 1, 1), 5) == [D(2027, 1, 1), D(2029, 1, 1)]
    assert fires("0 0 0 1 1 ? 2030/20", D(2026, 1, 1), 5) == [
        D(2030, 1, 1),
        D(2050, 1, 1),
        D(2070, 1, 1),
        D(2090, 1, 1),
    ]
    assert fires("0 0 0 1 1 ? *", D(2026, 1, 1), 2) == [D(2027, 1, 1), D(2028, 1, 1)]


def test_year_in_the_past_gives_none_quickly() -> None:
    expr = parse_cron("* * * * * ? 2020")
    start = time.perf_counter()
    assert expr.next_fire_time(D(2026, 1, 1)) is None
    assert expr.fire_times(D(2026, 1, 1), 10) == []
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 0 30 2 ?",  # Feb 30 never exists
        "0 0 0 31 4,6,9,11 ?",
        "0 0 0 L-30 2 ?",
        "0 0 0 31W 2 ?",
    ],
)
def test_never_firing_expression_terminates(expr: str) -> None:
    start = time.perf_counter()
    assert parse_cron(expr).next_fire_time(D(1970, 1, 1)) is None
    assert time.perf_counter() - start < 2.0


def test_search_is_fast_for_dense_and_sparse_expressions() -> None:
    start = time.perf_counter()
    every_second = parse_cron("* * * * * ?")
    t = D(2026, 1, 1, 23, 59, 59)
    assert every_second.fire_times(t, 3) == [
        D(2026, 1, 2),
        D(2026, 1, 2, 0, 0, 1),
        D(2026, 1, 2, 0, 0, 2),
    ]
    # Fifth Sunday of February: only in leap years whose February starts on a Sunday.
    assert parse_cron("0 0 0 ? 2 1#5").next_fire_time(D(2026, 1, 1)) == D(2032, 2, 29)
    assert calendar.weekday(2032, 2, 1) == calendar.SUNDAY
    for _ in range(200):
        parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(D(2026, 1, 1))
    assert time.perf_counter() - start < 2.0


def test_microseconds_are_dropped_and_result_is_strictly_after() -> None:
    expr = parse_cron("* * * * * ?")
    assert expr.next_fire_time(D(2026, 1, 1, 10, 0, 0, 999_999)) == D(2026, 1, 1, 10, 0, 1)
    assert expr.next_fire_time(D(2026, 1, 1, 10, 0, 0)) == D(2026, 1, 1, 10, 0, 1)
    assert expr.next_fire_time(D(2026, 1, 1, 10, 0, 0)).microsecond == 0  # type: ignore[union-attr]


def test_end_of_datetime_range() -> None:
    assert parse_cron("* * * * * ?").next_fire_time(datetime.datetime.max) is None


def test_aware_datetimes_keep_their_tzinfo() -> None:
    plus8 = datetime.timezone(datetime.timedelta(hours=8))
    result = parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(D(2026, 3, 8, 7, 0, tzinfo=plus8))
    assert result == D(2026, 3, 8, 18, 0, tzinfo=plus8)
    assert result is not None and result.tzinfo is plus8
    ny = ZoneInfo("America/New_York")
    result = parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(D(2026, 7, 1, 19, 30, tzinfo=ny))
    assert result is not None and result.tzinfo is ny
    assert (result.year, result.month, result.day, result.hour, result.minute) == (2026, 7, 2, 6, 0)
    assert result.utcoffset() == datetime.timedelta(hours=-4)


def test_naive_stays_naive() -> None:
    result = parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(D(2026, 1, 1))
    assert result is not None and result.tzinfo is None


def test_wall_clock_computation_across_dst_change() -> None:
    # 2026-03-08 is the spring-forward day in New York; 06:00 wall clock still fires at 06:00 EDT.
    ny = ZoneInfo("America/New_York")
    result = parse_cron(DEFAULT_DELETE_WHEN).next_fire_time(D(2026, 3, 8, 1, 0, tzinfo=ny))
    assert result == D(2026, 3, 8, 6, 0, tzinfo=ny)
    assert result is not None and result.utcoffset() == datetime.timedelta(hours=-4)


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_api_basics() -> None:
    text = "0  15 10 ? *  6L"
    expr = CronExpression.parse(text)
    assert str(expr) == text
    assert expr.expression == text
    assert parse_cron(text) == expr == CronExpression(text)
    assert hash(parse_cron(text)) == hash(expr)
    assert text in repr(expr)
    assert issubclass(CronError, ValueError)
    with pytest.raises(AttributeError):
        expr.expression = "x"  # type: ignore[misc]


def test_fire_times_counts() -> None:
    expr = parse_cron(DEFAULT_DELETE_WHEN)
    assert expr.fire_times(D(2026, 1, 1), 0) == []
    with pytest.raises(ValueError):
        expr.fire_times(D(2026, 1, 1), -1)
    times = expr.fire_times(D(2026, 1, 1), 100)
    assert len(times) == 100
    assert all(a < b for a, b in itertools.pairwise(times))
    assert times[-1] == D(2026, 2, 19, 18)  # 100 fires = 50 days from Jan 1


def test_fire_times_stop_when_the_expression_runs_out() -> None:
    assert fires("0 0 0 1 1 ? 2027-2028", D(2026, 6, 1), 10) == [D(2027, 1, 1), D(2028, 1, 1)]


def test_next_fire_time_rejects_non_datetime() -> None:
    with pytest.raises(TypeError):
        expr = parse_cron(DEFAULT_DELETE_WHEN)
        expr.next_fire_time(datetime.date(2026, 1, 1))  # type: ignore[arg-type]


def test_matches() -> None:
    expr = parse_cron("0 15 10 ? * 6L")
    assert expr.matches(D(2026, 1, 30, 10, 15))
    assert expr.matches(D(2026, 1, 30, 10, 15, 0, 500))
    assert not expr.matches(D(2026, 1, 23, 10, 15))
    assert not expr.matches(D(2026, 1, 30, 10, 15, 1))


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "needles"),
    [
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("* * * * *", ["6 or 7 fields", "5"]),
        ("0 0 0 ? * 1 2030 extra", ["6 or 7 fields", "8"]),
        ("0 0 0 1 * MON", ["day-of-month", "day-of-week", "'1'", "'MON'"]),
        ("0 0 0 * * *", ["day-of-month", "day-of-week"]),
        ("0 0 0 ? * ?", ["?"]),
        ("61 * * * * ?", ["seconds", "'61'"]),
        ("0 60 * * * ?", ["minutes", "'60'"]),
        ("0 0 24 * * ?", ["hours", "'24'"]),
        ("0 0 0 ? * 8", ["day-of-week", "'8'"]),
        ("0 0 0 ? * 0", ["day-of-week", "'0'"]),
        ("0 0 0 32 * ?", ["day-of-month", "'32'"]),
        ("0 0 0 0 * ?", ["day-of-month", "'0'"]),
        ("0 0 0 1 13 ?", ["month", "'13'"]),
        ("0 0 0 1 0 ?", ["month", "'0'"]),
        ("0 0 0 1 FOO ?", ["month", "'FOO'"]),
        ("0 0 0 ? * MOO", ["day-of-week", "'MOO'"]),
        ("0 0 0 ? * MONDAY", ["day-of-week", "'MONDAY'"]),
        ("abc * * * * ?", ["seconds", "'abc'"]),
        ("0 x 0 * * ?", ["minutes", "'x'"]),
        ("0 0 1.5 * * ?", ["hours", "'1.5'"]),
        ("0 0 -1 * * ?", ["hours", "'-1'"]),
        ("0 0 1- * * ?", ["hours", "'1-'"]),
        ("0 0 1-2-3 * * ?", ["hours", "'1-2-3'"]),
        ("0 0 1,,2 * * ?", ["hours", "'1,,2'"]),
        ("0 0 1, * * ?", ["hours", "'1,'"]),
        ("0 0 ** * * ?", ["hours", "'**'"]),
        ("0 0 5/ * * ?", ["hours", "'5/'"]),
        ("0 0 */0 * * ?", ["hours", "'*/0'"]),
        ("*/60 * * * * ?", ["seconds", "'*/60'"]),
        ("0 0 ? * * ?", ["hours", "'?'"]),
        ("? 0 0 * * ?", ["seconds", "'?'"]),
        ("0 0 0 ?5 * ?", ["day-of-month", "'?5'"]),
        ("0 0 0 ? * 5#6", ["day-of-week", "'5#6'"]),
        ("0 0 0 ? * 5#0", ["day-of-week", "'5#0'"]),
        ("0 0 0 ? * 8#1", ["day-of-week", "'8#1'"]),
        ("0 0 0 ? * 5#", ["day-of-week", "'5#'"]),
        ("0 0 0 ? * 1#1,2#2", ["day-of-week", "'1#1,2#2'"]),
        ("0 0 0 ? * 8L", ["day-of-week", "'8L'"]),
        ("0 0 0 ? * 1,L", ["day-of-week", "'1,L'"]),
        ("0 0 0 ? * 2W", ["day-of-week", "'2W'"]),
        ("0 0 0 L-31 * ?", ["day-of-month", "'L-31'"]),
        ("0 0 0 L,15 * ?", ["day-of-month", "'L,15'"]),
        ("0 0 0 1W,15 * ?", ["day-of-month", "'1W,15'"]),
        ("0 0 0 32W * ?", ["day-of-month", "'32W'"]),
        ("0 0 0 W * ?", ["day-of-month", "'W'"]),
        ("0 0 0 1#2 * ?", ["day-of-month", "'1#2'"]),
        ("0 0 0 LX * ?", ["day-of-month", "'LX'"]),
        ("0 L 0 * * ?", ["minutes", "'L'"]),
        ("0 0 0 1 L ?", ["month", "'L'"]),
        ("0 0 0 ? * 1 1969", ["year", "'1969'"]),
        ("0 0 0 ? * 1 2100", ["year", "'2100'"]),
        ("0 0 0 ? * 1 2030-2020", ["year", "'2030-2020'"]),
        ("٣ * * * * ?", ["seconds"]),  # non-ASCII digits are not numbers here
    ],
)
def test_rejections(expr: str, needles: list[str]) -> None:
    with pytest.raises(CronError) as info:
        parse_cron(expr)
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert isinstance(info.value, ValueError)


def test_constructor_validates_too() -> None:
    with pytest.raises(CronError):
        CronExpression("* * * * *")


def test_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_cron(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 0 ? * *",
        "0 0 0 * * ?",
        "0 0 0 ? * 1-7",
        "0 0 0 ? * SUN-SAT",
        "0 0 0 ? * L",
        "0 0 0 ? * 7L",
        "0 0 0 ? * sat#5",
        "0 0 0 L * ?",
        "0 0 0 LW * ?",
        "0 0 0 L-30 * ?",
        "0 0 0 L-5W * ?",
        "0 0 0 31W * ?",
        "0 0 0 1 JAN-DEC ? 1970-2099",
        "59 59 23 31 12 ? 2099",
        "*/59 */59 */23 */31 */12 ?",
        "0\t0\t0  ? * *",
        "  0 0 0 ? * *  ",
    ],
)
def test_accepted(expr: str) -> None:
    assert str(parse_cron(expr)) == expr


# ---------------------------------------------------------------------------------------------
# Properties against brute-force oracles
# ---------------------------------------------------------------------------------------------

# A field strategy yields (text, set of values) pairs, built independently of the parser.


FieldDraw = tuple[str, frozenset[int]]  # (field text, the values it stands for)


def field_strategy(
    low: int, high: int, names: tuple[str, ...] = ()
) -> st.SearchStrategy[FieldDraw]:
    def name(v: int, use_names: bool) -> str:
        return names[v - low] if use_names and names else str(v)

    star = st.just(("*", frozenset(range(low, high + 1))))
    values = st.integers(low, high)
    single = st.builds(lambda v, n: (name(v, n), frozenset({v})), values, st.booleans())
    listed = st.lists(values, min_size=1, max_size=5, unique=True).flatmap(
        lambda vs: st.booleans().map(lambda n: (",".join(name(v, n) for v in vs), frozenset(vs)))
    )

    def make_range(a: int, b: int, n: bool) -> FieldDraw:
        a, b = min(a, b), max(a, b)
        return f"{name(a, n)}-{name(b, n)}", frozenset(range(a, b + 1))

    ranged = st.builds(make_range, values, values, st.booleans())

    def make_step(a: int, b: int, step: int, form: int) -> FieldDraw:
        a, b = min(a, b), max(a, b)
        if form == 0:
            return f"*/{step}", frozenset(range(low, high + 1, step))
        if form == 1:
            return f"{a}/{step}", frozenset(range(a, high + 1, step))
        return f"{a}-{b}/{step}", frozenset(range(a, b + 1, step))

    stepped = st.builds(make_step, values, values, st.integers(1, high - low), st.integers(0, 2))
    return st.one_of(star, single, listed, ranged, stepped)


MONTH_NAMES = tuple(calendar.month_abbr[1:])
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

seconds_f = field_strategy(0, 59)
minutes_f = field_strategy(0, 59)
hours_f = field_strategy(0, 23)
dom_f = field_strategy(1, 31)
months_f = field_strategy(1, 12, MONTH_NAMES)
dow_f = field_strategy(1, 7, DAY_NAMES)


def quartz_dow(d: datetime.date) -> int:
    """1 = Sunday ... 7 = Saturday, via isoweekday (1 = Monday ... 7 = Sunday)."""
    return d.isoweekday() % 7 + 1


# Day oracles: (text of the day-of-month field, text of the day-of-week field, predicate on a date)
DatePredicate = Callable[[datetime.date], bool]
DayOracle = tuple[str, str, DatePredicate]


def month_days(d: datetime.date) -> list[datetime.date]:
    return [d.replace(day=i) for i in range(1, calendar.monthrange(d.year, d.month)[1] + 1)]


def is_weekday(d: datetime.date) -> bool:
    return d.isoweekday() <= 5


def nearest_weekday_oracle(target_of: Callable[[datetime.date], int | None]) -> DatePredicate:
    """The weekday of the month with the smallest distance to the target day (no ties exist)."""

    def pred(d: datetime.date) -> bool:
        target = target_of(d)
        if target is None:
            return False
        weekdays = [x for x in month_days(d) if is_weekday(x)]
        best = min(weekdays, key=lambda x: abs(x.day - target))
        return d == best

    return pred


def last_day(d: datetime.date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


@st.composite
def day_rule(draw: st.DrawFn) -> DayOracle:
    kinds = ["dom", "dow", "L", "LW", "L-n", "L-nW", "nW", "nL", "n#k", "dowL"]
    kind = draw(st.sampled_from(kinds))
    if kind == "dom":
        text, values = draw(dom_f)
        return text, "?", lambda d: d.day in values
    if kind == "dow":
        text, values = draw(dow_f)
        return "?", text, lambda d: quartz_dow(d) in values
    if kind == "L":
        return "L", "?", lambda d: d.day == last_day(d)
    if kind == "LW":
        return "LW", "?", lambda d: d == max(x for x in month_days(d) if is_weekday(x))
    if kind == "L-n":
        n = draw(st.integers(0, 30))
        return f"L-{n}", "?", lambda d: d.day == last_day(d) - n
    if kind == "L-nW":
        n = draw(st.integers(0, 30))

        def target(d: datetime.date) -> int | None:
            t = last_day(d) - n
            return t if t >= 1 else None

        return f"L-{n}W", "?", nearest_weekday_oracle(target)
    if kind == "nW":
        n = draw(st.integers(1, 31))
        return f"{n}W", "?", nearest_weekday_oracle(lambda d: n if n <= last_day(d) else None)
    if kind == "dowL":
        return "?", "L", lambda d: quartz_dow(d) == 7
    dow = draw(st.integers(1, 7))
    dow_text = DAY_NAMES[dow - 1] if draw(st.booleans()) else str(dow)
    if kind == "nL":
        return "?", f"{dow_text}L", lambda d: quartz_dow(d) == dow and d.day + 7 > last_day(d)
    k = draw(st.integers(1, 5))
    return "?", f"{dow_text}#{k}", lambda d: quartz_dow(d) == dow and (d.day - 1) // 7 + 1 == k


start_times = st.datetimes(min_value=D(1999, 1, 1), max_value=D(2095, 12, 31, 23, 59, 59))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sec=seconds_f,
    minute=minutes_f,
    hour=st.one_of(st.just(("*", frozenset(range(24)))), hours_f),
    day=st.one_of(
        st.just(("*", "?", lambda d: True)),
        st.just(("?", "*", lambda d: True)),
        day_rule(),
    ),
    after=start_times,
)
def test_property_next_fire_time_is_the_first_match_seconds_brute_force(
    sec: FieldDraw,
    minute: FieldDraw,
    hour: FieldDraw,
    day: DayOracle,
    after: D,
) -> None:
    dom_text, dow_text, day_ok = day
    text = f"{sec[0]} {minute[0]} {hour[0]} {dom_text} * {dow_text}"
    expr = parse_cron(text)

    def oracle(t: D) -> bool:
        return (
            t.second in sec[1]
            and t.minute in minute[1]
            and t.hour in hour[1]
            and day_ok(t.date())
        )

    result = expr.next_fire_time(after)
    window_end = after.replace(microsecond=0) + datetime.timedelta(hours=3)
    t = after.replace(microsecond=0) + datetime.timedelta(seconds=1)
    limit = window_end if result is None else min(result, window_end)
    # no time strictly between `after` and the result (within the window) matches
    while t < limit:
        assert not oracle(t), (text, after, t, result)
        t += datetime.timedelta(seconds=1)
    if result is not None:
        assert result > after
        assert result.microsecond == 0
        assert expr.matches(result)
        assert oracle(result), (text, after, result)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sec=st.lists(st.integers(0, 59), min_size=1, max_size=2, unique=True),
    minute=st.lists(st.integers(0, 59), min_size=1, max_size=2, unique=True),
    hour=st.lists(st.integers(0, 23), min_size=1, max_size=2, unique=True),
    day=day_rule(),
    month=months_f,
    years=st.one_of(
        st.none(), st.lists(st.integers(2000, 2040), min_size=1, max_size=3, unique=True)
    ),
    after=st.datetimes(min_value=D(1999, 1, 1), max_value=D(2040, 12, 31, 23, 59, 59)),
)
def test_property_next_fire_time_is_the_first_match_day_brute_force(
    sec: list[int],
    minute: list[int],
    hour: list[int],
    day: DayOracle,
    month: FieldDraw,
    years: list[int] | None,
    after: D,
) -> None:
    dom_text, dow_text, day_ok = day
    year_text = "" if years is None else " " + ",".join(map(str, years))
    time_text = " ".join(",".join(map(str, values)) for values in (sec, minute, hour))
    text = f"{time_text} {dom_text} {month[0]} {dow_text}{year_text}"
    expr = parse_cron(text)
    times_of_day = sorted(
        datetime.time(h, m, s) for h, m, s in itertools.product(hour, minute, sec)
    )

    def date_ok(d: datetime.date) -> bool:
        return (years is None or d.year in years) and d.month in month[1] and day_ok(d)

    # brute force, one day at a time, over six years (or up to the last listed year)
    last_year = after.year + 6 if years is None else max(years)
    last = datetime.date(last_year, 12, 31)
    expected: D | None = None
    d = after.date()
    while d <= last and expected is None:
        if date_ok(d):
            for tod in times_of_day:
                candidate = D.combine(d, tod)
                if candidate > after:
                    expected = candidate
                    break
        d += datetime.timedelta(days=1)

    result = expr.next_fire_time(after)
    if expected is not None:
        assert result == expected, (text, after)
    elif years is not None:
        assert result is None, (text, after)
    else:  # nothing within six years: the answer, if any, lies beyond
        assert result is None or result.date() > last, (text, after, result)
        if result is not None:
            assert date_ok(result.date()) and result.time() in times_of_day


@settings(max_examples=50, deadline=None)
@given(day=day_rule(), after=start_times)
def test_property_fire_times_increase_and_match(day: DayOracle, after: D) -> None:
    dom_text, dow_text, day_ok = day
    expr = parse_cron(f"0 0 12 {dom_text} * {dow_text}")
    times = expr.fire_times(after, 5)
    assert all(a < b for a, b in itertools.pairwise(times))
    for t in times:
        assert t > after and (t.hour, t.minute, t.second) == (12, 0, 0) and day_ok(t.date())


@settings(max_examples=100, deadline=None)
@given(sec=seconds_f, minute=minutes_f, hour=hours_f, dom=dom_f, month=months_f)
def test_property_field_texts_parse(
    sec: FieldDraw,
    minute: FieldDraw,
    hour: FieldDraw,
    dom: FieldDraw,
    month: FieldDraw,
) -> None:
    # every generated field text is accepted, and its first fire time uses the smallest values
    expr = parse_cron(f"{sec[0]} {minute[0]} {hour[0]} {dom[0]} {month[0]} ?")
    result = expr.next_fire_time(D(2000, 1, 1) - datetime.timedelta(seconds=1))
    if result is not None and 1 in dom[1] and 1 in month[1]:
        assert result == D(2000, 1, 1, min(hour[1]), min(minute[1]), min(sec[1]))
