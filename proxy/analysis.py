"""Cost records read lazily from files, filtered, and summarised into typed totals (no other I/O).

The Python API of the reports (docs/reports.md): `summarise` for totals and breakdowns, `RecordReader`
for the records themselves, `Filters` for which ones count.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import orjson

from proxy.counts import Counts, Groups, Window, count, merge_groups
from proxy.filters import EVERY_RECORD, NONE, RECORD_FIELDS, Filters, complete
from proxy.money import Exchange
from proxy.periods import LAST_MOMENT, Period, from_stamp
from proxy.records import CostRecord
from proxy.sources import Piece, RecordFileError, expand, read_lines, split
from proxy.tallies import Tally, TimeUnit, add_group, timeline

__all__ = [
    "NONE",
    "RECORD_FIELDS",
    "Exchange",
    "Filters",
    "Period",
    "RecordFileError",
    "RecordReader",
    "Summary",
    "Tally",
    "TimeUnit",
    "summarise",
]

# Plain files this big are read by several processes at once (the Speed section of the reports issue),
# in eight pieces per process: a process that finishes early takes the next piece, so one slowed by
# other work on its CPU does not hold up the report (four and sixteen per process measured slower).
PARALLEL_MIN_BYTES = 32 << 20
_PIECES_PER_WORKER = 8
REPORTING_USD = Exchange()


class RecordReader:
    """The matching records of some files, read lazily in file order; `skipped` counts bad lines."""

    def __init__(self, paths: Iterable[str | Path], filters: Filters = EVERY_RECORD) -> None:
        self.paths = expand(paths)
        self.filters = filters
        self.skipped = 0

    def __iter__(self) -> Iterator[CostRecord]:
        # Lines stamped outside the period are passed over unread, as `summarise` passes them over: a
        # torn one there is not counted either.
        window = Window.of(self.filters.period)
        for path in self.paths:
            for line in read_lines(Piece(path)):
                if window is not None and window.passes_over(line):
                    continue
                try:
                    parsed = orjson.loads(line)
                    record = complete(parsed) if isinstance(parsed, dict) else None
                except orjson.JSONDecodeError:
                    record = None
                if record is None:
                    if line.strip():
                        self.skipped += 1
                elif self.filters.matches(record):
                    yield record


@dataclass
class Summary:
    """Totals and breakdowns of the matching records; costs in `currency`, exact until displayed."""

    period: Period
    currency: str
    first_timestamp: str | None
    last_timestamp: str | None
    totals: Tally
    by_provider: dict[str, Tally]
    by_model: dict[str, Tally]
    by_user: dict[str, Tally]
    by_task_type: dict[str, Tally]
    by_hour: dict[str, Tally]
    unpriced_models: dict[str, int] = field(default_factory=dict)
    skipped_lines: int = 0

    def bounds(self) -> tuple[datetime, datetime] | None:
        """The period [start, end), an open side closed by the first or last matching record (None: none)."""
        start, end = self.period.start, self.period.end
        if start is None:
            if self.first_timestamp is None:
                return None
            start = from_stamp(self.first_timestamp)
        if end is None:
            if self.last_timestamp is None:
                return None
            last = from_stamp(self.last_timestamp)
            # The moment after it; the calendar's last one has none, and closes the period itself.
            end = last + timedelta(microseconds=1) if last < LAST_MOMENT else last
        return start, end

    def timeline(self, unit: TimeUnit) -> list[tuple[str, Tally]]:
        """Every hour or day of the bounds, in order, those without records as zero tallies."""
        bounds = self.bounds()
        return [] if bounds is None else timeline(self.by_hour, unit, *bounds)


def summarise(
    paths: Iterable[str | Path],
    filters: Filters = EVERY_RECORD,
    exchange: Exchange = REPORTING_USD,
    *,
    workers: int = 1,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> Summary:
    """Read the files once and total the matching records; workers > 1 reads big plain files in parallel."""
    pieces = split(expand(paths), workers * _PIECES_PER_WORKER if workers > 1 else 1, parallel_min_bytes)
    if workers > 1 and len(pieces) > 1:
        # A forked worker re-imports nothing and starts in milliseconds; but a process with other threads
        # must not fork (a lock held by one of them stays locked in the child), so it gets a fork server.
        method = "fork" if threading.active_count() == 1 else "forkserver"
        with ProcessPoolExecutor(min(workers, len(pieces)), mp_context=get_context(method)) as pool:
            scans = list(pool.map(count, pieces, [filters] * len(pieces)))
    else:
        scans = [count(piece, filters) for piece in pieces]
    groups: Groups = {}
    hours: Groups = {}
    for scan in scans:
        merge_groups(groups, scan.groups)
        merge_groups(hours, scan.hours)
    return _summary(filters.period, exchange, groups, hours, scans)


def _summary(
    period: Period, exchange: Exchange, groups: Groups, hours: Groups, scans: list[Counts]
) -> Summary:
    firsts = [scan.first for scan in scans if scan.first is not None]
    lasts = [scan.last for scan in scans if scan.last is not None]
    summary = Summary(
        period=period,
        currency=exchange.currency,
        first_timestamp=min(firsts, default=None),
        last_timestamp=max(lasts, default=None),
        totals=Tally(),
        by_provider={},
        by_model={},
        by_user={},
        by_task_type={},
        by_hour={},
        skipped_lines=sum(scan.skipped for scan in scans),
    )
    for (provider, model, user, task, currency, state), counts in groups.items():
        model_name = f"{provider}/{model if model is not None else NONE}"
        add_group(summary.totals, counts, currency, state, exchange)
        for table, name in (
            (summary.by_provider, provider),
            (summary.by_model, model_name),
            (summary.by_user, user),
            (summary.by_task_type, task),
        ):
            add_group(
                table.setdefault(NONE if name is None else str(name), Tally()),
                counts,
                currency,
                state,
                exchange,
            )
        if state == "unpriced" or state == "forwarded":  # forwarded calls have no price either
            summary.unpriced_models[model_name] = summary.unpriced_models.get(model_name, 0) + counts[0]
    for (hour, currency, state), counts in sorted(hours.items()):
        add_group(summary.by_hour.setdefault(hour, Tally()), counts, currency, state, exchange)
    for table in (summary.by_provider, summary.by_model, summary.by_user, summary.by_task_type):
        ranked = sorted(table.items(), key=lambda item: (-item[1].cost, -item[1].requests, item[0]))
        table.clear()
        table.update(ranked)
    return summary
