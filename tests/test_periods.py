from datetime import UTC, datetime

import pytest

from proxy import periods
from proxy.periods import Period, PeriodError

# A Wednesday: its ISO week began on Monday 2026-11-23.
NOW = datetime(2026, 11, 25, 10, 30, 15, 250000, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_stamp_is_the_record_format_and_sorts_as_text() -> None:
    assert periods.stamp(NOW) == "2026-11-25T10:30:15.250000Z"
    assert periods.stamp(at("2026-11-25T09:00:00")) < periods.stamp(NOW)
    assert periods.from_stamp("2026-11-25T10:30:15.250000Z") == NOW


def test_last_hours_ends_now() -> None:
    assert periods.last_hours(24, NOW) == Period(at("2026-11-24T10:30:15.250000"), NOW)
    assert periods.last_hours(0.5, NOW).start == at("2026-11-25T10:00:15.250000")
    with pytest.raises(PeriodError, match="--since 0"):
        periods.last_hours(0, NOW)


def test_last_hours_past_the_year_1_is_a_period_error() -> None:
    for hours in (1e9, float("inf")):
        with pytest.raises(PeriodError, match="reaches back before the year 1; use --all"):
            periods.last_hours(hours, NOW)


def test_stamps_of_early_years_have_four_digits_and_sort_before_later_ones() -> None:
    assert periods.stamp(at("0086-01-02T03:04:05")) == "0086-01-02T03:04:05.000000Z"
    start = periods.last_hours(17_000_000, NOW).start_stamp  # about 1,940 years back
    assert start is not None and start.startswith("0087-") and start < periods.stamp(NOW)


def test_calendar_periods_are_utc_days_weeks_and_months() -> None:
    assert periods.today(NOW) == Period(at("2026-11-25T00:00:00"), NOW)
    assert periods.yesterday(NOW) == Period(at("2026-11-24T00:00:00"), at("2026-11-25T00:00:00"))
    assert periods.this_week(NOW) == Period(at("2026-11-23T00:00:00"), NOW)
    assert periods.this_month(NOW) == Period(at("2026-11-01T00:00:00"), NOW)
    assert periods.month_end(NOW) == at("2026-12-01T00:00:00")
    assert periods.month_end(at("2026-12-31T23:59:59")) == at("2027-01-01T00:00:00")


def test_week_starts_on_monday_even_on_monday_and_sunday() -> None:
    monday = at("2026-11-23T00:00:00")
    assert periods.this_week(monday).start == monday
    assert periods.this_week(at("2026-11-29T23:59:59")).start == monday
    assert periods.this_week(at("2026-11-30T00:00:00")).start == at("2026-11-30T00:00:00")


def test_a_time_in_another_zone_is_converted_to_utc() -> None:
    local = datetime.fromisoformat("2026-11-25T01:30:00+02:00")
    assert periods.today(local).start == at("2026-11-24T00:00:00")


def test_between_dates_includes_the_whole_end_day() -> None:
    january = periods.between("2024-01-01", "2024-01-31")
    assert january == Period(at("2024-01-01T00:00:00"), at("2024-02-01T00:00:00"))
    assert january.start_stamp == "2024-01-01T00:00:00.000000Z"
    assert january.end_stamp == "2024-02-01T00:00:00.000000Z"


def test_between_times_and_open_ends() -> None:
    assert periods.between("2024-01-01T10:00:00Z", "2024-01-01 12:00") == Period(
        at("2024-01-01T10:00:00"), at("2024-01-01T12:00:00")
    )
    assert periods.between("2024-01-01T12:00:00+02:00", None) == Period(at("2024-01-01T10:00:00"), None)
    assert periods.between(None, "2024-01-01") == Period(None, at("2024-01-02T00:00:00"))


def test_bad_dates_name_the_option() -> None:
    with pytest.raises(PeriodError, match=r"--start 'Jan 1': not a date or time"):
        periods.between("Jan 1", None)
    with pytest.raises(PeriodError, match="--start 2024-02-01 is not before --end 2024-01-31"):
        periods.between("2024-02-01", "2024-01-31")


@pytest.mark.parametrize(
    ("start", "end", "option"),
    [
        (None, "9999-12-31", "--end"),  # through the end of that day: past the year 9999
        ("9999-12-31T23:00:00-05:00", None, "--start"),
        ("0001-01-01T00:00:00+05:00", None, "--start"),
    ],
)
def test_times_past_the_calendars_ends_name_the_option(
    start: str | None, end: str | None, option: str
) -> None:
    with pytest.raises(PeriodError, match=f"^{option} '.*': past the calendar's ends"):
        periods.between(start, end)
