"""Cost records read lazily from files, filtered, and summarised into typed totals (no other I/O).

from proxy.analysis import Filters, summarise
from proxy.periods import this_month
from datetime import UTC, datetime
summary = summarise(["logs/cost-tracking.jsonl"], Filters(this_month(datetime.now(UTC)), provider="openai"))
print(summary.totals.cost, {name: tally.cost for name, tally in summary.by_model.items()})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing import get_context
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import orjson

from proxy.money import UNIT_SCALE, Exchange
from proxy.periods import ALL_TIME, Period, from_stamp
from proxy.records import CostRecord
from proxy.sources import Piece, RecordFileError, expand, read_lines, split
from proxy.tallies import NONE, Tally, TimeUnit, add_group, merge_groups, timeline

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

RECORD_FIELDS: tuple[str, ...] = tuple(CostRecord.__annotations__)
# What a record lacks when an older or other writer left a field out (the format only grows).
_DEFAULTS: dict[str, Any] = dict.fromkeys(RECORD_FIELDS) | {
    "request_id": "",
    "user_id": "anonymous",
    "provider": NONE,
    "endpoint": "",
    "is_streaming": False,
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "v": 1,
    "cached_input_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
    "currency": "USD",
    "priced": True,
    "usage_source": "provider",
    "status_code": 200,
    "duration_ms": 0.0,
    "proxy_request_id": "",
}
_SCANNED = itemgetter(
    "timestamp",
    "provider",
    "model",
    "user_id",
    "task_type",
    "currency",
    "total_cost",
    "priced",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "status_code",
    "error",
    "session_id",
)
_TIMESTAMP_PREFIX = b'{"timestamp":"'
_STAMP_SLICE = slice(len(_TIMESTAMP_PREFIX), len(_TIMESTAMP_PREFIX) + len("2026-11-23T10:30:00.123456Z"))
# Plain files this big are read by several processes at once (the Speed section of the reports issue).
PARALLEL_MIN_BYTES = 32 << 20
REPORTING_USD = Exchange()

GroupKey = tuple[str, str | None, str, str | None, str, bool]
Groups = dict[Any, list[int]]
_FieldTest = Callable[[str, str | None, str, str | None, str | None, int, str | None], bool]


@dataclass(frozen=True)
class Filters:
    """Which records count: a period, then exact names (model: a substring), or only failed calls."""

    period: Period = ALL_TIME
    provider: str | None = None
    model: str | None = None
    user: str | None = None
    task_type: str | None = None
    session: str | None = None
    errors_only: bool = False

    def field_test(self) -> _FieldTest | None:
        """A test of (provider, model, user, task_type, session, status, error), or None if all pass."""
        if not (
            self.provider or self.model or self.user or self.task_type or self.session or self.errors_only
        ):
            return None

        def test(
            provider: str,
            model: str | None,
            user: str,
            task: str | None,
            session: str | None,
            status: int,
            error: str | None,
        ) -> bool:
            return (
                (self.provider is None or provider == self.provider)
                and (self.model is None or (model is not None and self.model in model))
                and (self.user is None or user == self.user)
                and (self.task_type is None or task == self.task_type)
                and (self.session is None or session == self.session)
                and (not self.errors_only or error is not None or status >= 400)
            )

        return test

    def matches(self, record: Mapping[str, Any]) -> bool:
        stamp = record["timestamp"]
        low, high = self.period.start_stamp, self.period.end_stamp
        if (low is not None and stamp < low) or (high is not None and stamp >= high):
            return False
        test = self.field_test()
        return test is None or test(*(record[name] for name in _TEST_FIELDS))


_TEST_FIELDS = ("provider", "model", "user_id", "task_type", "session_id", "status_code", "error")


class RecordReader:
    """The matching records of some files, read lazily in file order; `skipped` counts bad lines."""

    def __init__(self, paths: Iterable[str | Path], filters: Filters = Filters()) -> None:
        self.paths = expand(paths)
        self.filters = filters
        self.skipped = 0

    def __iter__(self) -> Iterator[CostRecord]:
        for path in self.paths:
            for line in read_lines(Piece(path)):
                try:
                    record = orjson.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("timestamp"), str):
                        raise TypeError("not a record")
                    complete = _DEFAULTS | {"priced": record.get("total_cost") is not None} | record
                    if not _well_typed(complete):
                        raise TypeError("a field of the wrong type")
                    keep = self.filters.matches(complete)
                except (orjson.JSONDecodeError, TypeError):
                    if line.strip():
                        self.skipped += 1
                    continue
                if keep:
                    yield cast(CostRecord, complete)


_COUNTED = ("input_tokens", "output_tokens", "total_tokens", "cached_input_tokens")


def _well_typed(record: dict[str, Any]) -> bool:
    """The numbers reports add up are numbers (summarise skips the same records by catching TypeError)."""
    counts = (record[name] for name in _COUNTED)
    cost = record["total_cost"]
    return (
        all(isinstance(count, int) for count in counts)
        and isinstance(record["status_code"], int)
        and (cost is None or isinstance(cost, (int, float)))
    )


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
        """The period [start, end), an open side closed by the first or last matching record."""
        if self.first_timestamp is None or self.last_timestamp is None:
            return None
        start = self.period.start or from_stamp(self.first_timestamp)
        end = self.period.end or from_stamp(self.last_timestamp) + timedelta(microseconds=1)
        return start, end

    def timeline(self, unit: TimeUnit) -> list[tuple[str, Tally]]:
        """Every hour or day of the bounds, in order, those without records as zero tallies."""
        bounds = self.bounds()
        return [] if bounds is None else timeline(self.by_hour, unit, *bounds)


def summarise(
    paths: Iterable[str | Path],
    filters: Filters = Filters(),
    exchange: Exchange = REPORTING_USD,
    *,
    workers: int = 1,
    parallel_min_bytes: int = PARALLEL_MIN_BYTES,
) -> Summary:
    """Read the files once and total the matching records; workers > 1 reads big plain files in parallel."""
    pieces = split(expand(paths), workers, parallel_min_bytes)
    if workers > 1 and len(pieces) > 1:
        # fork: the workers need nothing re-imported, and a process pool of 2 starts in milliseconds.
        with ProcessPoolExecutor(min(workers, len(pieces)), mp_context=get_context("fork")) as pool:
            scans = list(pool.map(_scan, pieces, [filters] * len(pieces)))
    else:
        scans = [_scan(piece, filters) for piece in pieces]
    groups: Groups = {}
    hours: Groups = {}
    for scan in scans:
        merge_groups(groups, scan.groups)
        merge_groups(hours, scan.hours)
    return _summary(filters.period, exchange, groups, hours, scans)


@dataclass
class _Scan:
    """Counts [requests, input, output, total, cached, errors, cost units] by group and by hour."""

    groups: Groups = field(default_factory=dict)
    hours: Groups = field(default_factory=dict)
    skipped: int = 0
    first: str | None = None
    last: str | None = None


def _scan(piece: Piece, filters: Filters) -> _Scan:
    """One pass over a piece, counting each matching record into its group and its hour."""
    loads, decode_error, scanned, scale = orjson.loads, orjson.JSONDecodeError, _SCANNED, UNIT_SCALE
    low, high = filters.period.start_stamp, filters.period.end_stamp
    low_bytes = b"" if low is None else low.encode()
    high_bytes = b"\xff" if high is None else high.encode()
    bounded = low is not None or high is not None
    test = filters.field_test()
    groups: Groups = {}
    hours: Groups = {}
    skipped = 0
    first, last = "\U0010ffff", ""
    for line in read_lines(piece):
        # Skip lines outside the period unparsed: writers put the fixed-width timestamp first.
        if bounded and line.startswith(_TIMESTAMP_PREFIX):
            stamp_bytes = line[_STAMP_SLICE]
            if stamp_bytes < low_bytes or stamp_bytes >= high_bytes:
                continue
        try:
            record = loads(line)
            try:
                values = scanned(record)
            except KeyError:
                values = scanned(_DEFAULTS | record)
            (
                stamp,
                provider,
                model,
                user,
                task,
                currency,
                cost,
                priced,
                input_tokens,
                output_tokens,
                total_tokens,
                cached,
                status,
                error,
                session,
            ) = values
            if (low is not None and stamp < low) or (high is not None and stamp >= high):
                continue
            if test is not None and not test(provider, model, user, task, session, status, error):
                continue
            unpriced = cost is None or priced is False
            units = 0 if unpriced else int(cost * scale)
            failed = 1 if error is not None or status >= 400 else 0
            # Typed before anything is counted, so a record with a field of the wrong type is skipped whole.
            input_tokens + output_tokens + total_tokens + cached + 0  # noqa: B018
            group = groups.get((provider, model, user, task, currency, unpriced))
            hour = hours.get((stamp[:13], currency, unpriced))
        except (decode_error, TypeError, ValueError, OverflowError):
            if line.strip():
                skipped += 1
            continue
        if group is None:
            group = groups[(provider, model, user, task, currency, unpriced)] = [0, 0, 0, 0, 0, 0, 0]
        if hour is None:
            hour = hours[(stamp[:13], currency, unpriced)] = [0, 0, 0, 0, 0, 0, 0]
        group[0] += 1
        group[1] += input_tokens
        group[2] += output_tokens
        group[3] += total_tokens
        group[4] += cached
        group[5] += failed
        group[6] += units
        hour[0] += 1
        hour[1] += input_tokens
        hour[2] += output_tokens
        hour[3] += total_tokens
        hour[4] += cached
        hour[5] += failed
        hour[6] += units
        if stamp < first:
            first = stamp
        if stamp > last:
            last = stamp
    return _Scan(groups, hours, skipped, first if last else None, last or None)


def _summary(
    period: Period, exchange: Exchange, groups: Groups, hours: Groups, scans: list[_Scan]
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
    for (provider, model, user, task, currency, unpriced), counts in groups.items():
        model_name = f"{provider}/{model if model is not None else NONE}"
        add_group(summary.totals, counts, currency, unpriced, exchange)
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
                unpriced,
                exchange,
            )
        if unpriced:
            summary.unpriced_models[model_name] = summary.unpriced_models.get(model_name, 0) + counts[0]
    for (hour, currency, unpriced), counts in sorted(hours.items()):
        add_group(summary.by_hour.setdefault(hour, Tally()), counts, currency, unpriced, exchange)
    for table in (summary.by_provider, summary.by_model, summary.by_user, summary.by_task_type):
        ranked = sorted(table.items(), key=lambda item: (-item[1].cost, -item[1].requests, item[0]))
        table.clear()
        table.update(ranked)
    return summary
