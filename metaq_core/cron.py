"""Quartz cron expressions, as MetaQ's ``deleteWhen`` uses them: parse them and compute fire times.

This module only parses an expression (with the semantics of ``org.quartz.CronExpression``) and
answers "when is the next fire time after *t*?". It must not schedule anything, start threads or
timers, sleep, read the clock or do any I/O: callers pass the time in and decide what to do with
the answer. Standard library only.

Syntax (six or seven whitespace-separated fields, names case-insensitive)::

    seconds  minutes  hours  day-of-month  month       day-of-week       [year]
    0-59     0-59     0-23   1-31          1-12         1-7 (1 = SUN)     1970-2099
                                           or JAN-DEC   or SUN-SAT

* ``*`` every value; ``a,b,c`` lists; ``a-b`` ranges (wrapping when ``a > b``, e.g. ``FRI-MON``
  or hours ``22-2``, except in the year field); ``a/n``, ``*/n``, ``/n``, ``a-b/n`` steps
  (``a/n`` runs from ``a`` to the field's maximum).
* ``?`` "no specific value": day-of-month or day-of-week only, and exactly one of the two must be
  ``?``.
* day-of-month: ``L`` last day, ``L-n`` n-th day before the last (n <= 30), ``LW`` last weekday,
  ``L-nW`` weekday nearest to ``L-n``, ``nW`` weekday (Mon-Fri) nearest to day ``n`` without
  leaving the month.
* day-of-week: ``L`` alone is 7 (Saturday); ``nL`` / ``FRIL`` last such weekday of the month;
  ``n#k`` / ``FRI#k`` k-th (1-5) such weekday of the month.
* ``L``, ``W`` and ``#`` forms must be the only item of their field (Quartz does not implement
  them inside lists).
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import datetime
import re
from collections.abc import Iterable

from metaq_core.errors import MetaqError

__all__ = [
    "DEFAULT_DELETE_WHEN",
    "MAX_SEARCH_YEAR",
    "MAX_YEAR",
    "MIN_YEAR",
    "CronError",
    "CronExpression",
    "parse_cron",
]

#: MetaQ's default ``deleteWhen``: run the deletion check at 06:00:00 and 18:00:00 every day.
DEFAULT_DELETE_WHEN = "0 0 6,18 * * ?"

#: Bounds of an explicit year field (as in Quartz 1.x).
MIN_YEAR = 1970
MAX_YEAR = 2099

#: Without a year field (or with ``*``), the search for a fire time gives up after this year.
MAX_SEARCH_YEAR = 2299


class CronError(MetaqError, ValueError):
    """A cron expression that is not valid Quartz syntax (the message names field and token)."""

    status = 400


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------

_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW, _YEAR = range(7)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    max_step: int
    names: tuple[str, ...] = ()  # names[i] is the value low + i

    def value_of(self, token: str) -> int:
        """The number a single value token stands for (a decimal number or a 3-letter name)."""
        if _NUMBER.fullmatch(token):
            value = int(token)
        elif self.names and token in self.names:
            value = self.low + self.names.index(token)
        else:
            if self.names:
                expected = (
                    f"a number {self.low}-{self.high} or a name {self.names[0]}-{self.names[-1]}"
                )
            else:
                expected = f"a number {self.low}-{self.high}"
            raise _Bad(f"{token!r} is not {expected}")
        if not self.low <= value <= self.high:
            raise _Bad(f"value {token} out of range {self.low}-{self.high}")
        return value


_FIELDS = (
    _Field("seconds", 0, 59, 59),
    _Field("minutes", 0, 59, 59),
    _Field("hours", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field(
        "month",
        1,
        12,
        12,
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    ),
    _Field("day-of-week", 1, 7, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
    _Field("year", MIN_YEAR, MAX_YEAR, MAX_YEAR - MIN_YEAR),
)

_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_VALUE = r"(?:[0-9]+|[A-Z]{3})"
# a | a-b | * ; optionally followed by /n.  Also "/n" alone (Quartz reads it as "*/n").
_ITEM = re.compile(
    rf"(?:(?P<star>\*)|(?P<start>{_VALUE})(?:-(?P<stop>{_VALUE}))?)?(?:/(?P<step>[0-9]+))?",
    re.ASCII,
)
_DOM_LAST = re.compile(r"L(?:-(?P<offset>[0-9]+))?(?P<w>W)?", re.ASCII)
_DOM_WEEKDAY = re.compile(r"(?P<day>[0-9]+)W", re.ASCII)
_DOW_LAST = re.compile(rf"(?P<day>{_VALUE})L", re.ASCII)
_DOW_NTH = re.compile(rf"(?P<day>{_VALUE})#(?P<nth>[0-9]+)", re.ASCII)


class _Bad(Exception):
    """A problem in one field; :func:`_parse` makes it a :class:`CronError` naming the field."""


def _parse_item(field: _Field, item: str) -> set[int]:
    """Values of one comma-separated item of a plain (set-valued) field."""
    m = _ITEM.fullmatch(item)
    if not item or m is None:
        raise _Bad(f"malformed item {item!r}")
    star, start, stop, step = m.group("star", "start", "stop", "step")
    if star is None and start is None and step is None:
        raise _Bad(f"malformed item {item!r}")
    if step is not None:
        incr = int(step)
        if incr < 1:
            raise _Bad(f"step must be at least 1 in {item!r}")
        if incr > field.max_step:
            raise _Bad(f"step {incr} larger than {field.max_step} in {item!r}")
    else:
        incr = 1
    if start is None:  # "*", "*/n" or "/n"
        first, last = field.low, field.high
    else:
        first = field.value_of(start)
        if stop is not None:
            last = field.value_of(stop)
        elif step is not None:  # "a/n": from a up to the maximum
            last = field.high
        else:
            last = first
    span = field.high - field.low + 1
    if last < first:
        if field is _FIELDS[_YEAR]:
            raise _Bad(f"start year after stop year in {item!r}")
        last += span  # Quartz wraps ranges such as FRI-MON or 22-2 around the field
    return {(v - field.low) % span + field.low for v in range(first, last + 1, incr)}


def _parse_set(field: _Field, token: str) -> frozenset[int]:
    values: set[int] = set()
    for item in token.split(","):
        values |= _parse_item(field, item)
    return frozenset(values)


# Day rules: how the day-of-month / day-of-week pair selects the days of a given month.


@dataclasses.dataclass(frozen=True, slots=True)
class _DaysOfMonth:
    days: frozenset[int]

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return sorted(d for d in self.days if d <= last)


def _nearest_weekday(year: int, month: int, day: int, last: int) -> int:
    """Quartz's ``W`` rule: the Mon-Fri day nearest to ``day``, staying inside the month."""
    weekday = calendar.weekday(year, month, day)  # Monday == 0
    if weekday == 5:  # Saturday: Friday before, or Monday after when the 1st
        return day + 2 if day == 1 else day - 1
    if weekday == 6:  # Sunday: Monday after, or Friday before when the last day
        return day - 2 if day == last else day + 1
    return day


