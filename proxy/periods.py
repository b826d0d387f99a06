"""Report periods: the UTC time ranges of --since, --today, --yesterday, --week, --month, --all and
--start/--end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta


class PeriodError(ValueError):
    """A period that cannot be read, its message naming the option and the value."""


@dataclass(frozen=True)
class Period:
    """A half-open UTC range [start, end); None means unbounded on that side."""

    start: datetime | None = None
    end: datetime | None = None

    @property
    def start_stamp(self) -> str | None:
        return None if self.start is None else stamp(self.start)

    @property
    def end_stamp(self) -> str | None:
        return None if self.end is None else stamp(self.end)


ALL_TIME = Period()
LAST_MOMENT = datetime.max.replace(tzinfo=UTC)  # 9999-12-31T23:59:59.999999Z


def stamp(moment: datetime) -> str:
    """The record timestamp format; records' timestamps compare as text in time order."""
    moment = moment.astimezone(UTC)
    # The year padded by hand: strftime's %Y gives "86" for the year 86, which sorts after "2026".
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"


def from_stamp(text: str) -> datetime:
    """Read a timestamp of the record format (or any ISO-8601 form) as an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def last_hours(hours: float, now: datetime) -> Period:
    if not hours > 0:
        raise PeriodError(f"--since {hours}: give a positive number of hours, e.g. --since 24")
    now = now.astimezone(UTC)
    try:
        return Period(now - timedelta(hours=hours), now)
    except OverflowError:
        raise PeriodError(
            f"--since {hours:g}: reaches back before the year 1; use --all for every record"
        ) from None


def today(now: datetime) -> Period:
    now = now.astimezone(UTC)
    return Period(midnight(now.date()), now)


def yesterday(now: datetime) -> Period:
    start = midnight(now.astimezone(UTC).date())
    return Period(start - timedelta(days=1), start)


def this_week(now: datetime) -> Period:
    """The ISO week so far: Monday 00:00 UTC to now."""
    now = now.astimezone(UTC)
    return Period(midnight(now.date() - timedelta(days=now.weekday())), now)


def this_month(now: datetime) -> Period:
    now = now.astimezone(UTC)
    return Period(midnight(now.date().replace(day=1)), now)


def month_end(now: datetime) -> datetime:
    """The first instant of the next UTC month."""
    first = now.astimezone(UTC).date().replace(day=1)
    return midnight((first + timedelta(days=32)).replace(day=1))


def between(start: str | None, end: str | None) -> Period:
    """--start/--end: a date or an ISO time (UTC unless it says otherwise); an end date includes its day."""
    low = None if start is None else parse_moment(start, "--start", end_of_day=False)
    high = None if end is None else parse_moment(end, "--end", end_of_day=True)
    if low is not None and high is not None and low >= high:
        raise PeriodError(f"--start {start} is not before --end {end}; swap them")
    return Period(low, high)


def parse_moment(text: str, option: str, *, end_of_day: bool) -> datetime:
    try:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            return from_stamp(text.replace(" ", "T", 1))
        return midnight(day) + timedelta(days=1 if end_of_day else 0)
    except ValueError:
        raise PeriodError(
            f"{option} {text!r}: not a date or time; use e.g. 2024-01-31 or 2024-01-31T18:00:00Z"
        ) from None
    except OverflowError:  # the end of 9999-12-31, or a time near the calendar's ends in another zone
        raise PeriodError(
            f"{option} {text!r}: past the calendar's ends (the years 1 and 9999 in UTC);"
            f" leave {option} out instead"
        ) from None
