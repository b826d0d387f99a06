"""One call as the meter sees it, and its bill: usage -> price -> cost -> the record. No I/O."""

from __future__ import annotations

import functools
import time
from decimal import Decimal
from typing import Any, NamedTuple

from proxy.codings import IDENTITY, Undecodable, codings, decoded
from proxy.config import Price, Provider
from proxy.facts import ResponseFacts, StreamFacts, facts_from_body
from proxy.pricing import Cost, find_price, price_call
from proxy.records import RECORD_VERSION, CallError, CostRecord, UsageSource
from proxy.upstream import UpstreamResponse
from proxy.usage import Api, Usage, estimate_usage

_NO_USAGE = Usage(0, 0, 0)
# The largest a compressed non-streamed answer is decoded to for its usage: as large as one read plain
# (relay.MAX_READ_BODY), where a few KiB of gzip may stand for gigabytes.
MAX_DECODED_BODY = 64 << 20


class Bill(NamedTuple):
    usage: Usage
    source: UsageSource
    price: Price | None  # the model's price as configured; None: unpriced
    cost: Cost | None  # None: unpriced, or usage unknown
    error: CallError | None
    facts: ResponseFacts | None
    # Why the answer could not be read or priced (a bug: the ledger logs it); its usage is then unknown.
    broken: Exception | None = None


class Call:
    """What one call has seen so far; its bill and record are worked out from it."""

    __slots__ = (
        "proxy_id", "arrived", "started", "provider", "model", "api", "stream", "user", "request",
        "endpoint", "ip", "session_id", "task_type", "status", "error", "ttfb", "facts", "body",
        "encoding", "response", "sent", "head_sent", "gone", "finished", "recorded", "unread", "_bill",
        "_bill_key",
    )  # fmt: skip

    def __init__(
        self, proxy_id: str, arrived: float, started: float, provider: Provider, model: str | None,
        api: Api | None, stream: bool, user: str, request: dict[str, Any],
    ) -> None:  # fmt: skip
        self.proxy_id = proxy_id
        self.arrived = arrived
        self.started = started
        self.provider = provider
        self.model = model
        self.api = api
        self.stream = stream
        self.user = user
        self.request = request
        self.endpoint = ""
        self.ip: str | None = None
        self.session_id: str | None = None
        self.task_type: str | None = None
        self.status = 0
        self.error: CallError | None = None
        self.ttfb: float | None = None
        self.facts: ResponseFacts | None = None
        self.body: bytes | None = None  # a non-streamed metered body, kept to read its usage
        self.encoding = b""
        self.response: UpstreamResponse | None = None
        self.sent = False  # the request went to the provider (it may have been billed from then on)
        self.head_sent = False  # the client has the response's status and headers
        self.gone = False
        self.finished = False
        self.recorded = False  # its record is written (a stream's, as soon as its last event is read)
        # Why a non-streamed answer was passed on as it came, its usage unread: too large, or compressed in a
        # way it cannot be decoded here (it ends "the answer was ..."); None when it was read.
        self.unread: str | None = None
        self._bill: Bill | None = None
        self._bill_key: tuple[Any, ...] = ()

    def runs_on(self) -> bool:
        """Whether the provider goes on generating once the client has left, and bills all of it: a
        streamed Responses call in background mode, which the client may reconnect to, once the provider
        has taken it (its 2xx head is in). Before that (waiting for an upstream slot, say) it is cut, so
        that no response is created that nobody will read."""
        return (
            200 <= self.status < 300
            and self.api == "responses"
            and self.stream
            and self.request.get("background") is True
        )

    def usage_to_come(self) -> bool:
        """Whether the answer is whole but for its usage, which its provider sends right after: a chat
        stream of one choice past its finish chunk (the usage chunk and [DONE] follow it)."""
        facts = self.facts
        return (
            isinstance(facts, StreamFacts)
            and facts.api == "chat"
            and facts.finish_reason is not None
            and not facts.done
            and self.request.get("n") in (None, 1)
        )

    def settle(self) -> Bill:
        """Usage, price and cost from what the call has seen; worked out again only when that changed."""
        if self._bill is None or self._state() != self._bill_key:
            try:
                self._bill = self._settle()
            except Exception as exc:  # any bug in reading the answer: the call keeps its answer and record
                self._bill = self._unread(exc)
            self._bill_key = self._state()
        return self._bill

    def _unread(self, exc: Exception) -> Bill:
        """The bill of a call whose answer could not be read or priced: a bug, which must cost the client
        neither its answer nor the call its record. Its usage is unknown, so its cost too (never 0)."""
        error: CallError | None = "client_disconnected" if self.gone else self.error
        price = find_price(self.provider, self.model, None) if self.model else None
        return Bill(_NO_USAGE, "none", price, None, error, None, exc)

    def _state(self) -> tuple[Any, ...]:
        facts = self.facts
        usage, events = (facts.usage, facts.events) if facts is not None else (None, 0)
        return self.status, self.error, self.gone, self.body is None, usage, events

    def _settle(self) -> Bill:
        error: CallError | None = "client_disconnected" if self.gone else self.error
        ok = 200 <= self.status < 300
        if self.facts is None and self.body is not None and self.api is not None and ok:
            body, self.body = self.body, None
            try:
                if self.encoding not in IDENTITY:
                    body = decoded(body, codings(self.encoding), MAX_DECODED_BODY)
            except Undecodable as exc:
                self.unread = str(exc)  # an answer we cannot read, not a bad one
            else:
                self.facts = facts_from_body(body, self.api)
                if self.facts is None and error is None:
                    self.error = error = "upstream_bad_response"
        facts = self.facts
        usage = facts.usage if facts is not None else None
        source: UsageSource = "provider" if usage is not None else "none"
        if isinstance(facts, StreamFacts):
            if facts.broken_off and ok and error is None:
                error = "stream_error"  # a 200 whose stream the provider broke off with an error
            if facts.events == 0 and ok and error is None:
                error = "upstream_bad_response"
            elif facts.partial and facts.events:
                # Ended before its final usage (cut, reset, left, or after an error event): the output
                # is estimated as any cut stream's is, never recorded as message_start's placeholder.
                usage, source = estimate_usage(self.request, facts.events, usage), "estimated"
            elif usage is None and error is not None and facts.events:
                usage, source = estimate_usage(self.request, facts.events), "estimated"
        response_model = facts.model if facts is not None else None
        price = find_price(self.provider, self.model, response_model) if self.model else None
        # A call never sent (its client left while it waited for an upstream slot) cost nothing.
        unbilled = not self.sent or not_billed(499 if self.gone else self.status, self.error)
        return Bill(usage or _NO_USAGE, source, price, cost_of(price, usage, unbilled), error, facts)

    def record(self, bill: Bill) -> CostRecord:
        usage, facts, cost = bill.usage, bill.facts, bill.cost
        now = time.perf_counter()
        return {
            "timestamp": iso_time(self.arrived),
            "request_id": (facts.response_id if facts is not None else None) or self.proxy_id,
            "user_id": self.user,
            "ip_address": self.ip,
            "provider": self.provider.name,
            "model": self.model,
            "endpoint": self.endpoint,
            "is_streaming": self.stream,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "input_cost": cost.input_cost if cost is not None else None,
            "output_cost": cost.output_cost if cost is not None else None,
            "total_cost": cost.total_cost if cost is not None else None,
            "finish_reason": facts.finish_reason if facts is not None else None,
            "v": RECORD_VERSION,
            "response_model": facts.model if facts is not None else None,
            "cached_input_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "currency": self.provider.currency,
            "priced": bill.price is not None,
            "usage_source": bill.source,
            "status_code": 499 if self.gone else self.status,
            "error": bill.error,
            "duration_ms": round((now - self.started) * 1000, 3),
            "ttfb_ms": round((self.ttfb - self.started) * 1000, 3) if self.ttfb is not None else None,
            "proxy_request_id": self.proxy_id,
            "session_id": self.session_id,
            "task_type": self.task_type,
            "provider_reported_cost": usage.provider_cost,
            "price": cost.applied.record if cost is not None else None,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        }


