"""Budget status (spent, remaining, alert level) and month-end projections from a month's summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Context, Decimal
from typing import Literal

from proxy.analysis import Summary, Tally
from proxy.config import Budgets
from proxy.money import Exchange
from proxy.periods import Period, month_end, today

AlertLevel = Literal["ok", "warning", "critical"]
BudgetName = Literal["daily", "monthly"]
_EXIT_CODES: dict[AlertLevel, int] = {"ok": 0, "warning": 1, "critical": 2}
_DAY = timedelta(days=1)
_LEVEL_STEP = Decimal("1e-12")  # a fraction of a budget, to this step: far below the 0.1% shown
_LEVEL_CONTEXT = Context(prec=60)  # enough digits to round any fraction to _LEVEL_STEP


@dataclass(frozen=True)
class BudgetStatus:
    """One budget against its spend so far, in the reporting currency.

    unpriced, no_usage and unconverted are what the spend leaves out: calls without a price, calls that
    reported no usage, and sums in currencies without a rate (per currency); a report lists them apart
    so that an alert is not fooled by them. forwarded is the part of unpriced forwarded as is, unmetered.
    """

    name: BudgetName
    limit: Decimal
    spent: Decimal
    level: AlertLevel
    start: datetime
    end: datetime
    unpriced: int = 0
    no_usage: int = 0
    unconverted: dict[str, Decimal] = field(default_factory=dict)
    forwarded: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent

    @property
    def fraction(self) -> Decimal:
        return self.spent / self.limit


@dataclass(frozen=True)
class Projection:
    """The period's daily average carried to the end of the month, and when each budget runs out.

    runs_out_in_days: 0 when already spent, None when the budget lasts until it resets at this rate.
    """

    days: Decimal
    daily_average: Decimal
    month_to_date: Decimal
    days_left_in_month: Decimal
    projected_month: Decimal
    runs_out_in_days: dict[BudgetName, Decimal | None]


def today_tally(month: Summary, now: datetime) -> Tally:
    """The calls of now's UTC day, from the hours of `month`."""
    day, tally = now.strftime("%Y-%m-%d"), Tally()
    for hour, counts in month.by_hour.items():
        if hour.startswith(day):
            tally.add(counts)
    return tally


def budget_statuses(
    budgets: Budgets, budget_currency: str, exchange: Exchange, month: Summary, now: datetime
) -> list[BudgetStatus]:
    """The daily (this UTC day) and monthly (this UTC month) budgets; `month` summarises this month."""
    statuses = []
    day = today(now)
    windows: list[tuple[BudgetName, Decimal | None, Tally, Period, datetime]] = [
        ("daily", budgets.daily, today_tally(month, now), day, (day.start or now) + _DAY),
        ("monthly", budgets.monthly, month.totals, month.period, month_end(now)),
    ]
    for name, amount, tally, window, end in windows:
        if amount is None:
            continue
        limit = exchange.convert(amount, budget_currency)
        if limit is None:
            raise ValueError(f"no exchange rate from {budget_currency} to {exchange.currency}")
        spent = tally.cost
        # Compared as a report shows it, not to the last binary digit: a cost is summed as its float (0.3
        # as 0.29999...), and rates re-based for --currency are rounded to 28 digits (80% as 79.999...%).
        fraction = (spent / limit).quantize(_LEVEL_STEP, context=_LEVEL_CONTEXT)
        level: AlertLevel = "ok"
        if fraction >= budgets.critical_at:
            level = "critical"
        elif fraction >= budgets.warn_at:
            level = "warning"
        statuses.append(
            BudgetStatus(
                name,
                limit,
                spent,
                level,
                window.start or now,
                end,
                tally.unpriced,
                tally.no_usage,
                dict(tally.unconverted),
                tally.forwarded,
            )
        )
    return statuses


def exit_code(statuses: list[BudgetStatus]) -> int:
    """0 when every budget is ok, 1 when one reached its warning level, 2 when one reached critical."""
    return max((_EXIT_CODES[status.level] for status in statuses), default=0)


def tightest(statuses: list[BudgetStatus]) -> BudgetStatus | None:
    return max(statuses, key=lambda status: status.fraction, default=None)


def project(summary: Summary, month: Summary, statuses: list[BudgetStatus], now: datetime) -> Projection:
    """Carry the daily average of `summary`'s period to the end of the month that `month` summarises."""
    start = summary.period.start
    if start is None and summary.first_timestamp is not None:
        start = datetime.fromisoformat(summary.first_timestamp)
    end = summary.period.end or now
    days = _days(end - start) if start is not None else Decimal(0)
    daily_average = summary.totals.cost / days if days > 0 else Decimal(0)
    days_left = _days(month_end(now) - now)
    runs_out: dict[BudgetName, Decimal | None] = {}
    for status in statuses:
        # A budget resets at the end of its day or month: it runs out only if the rate spends it before.
        lasts = status.remaining / daily_average if daily_average > 0 else None
        if status.remaining <= 0:
            runs_out[status.name] = Decimal(0)
        else:
            runs_out[status.name] = lasts if lasts is not None and lasts < _days(status.end - now) else None
    return Projection(
        days=days,
        daily_average=daily_average,
        month_to_date=month.totals.cost,
        days_left_in_month=days_left,
        projected_month=month.totals.cost + daily_average * days_left,
        runs_out_in_days=runs_out,
    )


def _days(span: timedelta) -> Decimal:
    return Decimal(span.total_seconds()) / 86400
