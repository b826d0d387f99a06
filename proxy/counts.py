"""One pass over a piece of a record file, counting matching records per group and per hour.

The reports' hot loop (issue 3, Speed): each line is parsed once and its numbers added to two small
tables, so memory stays flat however many records there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from proxy.filters import DEFAULTS, Filters
from proxy.money import UNIT_SCALE
from proxy.sources import Piece, read_lines

# Counts per (provider, model, user, task_type, currency, unpriced) and per (hour, currency, unpriced):
# [requests, input tokens, output tokens, total tokens, cached input tokens, errors, cost units].
Groups = dict[Any, list[int]]
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


@dataclass
class Counts:
    """Counts [requests, input, output, total, cached, errors, cost units] by group and by hour."""

    groups: Groups = field(default_factory=dict)
    hours: Groups = field(default_factory=dict)
    skipped: int = 0
    first: str | None = None
    last: str | None = None


def count(piece: Piece, filters: Filters) -> Counts:
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
                values = scanned(DEFAULTS | record)
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
    return Counts(groups, hours, skipped, first if last else None, last or None)


def merge_groups(into: Groups, counts: Groups) -> None:
    for key, values in counts.items():
        mine = into.get(key)
        if mine is None:
            into[key] = list(values)
        else:
            into[key] = [a + b for a, b in zip(mine, values, strict=True)]
