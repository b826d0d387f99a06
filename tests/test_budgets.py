from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from cost_records import forwarded, record, unpriced, write

from proxy import periods
from proxy.analysis import Filters, Summary, summarise
from proxy.budgets import budget_statuses, exit_code, project, tightest, today_tally
from proxy.config import Budgets
from proxy.money import Exchange

NOW = datetime(2026, 11, 11, 12, 0, tzinfo=UTC)  # day 11 of a 30-day month, noon
BUDGETS = Budgets(daily=Decimal(10), monthly=Decimal(200), warn_at=Decimal("0.5"), critical_at=Decimal("0.8"))
USD = Exchange()


def month_of(tmp_path: Path, today_cost: float, earlier_cost: float) -> tuple[Path, Summary]:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-10-31T23:00:00.000000Z", total_cost=1000.0),  # last month
            record("2026-11-02T10:00:00.000000Z", total_cost=earlier_cost),
            record("2026-11-11T00:00:00.000000Z", total_cost=today_cost),
        ],
    )
    return path, summarise([path], Filters(periods.this_month(NOW)))


@pytest.mark.parametrize(
    ("today_cost", "earlier", "levels", "code"),
    [
        (4.99, 0.0, ["ok", "ok"], 0),
        (5.0, 0.0, ["warning", "ok"], 1),  # warn_at is reached at exactly 50%
        (8.0, 0.0, ["critical", "ok"], 2),
        (1.0, 99.0, ["ok", "warning"], 1),
        (1.0, 159.0, ["ok", "critical"], 2),
        (12.0, 100.0, ["critical", "warning"], 2),
    ],
)
def test_levels_and_exit_codes(
    tmp_path: Path, today_cost: float, earlier: float, levels: list[str], code: int
) -> None:
    _, month = month_of(tmp_path, today_cost, earlier)
    statuses = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    assert [status.level for status in statuses] == levels
    assert exit_code(statuses) == code


def test_a_level_is_reached_at_exactly_its_threshold_whatever_the_binary_digits(tmp_path: Path) -> None:
    """0.3 of a 0.6 budget is 50.0% (its float sums as 0.29999...); $8 of $10 is 80.0% in USD and in CNY
    (a rate re-based for --currency is 1/0.14, rounded): the levels are warning and critical."""
    path = write(tmp_path / "c.jsonl", [record("2026-11-11T00:00:00.000000Z", total_cost=0.3)])
    month = summarise([path], Filters(periods.this_month(NOW)))
    half = Budgets(daily=Decimal("0.6"), monthly=None, warn_at=Decimal("0.5"), critical_at=Decimal("0.8"))
    assert [status.level for status in budget_statuses(half, "USD", USD, month, NOW)] == ["warning"]

    path, _ = month_of(tmp_path, today_cost=8.0, earlier_cost=0.0)
    usd = Exchange("USD", {"CNY": Decimal("0.14")})
    for exchange in (usd, usd.to("CNY")):
        month = summarise([path], Filters(periods.this_month(NOW)), exchange)
        assert [status.level for status in budget_statuses(BUDGETS, "USD", exchange, month, NOW)] == [
            "critical",
            "ok",
        ], exchange.currency


def test_spend_remaining_and_tightest(tmp_path: Path) -> None:
    _, month = month_of(tmp_path, 6.0, 40.0)
    daily, monthly = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    assert (daily.name, round(daily.spent, 9), round(daily.remaining, 9)) == ("daily", Decimal(6), Decimal(4))
    assert round(daily.fraction, 9) == Decimal("0.6")
    assert (daily.start, daily.end) == (
        datetime(2026, 11, 11, tzinfo=UTC),
        datetime(2026, 11, 12, tzinfo=UTC),
    )
    assert (round(monthly.spent, 9), round(monthly.remaining, 9)) == (Decimal(46), Decimal(154))
    assert monthly.end == datetime(2026, 12, 1, tzinfo=UTC)
    assert tightest([daily, monthly]) is daily
    assert today_tally(month, NOW).cost == daily.spent


