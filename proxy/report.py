"""`meterproxy report` and scripts/analyze_costs.py: argparse -> config -> analysis -> text, CSV or JSON."""

from __future__ import annotations

import argparse
import heapq
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from proxy import periods
from proxy.analysis import Filters, RecordReader, Summary, summarise
from proxy.arguments import ArgumentParser
from proxy.budgets import BudgetStatus, Projection, budget_statuses, exit_code, project, tightest
from proxy.config import Config, ConfigError
from proxy.configfile import DEFAULT_RECORD_FILE, load_config
from proxy.export import budget_json, projection_json, summary_json, write_csv, write_json
from proxy.money import Exchange, ExchangeError
from proxy.outfile import OutputError, whole_output
from proxy.periods import Period, PeriodError
from proxy.sources import RecordFileError, expand
from proxy.tables import (
    budget_notes,
    budgets_text,
    detail_row,
    detailed_text,
    notes,
    projection_text,
    summary_text,
    timeline_text,
)

FORMATS = ("summary", "detailed", "hourly", "daily", "csv", "json")
NO_DATA = "No usage data found\n"
DEFAULT_TOP = 10


class UsageError(Exception):
    """A bad option or combination of options; exits 2 with one line on stderr."""


def build_parser(prog: str = "meterproxy report") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog, allow_abbrev=False, description="Report the costs recorded by meterproxy."
    )
    source = parser.add_argument_group("input")
    source.add_argument(
        "--config", metavar="PATH", help="config file (default: $METERPROXY_CONFIG, ./config.yml)"
    )
    source.add_argument(
        "--file", nargs="+", metavar="PATH", help="record files or globs; .gz files are read too"
    )
    period = parser.add_argument_group("period (one of; default: the last 24 hours)")
    period.add_argument("--since", type=float, metavar="HOURS", help="the last HOURS hours")
    for name, text in (
        ("today", "this UTC day"),
        ("yesterday", "the previous UTC day"),
        ("week", "this ISO week (Monday first)"),
        ("month", "this UTC month"),
        ("all", "every record"),
    ):
        period.add_argument(f"--{name}", action="store_true", help=text)
    period.add_argument("--start", metavar="DATE", help="from this date or ISO time (UTC)")
    period.add_argument("--end", metavar="DATE", help="to this ISO time, or through the end of this date")
    chosen = parser.add_argument_group("filters")
    chosen.add_argument("--provider", metavar="NAME")
    chosen.add_argument("--model", metavar="TEXT", help="models whose name contains TEXT")
    chosen.add_argument("--user", metavar="ID")
    chosen.add_argument("--task-type", metavar="NAME")
    chosen.add_argument("--session", metavar="ID")
    chosen.add_argument("--errors", action="store_true", help="only calls with an error or a status >= 400")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=FORMATS, default="summary")
    output.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only total_tokens<TAB>total_cost<TAB>requests (with --budget: spent, remaining, percent)",
    )
    output.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    output.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help=f"detailed: the last N calls; summary: the top N models and users (default {DEFAULT_TOP})",
    )
    output.add_argument(
        "--currency", metavar="CODE", help="report in this currency (needs its exchange rate)"
    )
    output.add_argument(
        "--budget", action="store_true", help="budget status; exit 0 ok, 1 warning, 2 critical"
    )
    output.add_argument(
        "--project", action="store_true", help="project the period's daily average to month end"
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of at least 1")
    return value


def main(
    argv: list[str] | None = None,
    prog: str = "meterproxy report",
    *,
    now: datetime | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a report; returns the exit code (0 ok, 2 user error; with --budget 0/1/2 by alert level)."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exit:  # --help (0), or a bad option already reported in one line (2)
        return exit.code if isinstance(exit.code, int) else 2
    try:
        job = _job(args, now or datetime.now(UTC), os.environ if environ is None else environ)
        with whole_output(args.output) as out:
            return _run(job, out)
    except (UsageError, OutputError, ConfigError, RecordFileError, PeriodError, ExchangeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `meterproxy report ... | head` closed the pipe: silence stdout so the flush at exit cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


@dataclass(frozen=True)
class _Job:
    """A report's options, checked: the config, the record files, the currency and the filters."""

    args: argparse.Namespace
    config: Config | None
    files: list[Path]
    exchange: Exchange
    filters: Filters
    now: datetime

    def summarise(self, period: Period | None = None) -> Summary:
        filters = self.filters if period is None else replace(self.filters, period=period)
        return summarise(self.files, filters, self.exchange, workers=_cpus())


def _job(args: argparse.Namespace, now: datetime, environ: Mapping[str, str]) -> _Job:
    config = _config(args.config, environ)
    default = config.record_file if config else environ.get("COST_TRACKING_FILE") or DEFAULT_RECORD_FILE
    exchange = Exchange(config.currency, config.exchange_rates) if config else Exchange()
    filters = Filters(
        period=_period(args, now),
        provider=args.provider,
        model=args.model,
        user=args.user,
        task_type=args.task_type,
        session=args.session,
        errors_only=args.errors,
    )
    if args.budget:
        if config is None:
            raise UsageError(
                "--budget: no config to read budgets from; pass --config PATH, set METERPROXY_CONFIG "
                "or run where config.yml is"
            )
        if config.budgets is None:
            raise UsageError(
                f"--budget: no budgets in {config.source}; add budgets: {{daily: 10.0, monthly: 200.0}}"
            )
    currency = exchange.to(args.currency) if args.currency else exchange
    files = expand(args.file or [default])
    records = {path.resolve() for path in [*files, *([config.record_file] if config else [])]}
    if args.output is not None and Path(args.output).resolve() in records:
        # The report would be renamed over the records it reads, or that the proxy writes.
        raise UsageError(f"--output {args.output}: is a record file; write the report to another file")
    return _Job(args, config, files, currency, filters, now)


def _run(job: _Job, out: IO[str]) -> int:
    args = job.args
    if args.budget:
        return _budgets(job, out)
    if args.format in ("csv", "detailed") and not args.quiet:
        reader = RecordReader(job.files, job.filters)
        if args.format == "csv":
            write_csv(reader, out)
        else:
            rows = _newest_last(reader, args.limit)
            out.write(detailed_text(rows) if rows else NO_DATA)
        _note_skipped(reader.skipped)
        return 0
    summary = job.summarise()
    _note_skipped(summary.skipped_lines)
    if args.quiet:
        totals = summary.totals
        out.write(f"{totals.total_tokens}\t{totals.cost:.6f}\t{totals.requests}\n")
        for note in notes(summary):
            print(note, file=sys.stderr)
        return 0
    statuses, projection = _projection(job, summary) if args.project else ([], None)
    if args.format == "json":
        document = summary_json(summary)
        if projection is not None:
            document["projection"] = projection_json(projection)
            document["budgets"] = [budget_json(status) for status in statuses]
        write_json(document, out)
        return 0
    if summary.totals.requests == 0:
        out.write(NO_DATA)
    elif args.format in ("hourly", "daily"):
        out.write(timeline_text(summary, "hour" if args.format == "hourly" else "day"))
    else:
        out.write(summary_text(summary, args.limit or DEFAULT_TOP))
    if projection is not None:
        out.write("\n" + projection_text(projection, job.exchange.currency, job.now))
    return 0


def _config(explicit: str | None, environ: Mapping[str, str]) -> Config | None:
    path = explicit or environ.get("METERPROXY_CONFIG")
    if path is None:
        if not Path("config.yml").is_file():
            return None
        path = "config.yml"
    # Reports never use the provider keys: an unset ${VAR} naming one must not stop a report.
    return load_config(path, environ, keep_unset=True)


def _period(args: argparse.Namespace, now: datetime) -> Period:
    named = [f"--{name}" for name in ("today", "yesterday", "week", "month", "all") if getattr(args, name)]
    if args.since is not None:
        named.append("--since")
    if args.start is not None or args.end is not None:
        named.append("--start/--end")
    if len(named) > 1:
        raise UsageError(f"{' and '.join(named)}: choose one period")
    if args.today:
        return periods.today(now)
    if args.yesterday:
        return periods.yesterday(now)
    if args.week:
        return periods.this_week(now)
    if args.month:
        return periods.this_month(now)
    if args.all:
        return periods.ALL_TIME
    if args.start is not None or args.end is not None:
        return periods.between(args.start, args.end)
    return periods.last_hours(24 if args.since is None else args.since, now)


def _budgets(job: _Job, out: IO[str]) -> int:
    month = job.summarise(periods.this_month(job.now))
    _note_skipped(month.skipped_lines)
    statuses = _statuses(job, month)
    if job.args.quiet:
        worst = tightest(statuses)
        if worst is not None:
            out.write(f"{worst.spent:.6f}\t{worst.remaining:.6f}\t{worst.fraction * 100:.2f}\n")
        for note in budget_notes(statuses, job.exchange.currency):
            print(note, file=sys.stderr)
        return exit_code(statuses)
    projection = project(job.summarise(), month, statuses, job.now) if job.args.project else None
    if job.args.format == "json":
        document: dict[str, Any] = {
            "currency": job.exchange.currency,
            "budgets": [budget_json(s) for s in statuses],
        }
        if projection is not None:
            document["projection"] = projection_json(projection)
        write_json(document, out)
    else:
        out.write(budgets_text(statuses, job.exchange.currency))
        if projection is not None:
            out.write("\n" + projection_text(projection, job.exchange.currency, job.now))
    return exit_code(statuses)


def _statuses(job: _Job, month: Summary) -> list[BudgetStatus]:
    config = job.config
    if config is None or config.budgets is None:
        return []
    return budget_statuses(config.budgets, config.currency, job.exchange, month, job.now)


def _projection(job: _Job, summary: Summary) -> tuple[list[BudgetStatus], Projection]:
    this_month = periods.this_month(job.now)
    month = summary if job.filters.period == this_month else job.summarise(this_month)
    statuses = _statuses(job, month)
    return statuses, project(summary, month, statuses, job.now)


def _newest_last(reader: RecordReader, limit: int | None) -> list[tuple[str, ...]]:
    keyed = ((record["timestamp"], detail_row(record)) for record in reader)
    chosen = sorted(keyed) if limit is None else sorted(heapq.nlargest(limit, keyed))
    return [row for _, row in chosen]


def _note_skipped(count: int) -> None:
    if count:
        lines = "1 line that is" if count == 1 else f"{count:,} lines that are"
        print(f"note: skipped {lines} not whole JSON records", file=sys.stderr)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