@dataclasses.dataclass(frozen=True, slots=True)
class _LastDayOfMonth:
    offset: int  # L-offset
    weekday: bool  # LW / L-nW

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        day = last - self.offset
        if day < 1:
            return []
        if self.weekday:
            day = _nearest_weekday(year, month, day, last)
        return [day]


@dataclasses.dataclass(frozen=True, slots=True)
class _NearestWeekday:
    day: int

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        if self.day > last:
            return []
        return [_nearest_weekday(year, month, self.day, last)]


def _quartz_dow(year: int, month: int, day: int) -> int:
    """Quartz day of week of a date: 1 = Sunday ... 7 = Saturday."""
    return (calendar.weekday(year, month, day) + 1) % 7 + 1


@dataclasses.dataclass(frozen=True, slots=True)
class _DaysOfWeek:
    days: frozenset[int]  # Quartz numbering

    def days_in(self, year: int, month: int) -> list[int]:
        first = _quartz_dow(year, month, 1)
        last = calendar.monthrange(year, month)[1]
        return [d for d in range(1, last + 1) if (first + d - 2) % 7 + 1 in self.days]


@dataclasses.dataclass(frozen=True, slots=True)
class _NthDayOfWeek:
    dow: int
    nth: int  # 1..5

    def days_in(self, year: int, month: int) -> list[int]:
        first = _quartz_dow(year, month, 1)
        day = 1 + (self.dow - first) % 7 + 7 * (self.nth - 1)
        return [day] if day <= calendar.monthrange(year, month)[1] else []


