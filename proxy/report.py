"""`meterproxy report` and scripts/analyze_costs.py: the checked job -> analysis -> text, CSV or JSON."""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from proxy import periods
from proxy.analysis import RecordReader, Summary
from proxy.budgets import BudgetStatus, Projection, budget_statuses, exit_code, project, tightest
from proxy.config import ConfigError
from proxy.export import budget_json, projection_json, summary_json, write_csv, write_json
from proxy.money import ExchangeError
from proxy.outfile import OutputError, whole_output
from proxy.periods import PeriodError
from proxy.records import record_time
from proxy.reportjob import DEFAULT_TOP, Job, UsageError, build_parser, make_job
from proxy.sources import RecordFileError
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

NO_DATA = "No usage data found\n"


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
        job = make_job(args, now or datetime.now(UTC), os.environ if environ is None else environ)
        with whole_output(args.output) as out:
            return _run(job, out)
    except (UsageError, OutputError, ConfigError, RecordFileError, PeriodError, ExchangeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `meterproxy report ... | head` closed the pipe: silence stdout so the flush at exit cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(job: Job, out: IO[str]) -> int:
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


def _budgets(job: Job, out: IO[str]) -> int:
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


def _statuses(job: Job, month: Summary) -> list[BudgetStatus]:
    config = job.config
    if config is None or config.budgets is None:
        return []
    return budget_statuses(config.budgets, config.currency, job.exchange, month, job.now)


def _projection(job: Job, summary: Summary) -> tuple[list[BudgetStatus], Projection]:
    this_month = periods.this_month(job.now)
    month = summary if job.filters.period == this_month else job.summarise(this_month)
    statuses = _statuses(job, month)
    return statuses, project(summary, month, statuses, job.now)


def _newest_last(reader: RecordReader, limit: int | None) -> list[tuple[str, ...]]:
    keyed = ((record_time(record["timestamp"]) or "", detail_row(record)) for record in reader)
    chosen = sorted(keyed) if limit is None else sorted(heapq.nlargest(limit, keyed))
    return [row for _, row in chosen]


def _note_skipped(count: int) -> None:
    if count:
        lines = "1 line that is" if count == 1 else f"{count:,} lines that are"
        print(f"note: skipped {lines} not whole JSON records", file=sys.stderr)
