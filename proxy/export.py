"""Summaries as JSON of a documented schema (docs/reports.md), and records as CSV rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import timedelta
from decimal import Context, Decimal
from typing import IO, Any, TypedDict

import orjson

from proxy import periods
from proxy.analysis import RECORD_FIELDS, Summary, Tally, TimeUnit
from proxy.budgets import BudgetStatus, Projection
from proxy.records import CostRecord

SCHEMA_VERSION = 1
COST_PLACES = 10  # JSON costs are rounded here: sums are exact, but a float cannot print them so.
HOURLY_UP_TO_HOURS = 48  # longer periods get by_day instead of by_hour
# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class TallyJSON(TypedDict):
    cost: float
    requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_input_tokens: int
    errors: int
    unpriced_requests: int
    no_usage_requests: int
    forwarded_requests: int
    unconverted: dict[str, float]


class TotalsJSON(TallyJSON):
    average_cost_per_request: float | None
    average_cost_per_1k_tokens: float | None


class PeriodJSON(TypedDict):
    start: str | None
    end: str | None
    first_record: str | None
    last_record: str | None


class BudgetJSON(TypedDict):
    name: str
    limit: float
    spent: float
    remaining: float
    percent: float
    level: str
    start: str
    end: str
    unpriced_requests: int
    no_usage_requests: int
    forwarded_requests: int
    unconverted: dict[str, float]


class ProjectionJSON(TypedDict):
    period_days: float
    daily_average: float
    month_to_date: float
    days_left_in_month: float
    projected_month: float
    runs_out_in_days: dict[str, float | None]


def amount(value: Decimal, places: int = COST_PLACES) -> float:
    # With the digits the value needs: round() keeps to the context's 28, too few for 1e18 and 10 places.
    # One more for a carry that rounds it up to a power of ten: 9.99999999999999928 is 10.0000000000.
    digits = max(value.adjusted(), 0) + 2 + places
    return float(value.quantize(Decimal(1).scaleb(-places), context=Context(prec=digits)))


def tally_json(tally: Tally) -> TallyJSON:
    return {
        "cost": amount(tally.cost),
        "requests": tally.requests,
        "input_tokens": tally.input_tokens,
        "output_tokens": tally.output_tokens,
        "total_tokens": tally.total_tokens,
        "cached_input_tokens": tally.cached_input_tokens,
        "errors": tally.errors,
        "unpriced_requests": tally.unpriced,
        "no_usage_requests": tally.no_usage,
        "forwarded_requests": tally.forwarded,
        "unconverted": {currency: amount(value) for currency, value in sorted(tally.unconverted.items())},
    }


def time_unit(summary: Summary) -> TimeUnit:
    """ "hour" for periods of up to 48 hours, else "day"."""
    bounds = summary.bounds()
    short = bounds is None or bounds[1] - bounds[0] <= timedelta(hours=HOURLY_UP_TO_HOURS)
    return "hour" if short else "day"


def summary_json(summary: Summary) -> dict[str, Any]:
    """Everything the text summary shows; keys and meanings are documented in docs/reports.md."""
    totals = tally_json(summary.totals)
    per_request, per_1k = summary.totals.cost_per_request, summary.totals.cost_per_1k_tokens
    totals_json: TotalsJSON = {
        **totals,
        "average_cost_per_request": None if per_request is None else amount(per_request),
        "average_cost_per_1k_tokens": None if per_1k is None else amount(per_1k),
    }
    period: PeriodJSON = {
        "start": summary.period.start_stamp,
        "end": summary.period.end_stamp,
        "first_record": summary.first_timestamp,
        "last_record": summary.last_timestamp,
    }
    unit = time_unit(summary)
    return {
        "schema": SCHEMA_VERSION,
        "currency": summary.currency,
        "period": period,
        "totals": totals_json,
        "unpriced_models": dict(summary.unpriced_models),
        "skipped_lines": summary.skipped_lines,
        "by_provider": {name: tally_json(tally) for name, tally in summary.by_provider.items()},
        "by_model": {name: tally_json(tally) for name, tally in summary.by_model.items()},
        "by_user": {name: tally_json(tally) for name, tally in summary.by_user.items()},
        "by_task_type": {name: tally_json(tally) for name, tally in summary.by_task_type.items()},
        f"by_{unit}": {key: tally_json(tally) for key, tally in summary.timeline(unit)},
    }


def budget_json(status: BudgetStatus) -> BudgetJSON:
    return {
        "name": status.name,
        "limit": amount(status.limit),
        "spent": amount(status.spent),
        "remaining": amount(status.remaining),
        "percent": amount(status.fraction * 100, 2),
        "level": status.level,
        "start": periods.stamp(status.start),
        "end": periods.stamp(status.end),
        "unpriced_requests": status.unpriced,
        "no_usage_requests": status.no_usage,
        "forwarded_requests": status.forwarded,
        "unconverted": {currency: amount(value) for currency, value in sorted(status.unconverted.items())},
    }


def projection_json(projection: Projection) -> ProjectionJSON:
    return {
        "period_days": amount(projection.days, 4),
        "daily_average": amount(projection.daily_average),
        "month_to_date": amount(projection.month_to_date),
        "days_left_in_month": amount(projection.days_left_in_month, 4),
        "projected_month": amount(projection.projected_month),
        "runs_out_in_days": {
            name: None if days is None else amount(days, 4)
            for name, days in projection.runs_out_in_days.items()
        },
    }


def write_json(document: Any, stream: IO[str]) -> None:
    stream.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def write_csv(records: Iterable[CostRecord], stream: IO[str]) -> int:
    """One row per record under a header of the record fields; returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    rows = 0
    for record in records:
        cells = [_cell(record.get(name)) for name in RECORD_FIELDS]
        if any("\r" in cell for cell in cells if isinstance(cell, str)):
            stream.write(_row_with_cr(cells))
        else:
            writer.writerow(cells)
        rows += 1
    return rows


def _row_with_cr(cells: list[object]) -> str:
    """The row with each field holding a carriage return quoted, as Python 3.11.9 and later write it.

    Before 3.11.9 the csv module quoted only the line terminator's characters (CPython gh-67044), so the
    carriage return in a model `gpt-4o<CR>=1+1` ended the row and the next one began with a formula.
    """
    row = io.StringIO()
    csv.writer(row, lineterminator="\r\n").writerow(cells)
    return row.getvalue()[:-2] + "\n"


def _cell(value: object) -> object:
    if isinstance(value, str):
        # A model, session or task type is the client's text, a request id the provider's: a leading quote
        # keeps `=HYPERLINK(...)` text in the sheet instead of a formula run there.
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()  # the record's own JSON (`price`), not a Python repr
    return value
