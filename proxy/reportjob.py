"""A report's command line, parsed and checked: its options, the config, the record files, the period."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from proxy import periods
from proxy.analysis import Filters, Summary, summarise
from proxy.arguments import ArgumentParser
from proxy.config import Config
from proxy.configfile import DEFAULT_RECORD_FILE, load_config
from proxy.money import Exchange
from proxy.periods import Period
from proxy.sources import expand

FORMATS = ("summary", "detailed", "hourly", "daily", "csv", "json")
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
    period.add_argument("--since", type=_hours, metavar="HOURS", help="the last HOURS hours")
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
    chosen.add_argument("--provider", type=_named, metavar="NAME")
    chosen.add_argument("--model", type=_named, metavar="TEXT", help="models whose name contains TEXT")
    chosen.add_argument("--user", type=_named, metavar="ID")
    chosen.add_argument("--task-type", type=_named, metavar="NAME")
    chosen.add_argument("--session", type=_named, metavar="ID")
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


def _named(text: str) -> str:
    # An empty name matched every record (no filter), where it names none.
    if not text:
        raise argparse.ArgumentTypeError("give a name, or leave the option out for every record")
    return text


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not hours > 0:  # nan too
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of hours, e.g. --since 24")
    return hours


@dataclass(frozen=True)
class Job:
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


def make_job(args: argparse.Namespace, now: datetime, environ: Mapping[str, str]) -> Job:
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
    return Job(args, config, files, currency, filters, now)


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


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
