"""Which records a report counts: a period and filters; records of other writers completed with defaults."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, cast

import msgspec

from proxy.money import UNIT_SCALE
from proxy.periods import ALL_TIME, Period
from proxy.records import RECORD_VERSION, CostRecord, is_record_time, record_time

NONE = "(none)"  # the name shown for a missing model, task type or session
RECORD_FIELDS: tuple[str, ...] = tuple(CostRecord.__annotations__)
# What a record lacks when an older or other writer left a field out (the format only grows).
DEFAULTS: dict[str, Any] = dict.fromkeys(RECORD_FIELDS) | {
    "request_id": "",
    "user_id": "anonymous",
    "provider": NONE,
    "endpoint": "",
    "is_streaming": False,
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "v": RECORD_VERSION,
    "cached_input_tokens": 0,
    "cache_write_tokens": 0,
    "reasoning_tokens": 0,
    "currency": "USD",
    "priced": True,
    "usage_source": "provider",
    "status_code": 200,
    "duration_ms": 0.0,
    "proxy_request_id": "",
    "cache_write_1h_tokens": 0,
}
# The largest cost a report can add up in units of 2**-100 (about 1e278): a bigger one is not a cost.
_MAX_COST = sys.float_info.max / UNIT_SCALE
_Cost = Annotated[float, msgspec.Meta(ge=-_MAX_COST, le=_MAX_COST)]


_NULL = msgspec.Raw(b"null")


class CountedFields(msgspec.Struct, gc=False):
    """The fields of a record that reports count, typed as in CostRecord; a missing one takes its default.

    Reports decode lines into this (issue 3, Speed): the other fields are passed over unbuilt, and a line
    whose counted fields have other types is not a record. The fields are in the order the proxy writes
    them, the order msgspec matches fastest.
    """

    timestamp: str
    user_id: str = DEFAULTS["user_id"]
    provider: str = DEFAULTS["provider"]
    model: str | None = DEFAULTS["model"]
    # Kept as the line's bytes, never checked nor built (a str per record costs a report a tenth of its
    # decoding): read only for an unpriced call, to tell one forwarded as is apart (counts.py).
    endpoint: msgspec.Raw = _NULL
    input_tokens: int = DEFAULTS["input_tokens"]
    output_tokens: int = DEFAULTS["output_tokens"]
    total_tokens: int = DEFAULTS["total_tokens"]
    total_cost: _Cost | None = DEFAULTS["total_cost"]
    cached_input_tokens: int = DEFAULTS["cached_input_tokens"]
    currency: str = DEFAULTS["currency"]
    # UNSET when an older writer left it out: then a record is priced when it has a cost.
    priced: bool | msgspec.UnsetType = msgspec.UNSET
    usage_source: msgspec.Raw = _NULL  # as `endpoint`
    status_code: int = DEFAULTS["status_code"]
    error: str | None = DEFAULTS["error"]
    session_id: str | None = DEFAULTS["session_id"]
    task_type: str | None = DEFAULTS["task_type"]


# What msgspec raises at a line that is not JSON of the counted fields: a DecodeError, or a RecursionError
# at values nested past the depth Python allows (orjson, which RecordReader uses, stops at 1,024 levels).
NOT_COUNTED_FIELDS = (msgspec.DecodeError, RecursionError)


def is_utf8(data: bytes) -> bool:
    """Whether the bytes are UTF-8, as JSON text must be (RFC 8259, 8.1).

    msgspec reads UTF-8 only in the strings it builds, and raises UnicodeDecodeError at one, not a
    DecodeError: a write cut inside a character of a model name, joined by the next record, stopped a
    report with a traceback, and the proxy at start-up. Bytes that are not UTF-8 in a field it passes
    over, it took for a record.
    """
    if data.isascii():  # records almost always are: this looks at each byte, 20x faster than decoding them
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode_counted(decoder: msgspec.json.Decoder[CountedFields], line: bytes) -> CountedFields | None:
    """The counted fields of a line, or None when it is not JSON of them (a torn or foreign line)."""
    if not is_utf8(line):
        return None
    try:
        return decoder.decode(line)
    except NOT_COUNTED_FIELDS:
        return None


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
        stamp = record_time(record["timestamp"])
        if stamp is None:
            return False
        low, high = self.period.start_stamp, self.period.end_stamp
        if (low is not None and stamp < low) or (high is not None and stamp >= high):
            return False
        test = self.field_test()
        return test is None or test(*(record[name] for name in _TEST_FIELDS))


_UNCHECKED = {"endpoint": _NULL, "usage_source": _NULL}  # CountedFields' raw fields: any value passes
_TEST_FIELDS = ("provider", "model", "user_id", "task_type", "session_id", "status_code", "error")


EVERY_RECORD = Filters()


def complete(record: dict[str, Any]) -> CostRecord | None:
    """The record with the fields an older writer left out filled in, or None if it is not a record.

    It is a record if its counted fields have their types and its timestamp is an ISO time: the test
    `summarise` and /health make of each line.
    """
    full = DEFAULTS | {"priced": record.get("total_cost") is not None} | record
    try:
        counted = msgspec.convert(full | _UNCHECKED, CountedFields)
    except msgspec.ValidationError:
        return None
    return cast(CostRecord, full) if is_record_time(counted.timestamp) else None
