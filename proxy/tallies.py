"""Tally: the requests, tokens, errors and costs of a group of records, and time series of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from proxy.money import Exchange, units_to_decimal
from proxy.periods import LAST_MOMENT
from proxy.routing import api_of

TimeUnit = Literal["hour", "day"]
# What a group's cost is: summed ("cost"), none as the model has no price ("unpriced"), none as the call
# was forwarded as is, not metered ("forwarded": no model and no usage, so nothing to price; counted among
# the unpriced too), or none as the call reported no usage, a failed one say ("no_usage": priced, cost null).
CostState = Literal["cost", "unpriced", "forwarded", "no_usage"]


def forwarded_as_is(model: str | None, usage_source: object, endpoint: object) -> bool:
    """Whether an unpriced call is one the proxy forwarded as is, without metering it (README, "The record").

    Its record names no model and says its usage source is `none`. A metered call names its model, except
    on the images API, where the model is optional: such a call without usage was still billed, so it stays
    an unpriced one. A record without `usage_source` (an older writer's) does not say, and stays unpriced.
    """
    return (
        model is None
        and usage_source == "none"
        and not (isinstance(endpoint, str) and api_of(endpoint)[0] == "images")
    )


@dataclass
class Tally:
    """Counts of a group of calls; `cost` holds only priced calls with usage in currencies with a rate.

    `unpriced` counts every call without a price; `forwarded` the part of them forwarded as is, unmetered.
    """

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    errors: int = 0
    unpriced: int = 0
    forwarded: int = 0
    no_usage: int = 0
    cost: Decimal = Decimal(0)
    costed_requests: int = 0
    costed_tokens: int = 0
    unconverted: dict[str, Decimal] = field(default_factory=dict)

    @property
    def cost_per_request(self) -> Decimal | None:
        return self.cost / self.costed_requests if self.costed_requests else None

    @property
    def cost_per_1k_tokens(self) -> Decimal | None:
        return self.cost * 1000 / self.costed_tokens if self.costed_tokens else None

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.total_tokens += other.total_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.errors += other.errors
        self.unpriced += other.unpriced
        self.forwarded += other.forwarded
        self.no_usage += other.no_usage
        self.cost += other.cost
        self.costed_requests += other.costed_requests
        self.costed_tokens += other.costed_tokens
        for currency, amount in other.unconverted.items():
            self.unconverted[currency] = self.unconverted.get(currency, Decimal(0)) + amount


def add_group(tally: Tally, counts: list[int], currency: str, state: CostState, exchange: Exchange) -> None:
    """Add the scan counts [requests, input, output, total, cached, errors, cost units] of one currency."""
    requests, input_tokens, output_tokens, total_tokens, cached, errors, units = counts
    tally.requests += requests
    tally.input_tokens += input_tokens
    tally.output_tokens += output_tokens
    tally.total_tokens += total_tokens
    tally.cached_input_tokens += cached
    tally.errors += errors
    if state == "unpriced" or state == "forwarded":
        tally.unpriced += requests
        if state == "forwarded":
            tally.forwarded += requests
        return
    if state == "no_usage":
        tally.no_usage += requests
        return
    amount = units_to_decimal(units)
    converted = exchange.convert(amount, currency)
    if converted is None:
        tally.unconverted[currency] = tally.unconverted.get(currency, Decimal(0)) + amount
        return
    tally.cost += converted
    tally.costed_requests += requests
    tally.costed_tokens += total_tokens


def timeline(
    by_hour: dict[str, Tally], unit: TimeUnit, start: datetime, end: datetime
) -> list[tuple[str, Tally]]:
    """Tallies per hour ("2026-11-23T10") or day ("2026-11-23") in [start, end), gaps as zeros."""
    width = 13 if unit == "hour" else 10
    buckets: dict[str, Tally] = {}
    for hour, tally in by_hour.items():
        buckets.setdefault(hour[:width], Tally()).add(tally)
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    moment = start.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        moment = moment.replace(hour=0)
    last = LAST_MOMENT - step  # from the calendar's last hour or day, there is no next one
    series: list[tuple[str, Tally]] = []
    while moment < end or not series:
        key = moment.strftime("%Y-%m-%dT%H" if unit == "hour" else "%Y-%m-%d")
        series.append((key, buckets.get(key, Tally())))
        if moment > last:
            break
        moment += step
    return series