_NEVER_BILLED = (None, "pool_timeout", "upstream_unreachable")  # errors of calls the provider never had


def not_billed(status: int, error: CallError | None) -> bool:
    """Whether a call failed in a way nothing is billed for: the provider refused it (its own 4xx or 5xx),
    or it never reached the provider (no upstream slot came free, no connection could be made). A timeout
    or a reset may have been billed, and a client that left (499) may have left a call running."""
    return 400 <= status != 499 and error in _NEVER_BILLED


def cost_of(price: Price | None, usage: Usage | None, unbilled: bool) -> Cost | None:
    """The cost of a call: None when unpriced or its usage is unknown; 0 when nothing was billed for it."""
    if price is None:
        return None
    if usage is not None:
        return price_call(usage, price)
    return price_call(_NO_USAGE, price) if unbilled else None


def decimal_text(amount: float) -> str:
    """A cost as a plain decimal string, never in exponent form: 4.75e-05 -> "0.0000475"."""
    text = repr(amount)  # the shortest text that reads back as `amount`; exponent form below 1e-4, from 1e16
    if "e-" in text:
        # Its digits moved behind the point. Not Decimal: its first use in a call's task sets up a
        # decimal context for that task (~1 us). Not a float format either: at a tie it rounds the
        # exact binary value to even, and can end a digit below the shortest text (2**-24: ...062).
        digits, _, exponent = text.partition("e-")
        sign, digits = ("-", digits[1:]) if digits[0] == "-" else ("", digits)
        return f"{sign}0.{'0' * (int(exponent) - 1)}{digits.replace('.', '')}"
    return format(Decimal(text), "f") if "e" in text else text


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_time(moment: float) -> str:
    """UTC ISO-8601 with microseconds and Z; the formatted second is reused across its calls."""
    seconds = int(moment)
    micros = round((moment - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{_second(seconds)}.{micros:06d}Z"