@dataclasses.dataclass(frozen=True, slots=True)
class _LastDayOfWeek:
    dow: int

    def days_in(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return [last - (_quartz_dow(year, month, last) - self.dow) % 7]


_DayRule = (
    _DaysOfMonth | _LastDayOfMonth | _NearestWeekday | _DaysOfWeek | _NthDayOfWeek | _LastDayOfWeek
)


def _parse_day_of_month(token: str) -> _DayRule:
    field = _FIELDS[_DOM]
    if "L" in token or "W" in token:
        if "," in token:
            raise _Bad("'L' and 'W' cannot be combined with other days")
        m = _DOM_LAST.fullmatch(token)
        if m is not None:
            offset = int(m.group("offset")) if m.group("offset") is not None else 0
            if offset > 30:
                raise _Bad("offset from the last day must be at most 30")
            return _LastDayOfMonth(offset, m.group("w") is not None)
        m = _DOM_WEEKDAY.fullmatch(token)
        if m is not None:
            return _NearestWeekday(field.value_of(m.group("day")))
        raise _Bad("malformed 'L' / 'W' item")
    return _DaysOfMonth(_parse_set(field, token))


def _parse_day_of_week(token: str) -> _DayRule:
    field = _FIELDS[_DOW]
    if token == "L":
        return _DaysOfWeek(frozenset({7}))
    if "#" in token:
        m = _DOW_NTH.fullmatch(token)
        if m is None:
            raise _Bad("'#' must be written DAY#N, alone in the field")
        nth = int(m.group("nth"))
        if not 1 <= nth <= 5:
            raise _Bad(f"the number after '#' must be 1-5, not {m.group('nth')}")
        return _NthDayOfWeek(field.value_of(m.group("day")), nth)
    if "L" in token:  # no day name contains an L
        m = _DOW_LAST.fullmatch(token)
        if m is None:
            raise _Bad("'L' must be written alone or as DAYL, alone in the field")
        return _LastDayOfWeek(field.value_of(m.group("day")))
    return _DaysOfWeek(_parse_set(field, token))


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    days: _DayRule
    years: tuple[int, ...] | None  # None: every year


def _parse(text: str) -> _Spec:
    if not isinstance(text, str):
        raise TypeError(f"a cron expression must be a str, not {type(text).__name__}")
    tokens = text.upper().split()
    if not tokens:
        raise CronError("empty cron expression")
    if len(tokens) not in (6, 7):
        raise CronError(
            f"a cron expression has 6 or 7 fields (seconds minutes hours day-of-month month "
            f"day-of-week [year]), got {len(tokens)} in {text!r}"
        )
    original = text.split()
    parsed: list[object] = []
    for i, token in enumerate(tokens):
        field = _FIELDS[i]
        try:
            if token == "?" and i in (_DOM, _DOW):
                parsed.append(None)
            elif "?" in token:
                if i in (_DOM, _DOW):
                    raise _Bad("'?' must be alone in its field")
                raise _Bad("'?' is only allowed in the day-of-month and day-of-week fields")
            elif i == _DOM:
                parsed.append(_parse_day_of_month(token))
            elif i == _DOW:
                parsed.append(_parse_day_of_week(token))
            elif "#" in token or "W" in token or ("L" in token and "JUL" not in token):
                raise _Bad("'L', 'W' and '#' are only allowed in the day fields")
            elif i == _YEAR and token == "*":
                parsed.append(None)
            else:
                parsed.append(tuple(sorted(_parse_set(field, token))))
        except _Bad as exc:
            message = f"invalid {field.name} field {original[i]!r} in {text!r}: {exc}"
            raise CronError(message) from None
    dom, dow = parsed[_DOM], parsed[_DOW]
    if dom is None and dow is None:
        raise CronError(f"'?' can only be specified for day-of-month -or- day-of-week, in {text!r}")
    if dom is not None and dow is not None:
        raise CronError(
            f"specifying both a day-of-month ({original[_DOM]!r}) and a day-of-week "
            f"({original[_DOW]!r}) is not supported: one of them must be '?', in {text!r}"
        )
    return _Spec(
        seconds=parsed[_SECOND],  # type: ignore[arg-type]
        minutes=parsed[_MINUTE],  # type: ignore[arg-type]
        hours=parsed[_HOUR],  # type: ignore[arg-type]
        months=parsed[_MONTH],  # type: ignore[arg-type]
        days=dom if dow is None else dow,  # type: ignore[arg-type]
        years=parsed[_YEAR] if len(parsed) == 7 else None,  # type: ignore[arg-type]
    )


_Fields6 = tuple[int, int, int, int, int, int]  # year, month, day, hour, minute, second


def _at_or_after(values: tuple[int, ...] | list[int], low: int) -> Iterable[int]:
    """The sorted ``values`` that are ``>= low``."""
    return values[bisect.bisect_left(values, low) :]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CronExpression:
    """A parsed Quartz cron expression. ``CronExpression(text)`` parses and validates ``text``.

    Equality and hashing compare the original text; ``str()`` gives it back unchanged.
    """

    expression: str
    _spec: _Spec = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_spec", _parse(self.expression))

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``text``; raise :class:`CronError` if it is not a valid Quartz expression."""
        return cls(text)

    def __str__(self) -> str:
        return self.expression

    def matches(self, when: datetime.datetime) -> bool:
        """Whether the wall-clock fields of ``when`` (microseconds ignored) are a fire time."""
        spec = self._spec
        return (
            when.second in spec.seconds
            and when.minute in spec.minutes
            and when.hour in spec.hours
            and when.month in spec.months
            and (spec.years is None or when.year in spec.years)
            and when.year <= (MAX_SEARCH_YEAR if spec.years is None else MAX_YEAR)
            and when.day in spec.days.days_in(when.year, when.month)
        )

    def next_fire_time(self, after: datetime.datetime) -> datetime.datetime | None:
        """The first fire time strictly after ``after``, or ``None`` if there is none.

        Works at second resolution (the microseconds of ``after`` are dropped). The search runs
        on the wall-clock fields of ``after`` and the result carries ``after``'s ``tzinfo``
        (naive in, naive out). Without a year field it stops after :data:`MAX_SEARCH_YEAR`.
        """
        if not isinstance(after, datetime.datetime):
            raise TypeError(f"after must be a datetime.datetime, not {type(after).__name__}")
        try:
            wall = after.replace(microsecond=0, tzinfo=None, fold=0)
            start = wall + datetime.timedelta(seconds=1)
        except OverflowError:
            return None
        found = self._first_at_or_after(start)
        if found is None:
            return None
        return datetime.datetime(*found, tzinfo=after.tzinfo)

    def fire_times(self, after: datetime.datetime, count: int) -> list[datetime.datetime]:
        """The next ``count`` fire times after ``after`` (fewer if the expression runs out)."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        times: list[datetime.datetime] = []
        when: datetime.datetime | None = after
        while len(times) < count:
            when = self.next_fire_time(when)
            if when is None:
                break
            times.append(when)
        return times

    # -- search --------------------------------------------------------------------------------

    def _first_at_or_after(self, start: datetime.datetime) -> _Fields6 | None:
        spec = self._spec
        y0, mo0, d0 = start.year, start.month, start.day
        years: Iterable[int]
        if spec.years is None:
            years = range(y0, MAX_SEARCH_YEAR + 1)
        else:
            years = _at_or_after(spec.years, y0)
        for year in years:
            for month in _at_or_after(spec.months, mo0 if year == y0 else 1):
                first_month = year == y0 and month == mo0
                for day in _at_or_after(spec.days.days_in(year, month), d0 if first_month else 1):
                    if first_month and day == d0:
                        time = self._time_at_or_after(start.hour, start.minute, start.second)
                        if time is None:
                            continue  # nothing left on the start day
                        return (year, month, day, *time)
                    return (year, month, day, spec.hours[0], spec.minutes[0], spec.seconds[0])
        return None

    def _time_at_or_after(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        spec = self._spec
        for h in _at_or_after(spec.hours, hour):
            if h > hour:
                return (h, spec.minutes[0], spec.seconds[0])
            for m in _at_or_after(spec.minutes, minute):
                if m > minute:
                    return (h, m, spec.seconds[0])
                for s in _at_or_after(spec.seconds, second):
                    return (h, m, s)
        return None


def parse_cron(text: str) -> CronExpression:
    """Parse a Quartz cron expression (same as :meth:`CronExpression.parse`)."""
    return CronExpression.parse(text)
