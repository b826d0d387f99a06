"""Rolling 24-hour totals for /health, kept from the record file itself (the source of truth).

Every worker folds in the lines appended since it last looked, whoever wrote them, so with several
workers each /health shows all of them. Totals live in one-minute buckets: a record leaves the
window when its minute is more than 24 hours old. At start-up only the file's tail is read, and
every read is folded a piece at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from pathlib import Path
from typing import BinaryIO, TypedDict

import msgspec
from msgspec import UNSET

from proxy.counts import forwarded
from proxy.filters import NONE, CountedFields, decode_counted
from proxy.records import record_time

WINDOW = timedelta(hours=24)
# Records are written when a call ends but stamped when it began, so the file is only roughly in
# time order; read back this much further than the window before trusting that the rest is older.
_SLACK = timedelta(hours=2)
_TAIL_BLOCK = 1 << 20
# The most read and folded at once, so memory stays flat however long the tail (read whole, a 108 MB
# tail took the process to 240 MB at start-up; in pieces, to 38 MB).
PIECE_BYTES = 4 << 20
# How much of the last line folded is kept, to tell a file emptied and written again under the same
# inode (logrotate's copytruncate) from one appended to: a record's whole line, its time and ids in it.
_MARK_BYTES = 64 << 10
# A line is a record when the fields counted here have the record format's types and its timestamp is an
# ISO time (records.record_time): the reports' rule.
_DECODER = msgspec.json.Decoder(CountedFields)
# Costs are added and converted here with every digit (never divided, so always exactly): Decimal's default
# 28 digits cut 3 + 2.220446049250314e-16 to 3.000000000000000222044604925, below halfway to the next
# float, and /health showed 3.0 where the records add up to 3.0000000000000004.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


class CostStats(TypedDict):
    total_cost: float
    currency: str
    requests: int
    errors: int
    unpriced_requests: int  # calls whose model has no price, so their cost is in no total (reports' rule)
    input_tokens: int
    output_tokens: int
    total_tokens: int
    provider_costs: dict[str, float]
    model_costs: dict[str, float]
    unconverted: dict[str, float]


@dataclass(slots=True)
class _Bucket:
    requests: int = 0
    errors: int = 0
    unpriced: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    costs: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)


def _minute(timestamp: str) -> str:
    return timestamp[:16]  # "2026-11-23T10:30": ISO timestamps of one format sort as text


class RollingTotals:
    def __init__(
        self,
        path: Path,
        currency: str,
        exchange_rates: Mapping[str, Decimal],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self.path = path
        self.currency = currency
        self.rates = exchange_rates
        self.clock = clock
        self.piece_bytes = piece_bytes
        self._buckets: dict[str, _Bucket] = {}
        self._offset = 0
        self._mark = b""  # the end of the file's last line folded, up to _offset
        self._inode: int | None = None
        self.problem: str | None = None  # why the file could not be read at the last look, or None

    def load(self) -> None:
        """Rebuild the window from the file's tail, reading backwards only as far as needed."""
        self._buckets.clear()
        self._mark = b""
        self._offset = 0
        self._inode = None
        try:
            with open(self.path, "rb") as file:
                stat = os.fstat(file.fileno())
                self._offset = self._fold_back(file, stat.st_size)
                self._inode = stat.st_ino
        except OSError as exc:
            self._unread(exc)
        else:
            self.problem = None

    def _fold_back(self, file: BinaryIO, size: int) -> int:
        """Fold the file's whole lines from its end backwards, a block at a time, up to a block whose
        newest record is older than the window; return where the last whole line ends.

        The newest of a block, not any one line's: a record stamped far in the past (a clock that was
        wrong for a while, a line from elsewhere) must not end the read-back before records of the window.
        """
        oldest = _minute(_iso(self.clock() - WINDOW - _SLACK))
        block_bytes = min(self.piece_bytes, _TAIL_BLOCK)
        end = -1  # where the last whole line ends, once found: a last line still without its newline waits
        later = b""  # the start of the block after this one, up to its first newline: a line begun here
        position = size
        while position > 0:
            start = max(0, position - block_bytes)
            file.seek(start)
            data = file.read(position - start) + later
            position = start
            if end < 0:
                whole = data.rfind(b"\n") + 1
                if not whole:
                    later = data
                    continue
                end, data = start + whole, data[:whole]
                self._mark = _last_line(data)
            first = data.find(b"\n") + 1 if start else 0
            if start and not first:
                later = data  # inside a line longer than a block: joined once, when it begins
                continue
            newest = self._fold(data[first:] if first else data)
            later = data[:first]
            if newest and _minute(newest) < oldest:
                break  # a block without records cannot tell where the window starts: read on
        return max(end, 0)

    def refresh(self) -> None:
        """Fold in every whole line appended since the last look (by this worker or another)."""
        try:
            with open(self.path, "rb") as file:
                stat = os.fstat(file.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset or self._rewritten(file):
                    self._inode = stat.st_ino
                    self._offset = 0
                    self._mark = b""
                    self._buckets.clear()
                if stat.st_size != self._offset:
                    file.seek(self._offset)
                    self._fold_lines(file, stat.st_size)
        except OSError as exc:
            self._unread(exc)
        else:
            self.problem = None

    def _unread(self, exc: OSError) -> None:
        """A failed read of the file leaves the totals as they are, where it stopped the proxy at start-up
        and answered /health with a 500. No file at the path (moved away, or its folder) is no problem;
        another failure (a folder at the path, no permission to read) is one /health names."""
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            self.problem = None
        else:
            self.problem = (
                f"cannot read cost-tracking file {self.path} ({exc.strerror or exc}): cost_stats_24h are "
                "the totals last read from it"
            )

    def _rewritten(self, file: BinaryIO) -> bool:
        """Whether the last line folded is no longer where it was: the file was emptied and written again
        past that point since the last look (logrotate's copytruncate), which its size does not tell."""
        if not self._mark:
            return False
        file.seek(self._offset - len(self._mark))
        return file.read(len(self._mark)) != self._mark

    def _fold_lines(self, file: BinaryIO, end: int) -> None:
        """Fold the whole lines from the file's position to `end`, a piece of at most piece_bytes at a time.

        Each piece is folded up to its last newline and the rest carried to the next; `_offset` follows
        the last whole line folded, so a last line still without its newline waits for it.
        """
        self._offset = position = file.tell()
        carried: list[bytes] = []
        while position < end:
            piece = file.read(min(self.piece_bytes, end - position))
            if not piece:
                return  # the file was cut short since its size was taken
            position += len(piece)
            whole = piece.rfind(b"\n") + 1
            if not whole:
                carried.append(piece)  # a line longer than a piece: joined once, when it ends
                continue
            lines = b"".join([*carried, memoryview(piece)[:whole]])
            self._fold(lines)
            self._offset += len(lines)
            self._mark = _last_line(lines)
            carried = [piece[whole:]]

    def _fold(self, data: bytes) -> str:
        """Fold the records of these whole lines in; return the newest timestamp among them ("" if none)."""
        buckets = self._buckets
        to_stamp, add = record_time, _EXACT.add
        newest = ""
        # Lines end at a newline only, as the reports read them: splitlines() also cut at a carriage
        # return, JSON whitespace, so a record with one between its fields was two halves, both skipped.
        for line in data.split(b"\n"):
            record = decode_counted(_DECODER, line)
            if record is None:
                # A torn or foreign line (one whose timestamp is a list, or cut inside a character, once
                # kept the proxy from starting): skipped here, as the reports skip and count it.
                continue
            stamp = to_stamp(record.timestamp)
            if stamp is None:
                continue  # "yesterday" would sort after every minute and never leave the window
            if stamp > newest:
                newest = stamp
            minute = _minute(stamp)
            bucket = buckets.get(minute)
            if bucket is None:
                bucket = buckets[minute] = _Bucket()
            bucket.requests += 1
            if record.error is not None or record.status_code >= 400:
                bucket.errors += 1
            bucket.input_tokens += record.input_tokens
            bucket.output_tokens += record.output_tokens
            bucket.total_tokens += record.total_tokens
            cost, priced = record.total_cost, record.priced
            if priced is UNSET:  # an older writer's record: priced when it has a cost
                priced = cost is not None
            if not priced:
                # No price, so no cost in a total, whatever another writer put beside it (the reports' rule).
                if not forwarded(record):
                    bucket.unpriced += 1
            elif cost is not None:
                model = record.model if record.model is not None else NONE  # the reports' name for none
                key = (record.currency, record.provider, model)
                bucket.costs[key] = add(bucket.costs.get(key, Decimal(0)), Decimal(repr(cost)))
        return newest

    def snapshot(self) -> CostStats:
        self.refresh()
        now = self.clock()
        cutoff, current = _minute(_iso(now - WINDOW)), _minute(_iso(now))
        for minute in [m for m in self._buckets if m <= cutoff]:
            del self._buckets[minute]
        add, multiply = _EXACT.add, _EXACT.multiply
        total = Decimal(0)
        providers: dict[str, Decimal] = {}
        models: dict[str, Decimal] = {}
        unconverted: dict[str, Decimal] = {}
        stats = CostStats(
            total_cost=0.0,
            currency=self.currency,
            requests=0,
            errors=0,
            unpriced_requests=0,
            input_tokens=0,
            output_tokens=0,
            total_tokens=0,
            provider_costs={},
            model_costs={},
            unconverted={},
        )
        for minute, bucket in self._buckets.items():
            if minute > current:
                # Stamped ahead of the clock (a clock put back, a line from elsewhere): not one of the
                # last 24 hours until its time comes, or a stamp years ahead would be counted for years.
                continue
            stats["requests"] += bucket.requests
            stats["errors"] += bucket.errors
            stats["unpriced_requests"] += bucket.unpriced
            stats["input_tokens"] += bucket.input_tokens
            stats["output_tokens"] += bucket.output_tokens
            stats["total_tokens"] += bucket.total_tokens
            for (currency, provider, model), cost in bucket.costs.items():
                rate = Decimal(1) if currency == self.currency else self.rates.get(currency)
                if rate is None:
                    unconverted[currency] = add(unconverted.get(currency, Decimal(0)), cost)
                    continue
                converted = multiply(cost, rate)
                total = add(total, converted)
                providers[provider] = add(providers.get(provider, Decimal(0)), converted)
                name = f"{provider}/{model}"
                models[name] = add(models.get(name, Decimal(0)), converted)
        stats["total_cost"] = float(total)
        stats["provider_costs"] = {name: float(cost) for name, cost in sorted(providers.items())}
        stats["model_costs"] = {name: float(cost) for name, cost in sorted(models.items())}
        stats["unconverted"] = {code: float(cost) for code, cost in sorted(unconverted.items())}
        return stats


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _last_line(lines: bytes) -> bytes:
    """The last of these whole lines, or its last _MARK_BYTES."""
    start = lines.rfind(b"\n", 0, len(lines) - 1) + 1
    return lines[max(start, len(lines) - _MARK_BYTES) :]
