"""Fixed-width text of reports: the summary, per-call lines, hourly/daily bars, budgets, projections."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from proxy.analysis import NONE, Summary, Tally, TimeUnit
from proxy.budgets import BudgetStatus, Projection
from proxy.money import format_money
from proxy.records import CostRecord, record_time
from proxy.tallies import forwarded_as_is

RULE = "=" * 60
BAR_WIDTH = 40
_TIME = "%Y-%m-%dT%H:%M:%S"
# Control characters (C0, DEL, C1) in a name from a record are shown escaped, never sent to the terminal:
# a model name is the client's, and an escape sequence in it could rewrite what the report shows.
_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def summary_text(summary: Summary, top: int) -> str:
    money, totals = _money(summary.currency), summary.totals
    bounds = summary.bounds()
    period = "-" if bounds is None else f"{bounds[0]:{_TIME}} to {bounds[1]:{_TIME}} UTC"
    lines = [
        RULE,
        "LLM PROXY COST ANALYSIS SUMMARY",
        RULE,
        f"Time Period: {period}",
        f"Total Cost: {money(totals.cost)}",
    ]
    lines += [
        f"Total Requests: {totals.requests:,}",
        f"Total Tokens: {totals.total_tokens:,} (input {totals.input_tokens:,},"
        f" output {totals.output_tokens:,}, cached {totals.cached_input_tokens:,})",
        f"Average Cost per Request: {_maybe(money, totals.cost_per_request)}",
        f"Average Cost per 1K Tokens: {_maybe(money, totals.cost_per_1k_tokens)}",
        f"Errors: {totals.errors:,}",
    ]
    lines += notes(summary)
    sections = [
        ("COST BY PROVIDER", summary.by_provider, None),
        ("TOP MODELS BY COST", summary.by_model, top),
        ("TOP USERS BY COST", summary.by_user, top),
        ("COST BY TASK TYPE", summary.by_task_type, None),
    ]
    for title, table, limit in sections:
        lines += ["", f"{title}:", *_table(table, limit, summary.currency)]
    return "\n".join(lines) + "\n"


def notes(summary: Summary) -> list[str]:
    """What the total leaves out: unpriced calls, calls forwarded as is, calls without usage, amounts
    without a rate, bad lines."""
    lines = []
    totals = summary.totals
    # Forwarded calls are unpriced too, but there is no model whose price is missing: they are told apart.
    unpriced = {
        name: calls - summary.by_model.get(name, Tally()).forwarded
        for name, calls in sorted(summary.unpriced_models.items())
    }
    unpriced = {name: calls for name, calls in unpriced.items() if calls}
    if unpriced:
        models = ", ".join(f"{_shown(name)} ({calls:,})" for name, calls in unpriced.items())
        lines.append(
            f"Unpriced: {_calls(sum(unpriced.values()))} to {len(unpriced)} unpriced"
            f" model{'s' if len(unpriced) != 1 else ''} (not in the total): {models}"
        )
    if totals.forwarded:
        forwarded = {name: tally.forwarded for name, tally in sorted(summary.by_provider.items())}
        providers = ", ".join(f"{_shown(name)} ({calls:,})" for name, calls in forwarded.items() if calls)
        count = sum(1 for calls in forwarded.values() if calls)
        lines.append(
            f"Forwarded as is: {_calls(totals.forwarded)} to {count} provider{'s' if count != 1 else ''}"
            f" (not metered, so nothing to price; not in the total): {providers}"
        )
    if totals.no_usage:
        lines.append(
            f"Without usage: {_calls(totals.no_usage)} (failed, or answered without usage; no cost, not in"
            " the total)"
        )
    if totals.unconverted:
        amounts = ", ".join(
            format_money(value, _shown(code)) for code, value in sorted(totals.unconverted.items())
        )
        lines.append(f"Not converted (no exchange rate to {summary.currency}, not in the total): {amounts}")
    if summary.skipped_lines:
        lines.append(f"Skipped lines: {summary.skipped_lines:,} (not whole JSON records)")
    return lines


def _calls(count: int) -> str:
    return f"{count:,} call{'s' if count != 1 else ''}"


def _shown(name: str) -> str:
    return name.translate(_ESCAPED)


def _table(table: dict[str, Tally], limit: int | None, currency: str) -> list[str]:
    rows = [(_shown(name), tally) for name, tally in table.items()]
    shown = rows if limit is None else rows[:limit]
    if not shown:
        return ["(none)"]
    money = _money(currency)
    name_width = max(12, *(len(name) for name, _ in shown))
    cost_width = max(len(money(tally.cost)) for _, tally in shown)
    lines = []
    for name, tally in shown:
        line = (
            f"{name:<{name_width}} | {money(tally.cost):>{cost_width}} | {tally.requests:>5,} req"
            f" | {tally.total_tokens:>10,} tokens"
        )
        lines.append(line + _extras(tally))
    if len(rows) > len(shown):
        lines.append(f"... and {len(rows) - len(shown)} more (--limit N shows more)")
    return lines


def _extras(tally: Tally) -> str:
    unpriced = tally.unpriced - tally.forwarded
    extras = [f"{unpriced:,} unpriced"] if unpriced else []
    extras += [f"{tally.forwarded:,} forwarded"] if tally.forwarded else []
    extras += [
        f"+{format_money(value, _shown(code))} unconverted"
        for code, value in sorted(tally.unconverted.items())
    ]
    return "".join(f" | {extra}" for extra in extras)


def timeline_text(summary: Summary, unit: TimeUnit) -> str:
    series = summary.timeline(unit)
    money = _money(summary.currency)
    by_cost = any(tally.cost for _, tally in series)
    largest = max(
        (tally.cost if by_cost else Decimal(tally.requests) for _, tally in series), default=Decimal(0)
    )
    title = "HOURLY" if unit == "hour" else "DAILY"
    lines = [f"{title} COSTS (UTC{'' if by_cost else ', bars by requests: no priced calls'})"]
    cost_width = max((len(money(tally.cost)) for _, tally in series), default=0)
    for key, tally in series:
        size = tally.cost if by_cost else Decimal(tally.requests)
        bar = "#" * round(size / largest * BAR_WIDTH) if largest else ""
        label = f"{key}:00" if unit == "hour" else key
        lines.append(
            f"{label:<16} {money(tally.cost):>{cost_width}} {tally.requests:>7,} req"
            f" {tally.total_tokens:>12,} tokens  {bar}".rstrip()
        )
    lines += notes(summary)
    return "\n".join(lines) + "\n"


def detail_row(record: CostRecord) -> tuple[str, ...]:
    """Time, provider/model, tokens, cost in the record's own currency, user, status of one call."""
    cost = record["total_cost"]
    if record["priced"] is False:
        forwarded = forwarded_as_is(record["model"], record["usage_source"], record["endpoint"])
        shown = "forwarded" if forwarded else "unpriced"
    elif cost is None:
        shown = "no usage"  # priced, but failed or answered without usage: the notes' "Without usage"
    else:
        shown = format_money(Decimal(repr(cost)), _shown(record["currency"]))
    return (
        (record_time(record["timestamp"]) or record["timestamp"])[:19].replace("T", " "),
        _shown(f"{record['provider']}/{record['model'] if record['model'] is not None else NONE}"),
        f"{record['input_tokens']:,} in",
        f"{record['output_tokens']:,} out",
        shown,
        _shown(str(record["user_id"])),
        _shown(str(record["status_code"]) + (f" {record['error']}" if record["error"] else "")),
    )


