"""The only place that prices calls. Pure: no I/O; an unknown model gives None, never raises."""

from __future__ import annotations

import re
from typing import NamedTuple

from proxy.config import Price, Provider
from proxy.usage import Usage

# gpt-4o-2024-08-06, claude-3-5-sonnet-20241022, gpt-4-0613: the dated names of a priced model.
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


class Cost(NamedTuple):
    input_cost: float
    output_cost: float
    total_cost: float
    applied: Price  # the prices used: the base price, or the tier the call's input fell in


def price_call(usage: Usage, price: Price) -> Cost:
    """Cost of one call, computed exactly and rounded to float only once, at the end.

    (input - cached - cache-written) x input price + cached x cached-input price + (cache-written -
    1-hour cache-written) x cache-write price + 1-hour cache-written x 1-hour cache-write price, and
    output x output price, each per 1M tokens. In whole numbers (`Price.whole`) rather than Decimal,
    for speed: Python's int / int is correctly rounded, so each cost is the float nearest the exact
    amount, as float(Decimal) of the exact amount is.
    A price with tiers prices the whole call at the highest tier its input tokens are above.
    """
    applied = price
    for tier in price.tiers:
        if usage.input_tokens > (tier.above_input_tokens or 0):
            applied = tier
    whole = applied.whole
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    written_1h = min(usage.cache_write_1h_tokens, written)  # a part of the writes, whoever counted them
    uncached = max(usage.input_tokens - cached - written, 0)
    input_units = (
        uncached * whole.input
        + cached * whole.cached_input
        + (written - written_1h) * whole.cache_write
        + written_1h * whole.cache_write_1h
    )
    output_units = usage.output_tokens * whole.output
    per = whole.per
    return Cost(input_units / per, output_units / per, (input_units + output_units) / per, applied)


def find_price(provider: Provider, requested: str | None, response_model: str | None) -> Price | None:
    """The requested model's price; else the model the response names; else either without a date."""
    models = provider.models
    for name in (requested, response_model):
        if name and name in models:
            return models[name]
    for name in (requested, response_model):
        if name:
            undated = _DATE_SUFFIX.sub("", name)
            if undated in models:
                return models[undated]
    return None