def test_only_configured_budgets_and_budgets_in_another_reporting_currency(tmp_path: Path) -> None:
    _, month = month_of(tmp_path, 7.0, 0.0)
    monthly_only = Budgets(
        daily=None, monthly=Decimal(200), warn_at=Decimal("0.5"), critical_at=Decimal("0.8")
    )
    assert [s.name for s in budget_statuses(monthly_only, "USD", USD, month, NOW)] == ["monthly"]
    in_cny = Exchange("USD", {"CNY": Decimal("0.14")}).to("CNY")
    path, _ = month_of(tmp_path, 7.0, 0.0)
    month_cny = summarise([path], Filters(periods.this_month(NOW)), in_cny)
    daily = budget_statuses(BUDGETS, "USD", in_cny, month_cny, NOW)[0]
    assert round(daily.limit, 6) == round(Decimal(10) / Decimal("0.14"), 6)
    assert round(daily.fraction, 9) == Decimal("0.7")


def test_projection_to_month_end(tmp_path: Path) -> None:
    path, month = month_of(tmp_path, 6.0, 40.0)
    statuses = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    week = summarise([path], Filters(periods.between("2026-11-05", "2026-11-11")))  # 7 days, $6
    projection = project(week, month, statuses, NOW)
    assert projection.days == 7
    assert round(projection.daily_average, 9) == round(Decimal(6) / 7, 9)
    assert round(projection.month_to_date, 9) == 46
    assert projection.days_left_in_month == Decimal("19.5")
    assert round(projection.projected_month, 6) == round(46 + Decimal(6) / 7 * Decimal("19.5"), 6)
    # $4 left today lasts 4.7 days and $154 left this month 180 days: both last until they reset.
    assert projection.runs_out_in_days == {"daily": None, "monthly": None}


def test_projection_at_a_rate_that_spends_the_budgets(tmp_path: Path) -> None:
    _, month = month_of(tmp_path, 6.0, 40.0)
    statuses = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    fast = write(tmp_path / "fast.jsonl", [record("2026-11-06T00:00:00.000000Z", total_cost=70.0)])
    week = summarise([fast], Filters(periods.between("2026-11-05", "2026-11-11")))  # $10 a day
    projection = project(week, month, statuses, NOW)
    assert round(projection.projected_month, 9) == 46 + 195
    # $4 left of today at $10 a day: 0.4 days, before midnight (0.5 days away); $154 in 15.4 days.
    assert {name: round(days or 0, 9) for name, days in projection.runs_out_in_days.items()} == {
        "daily": Decimal("0.4"),
        "monthly": Decimal("15.4"),
    }


def test_projection_with_nothing_spent_never_runs_out(tmp_path: Path) -> None:
    path, month = month_of(tmp_path, 0.0, 0.0)
    statuses = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    empty = summarise([path], Filters(periods.last_hours(1, NOW)))
    projection = project(empty, month, statuses, NOW)
    assert projection.daily_average == 0
    assert projection.runs_out_in_days == {"daily": None, "monthly": None}


def test_spent_budget_has_run_out_already(tmp_path: Path) -> None:
    path, month = month_of(tmp_path, 11.0, 0.0)
    statuses = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    projection = project(month, month, statuses, NOW)
    assert projection.runs_out_in_days["daily"] == 0


def test_calls_forwarded_as_is_are_counted_apart_among_the_unpriced(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.jsonl",
        [
            record("2026-11-11T09:00:00.000000Z", total_cost=1.0),
            unpriced("2026-11-11T09:10:00.000000Z", model="new-model"),
            forwarded("2026-11-11T09:20:00.000000Z"),
            forwarded("2026-11-02T10:00:00.000000Z", endpoint="/openai/v1/models"),
        ],
    )
    month = summarise([path], Filters(periods.this_month(NOW)))
    daily, monthly = budget_statuses(BUDGETS, "USD", USD, month, NOW)
    assert (daily.spent, daily.unpriced, daily.forwarded) == (Decimal(1), 2, 1)
    assert (monthly.spent, monthly.unpriced, monthly.forwarded) == (Decimal(1), 3, 2)
