"""The record shape ("v": 1) and the JSONL writer: one os.write() of one whole line per call."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypedDict

import orjson

from proxy import periods

log = logging.getLogger("meterproxy")

RECORD_VERSION = 1

UsageSource = Literal["provider", "estimated", "none"]
CallError = Literal[
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_reset",
    "upstream_bad_response",
    "stream_error",
    "client_disconnected",
    "shutdown",
    "pool_timeout",
]


class PriceApplied(TypedDict):
    """The per-1M prices a call was priced at, so a later price change never makes it unexplainable."""

    input: float
    output: float
    cached_input: float
    cache_write: float
    tier: int | None  # the tier's above_input_tokens, or None for the base price
    cache_write_1h: float  # the 1-hour cache-write price (cache_write when the config sets none)


class CostRecord(TypedDict):
    """One metered call. The format only grows: fields are added, never renamed or re-meant."""

    timestamp: str
    request_id: str
    user_id: str
    ip_address: str | None
    provider: str
    model: str | None
    endpoint: str
    is_streaming: bool
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_cost: float | None
    output_cost: float | None
    total_cost: float | None
    finish_reason: str | None
    v: int
    response_model: str | None
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    currency: str
    priced: bool
    usage_source: UsageSource
    status_code: int
    error: CallError | None
    duration_ms: float
    ttfb_ms: float | None
    proxy_request_id: str
    session_id: str | None
    task_type: str | None
    provider_reported_cost: float | None
    price: PriceApplied | None
    cache_write_1h_tokens: int  # the part of cache_write_tokens written with a 1-hour TTL (Anthropic's)


# Bound once, as the reports call it per record: `datetime.fromisoformat` makes a bound method per look-up.
_read_time = datetime.fromisoformat
# The record format's separators, at its characters 4, 7, 10, 13, 16 and 19: 2026-11-23T10:30:00.123456Z.
STAMP_LAYOUT = "--T::."


def record_time(stamp: str) -> str | None:
    """The timestamp in the record format (UTC, to the microsecond, with Z), or None when it is not an ISO
    time that is a moment of the calendar in UTC. A line stamped otherwise is not a record, for /health
    and the reports alike: such a stamp places a call in no hour, period or window
    (9999-12-31T23:00:00-05:00 is in the year 10000 in UTC).

    Readers compare timestamps and cut hours out of them as text, which holds only for the record format:
    another writer's 2026-11-01T01:30:00-05:00 is 2026-11-01T06:30:00.000000Z, in the 06:00 hour (UTC),
    not the 01:00 one. A stamp without a zone is UTC, as --start and --end read one.
    """
    try:
        moment = _read_time(stamp)
    except ValueError:
        return None
    if stamp[26:] == "Z" and stamp[4:20:3] == STAMP_LAYOUT:
        return stamp  # the proxy's own
    try:
        return periods.stamp(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    except OverflowError:
        return None


def is_record_time(stamp: str) -> bool:
    """Whether a timestamp is an ISO time that is a moment of the calendar in UTC (see record_time)."""
    return record_time(stamp) is not None


class RecordWriter:
    """Appends records to a JSONL file opened with O_APPEND, so workers can share it.

    Each record is a single write() of a whole line: concurrent writers never interleave inside a
    line, and a crash can at worst leave the last line torn. The next record, whoever writes it, finds
    the torn line before it once written, and is written again on a line of its own (`_write`). A failed
    write never stops the proxy: the record goes to stderr as JSON and is counted.
    """

    # Only a write tells whether the file takes records again (a full disk, a quota): after a failed
    # write, `accepting()` lets one call through per this many seconds, and its record finds out.
    RETRY_SECONDS = 1.0
    # How often a record looks whether the file was moved or deleted (a rotation): records go to the
    # moved file for at most this long before a new one is started at `path`.
    LOOK_SECONDS = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped = 0
        self.problem: str | None = None
        self._fd: int | None = None
        self._end = -1  # where this writer's last record ended in the file (-1: none since it opened it)
        self._write_failed_at: float | None = None
        self._next_look = 0.0  # time.monotonic() at which the next record looks for a rotation

    def open(self) -> None:
        """Open the file unless it is open. A failure to open is cleared here; a failed write is cleared
        only by a record written."""
        if self._fd is not None:
            return
        try:
            self._fd = self._open_path()
            self._end = -1
        except OSError as exc:
            self._fail(exc)
            return
        if self._write_failed_at is None:
            self.problem = None

    def _open_path(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read too: a record's write looks at the byte before it (`_write`).
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)

    def follow(self) -> OSError | None:
        """Start a new file at `path` if the open one was moved or deleted (logrotate's default `create`,
        or a `mv` by hand), so that records go where readers look; the moved file keeps those written to
        it. If no file can be opened at `path`, records go on to the moved file, but not to a deleted one,
        where no reader would ever find them: they are dropped to stderr, counted, until a file can be
        opened there. The error says why."""
        if not self._replaced():
            return None
        try:
            fd = self._open_path()
        except OSError as exc:
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                self._fail(exc)
            return exc
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._end = fd, -1
        return None

    def accepting(self) -> bool:
        """Whether to serve a call under fail_closed: the file is open and took the last record, or the
        last failed write is RETRY_SECONDS old (this call's record finds out)."""
        self.open()
        if self.problem is None:
            return True
        now = time.monotonic()
        if self._write_failed_at is not None and now - self._write_failed_at >= self.RETRY_SECONDS:
            self._write_failed_at = now
            return True
        return False

    def check(self) -> str | None:
        """What stops records from reaching the file now, or None. Opens it if it is not open (after a
        failure to open, the file may be writable again)."""
        self.open()
        if self.problem is not None:
            return self.problem
        failed = self.follow()
        if self.problem is not None:  # follow() found the file deleted: its records go to stderr
            return self.problem
        if failed is not None:
            return (
                f"cost-tracking file {self.path} was moved or deleted while the proxy runs, and no new one "
                f"can be opened there ({failed.strerror or failed}): records still go to the old file"
            )
        if not os.access(self.path, os.W_OK):
            return f"cannot write cost-tracking file {self.path}: permission denied"
        return None

    def _replaced(self) -> bool:
        """Whether the open file is no longer the one at `path`: moved or deleted while the proxy runs
        (its records still go to the open file, so they are not where a reader looks for them)."""
        if self._fd is None:
            return False
        try:
            at_path = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:  # cannot tell (no permission to look): the open file stays
            return False
        opened = os.fstat(self._fd)
        return (at_path.st_dev, at_path.st_ino) != (opened.st_dev, opened.st_ino)

    def _write(self, fd: int, line: bytes) -> int:
        """Append `line`; the bytes written. A writer killed inside its write, or stopped by a full disk,
        leaves its line torn (this process before a restart, or another worker while this one writes
        on), and a line written after it joins it. So the byte before the line is looked at once the
        line is written: writes to an O_APPEND file are whole and one at a time, so that byte is final.
        (Looked at before, the file's end may be inside another worker's write under way, as the file
        grows page by page, and a whole line be taken for a torn one.) A line that joined a torn one,
        which stays unreadable, is written again on a line of its own. The byte is read only when
        another write came since this writer's last one (lseek 0.5 us, pread 1.5 us per record)."""
        previous, self._end = self._end, -1  # unknown until found below: the next record looks before it
        written = os.write(fd, line)
        if written != len(line):  # cut short (a full disk): a torn line itself
            return written
        try:  # the line is in: a failure to look must not drop its record
            end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: where this write ended
            start = end - written
            joined = start != previous and start > 0 and os.pread(fd, 1, start - 1) != b"\n"
        except OSError:
            return written
        if joined:
            return os.write(fd, line)  # an error here drops the record: its first copy is unreadable
        self._end = end
        return written

    def append(self, record: CostRecord) -> None:
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:
            # A value orjson cannot write (an integer over 64 bits): the file must not get a line its
            # readers may not read, and the call must not be lost, so it goes to stderr as JSON anyway.
            log.error(
                "the record of %s cannot be written (%s): it goes to stderr", record["proxy_request_id"], exc
            )
            self._drop((json.dumps(record, default=repr) + "\n").encode())
            return
        if self._fd is None:
            self.open()
        elif (now := time.monotonic()) >= self._next_look:
            self._next_look = now + self.LOOK_SECONDS
            self.follow()
        if self._fd is not None:
            try:
                written = self._write(self._fd, line)
            except OSError as exc:
                self._fail(exc, writing=True)
            else:
                if written == len(line):
                    if self._write_failed_at is not None:
                        self._write_failed_at = self.problem = None
                    return
                # The disk filled up inside this line: the torn part stays, the next record closes it off.
                self._fail(OSError(f"disk full, wrote {written} of {len(line)} bytes"), writing=True)
        self._drop(line)

    def _drop(self, line: bytes) -> None:
        self.dropped += 1
        try:
            sys.stderr.buffer.write(b'{"dropped_record": ' + line[:-1] + b"}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            # stderr gone too (a closed pipe, a full disk): the record has nowhere left to go, and its call
            # still gets its answer; dropped_records counts it.
            pass

    def _fail(self, exc: OSError, writing: bool = False) -> None:
        self.problem = f"cannot write cost-tracking file {self.path}: {exc.strerror or exc}"
        if writing:
            self._write_failed_at = time.monotonic()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