def detailed_text(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))] if rows else []
    aligns = "<<>>><<"
    return "".join(
        "  ".join(
            f"{cell:{align}{width}}" for cell, align, width in zip(row, aligns, widths, strict=True)
        ).rstrip()
        + "\n"
        for row in rows
    )


def budgets_text(statuses: list[BudgetStatus], currency: str) -> str:
    money = _money(currency)
    lines = [f"BUDGETS ({currency}, UTC)"]
    for status in statuses:
        lines.append(
            f"{status.name:<8} {money(status.spent)} of {money(status.limit)} spent,"
            f" {money(status.remaining)} left ({status.fraction * 100:.1f}%)  {status.level.upper()}"
        )
    lines += budget_notes(statuses, currency)
    return "\n".join(lines) + "\n"


def budget_notes(statuses: list[BudgetStatus], currency: str) -> list[str]:
    """What each budget's spend leaves out: unpriced calls, calls forwarded as is, amounts without a rate."""
    lines = []
    for status in statuses:
        parts = []
        unpriced = status.unpriced - status.forwarded
        if unpriced:
            parts.append(f"{unpriced:,} unpriced call{'s' if unpriced != 1 else ''}")
        if status.forwarded:
            parts.append(f"{_calls(status.forwarded)} forwarded as is (not metered)")
        if status.no_usage:
            parts.append(f"{_calls(status.no_usage)} without usage")
        if status.unconverted:
            unconverted = sorted(status.unconverted.items())
            amounts = ", ".join(format_money(value, code) for code, value in unconverted)
            parts.append(f"{amounts} (no exchange rate to {currency})")
        if parts:
            lines.append(f"Not in the {status.name} spend: {'; '.join(parts)}")
    return lines


def projection_text(projection: Projection, currency: str, now: datetime) -> str:
    money = _money(currency)
    lines = [
        "PROJECTION",
        f"Daily average: {money(projection.daily_average)} (over {projection.days:.2f} days)",
        f"Month to date ({now:%Y-%m}): {money(projection.month_to_date)}",
        f"Projected month total: {money(projection.projected_month)}"
        f" ({projection.days_left_in_month:.2f} days left)",
    ]
    for name, days in projection.runs_out_in_days.items():
        if days is None:
            when = f"lasts to the end of the {'day' if name == 'daily' else 'month'} at this rate"
        elif days == 0:
            when = "already spent"
        else:
            when = f"runs out in {days:.2f} days at this rate"
        lines.append(f"{name.capitalize()} budget: {when}")
    return "\n".join(lines) + "\n"


def _money(currency: str) -> Callable[[Decimal], str]:
    return lambda value: format_money(value, currency)


def _maybe(money: Callable[[Decimal], str], value: Decimal | None) -> str:
    return "-" if value is None else money(value)
