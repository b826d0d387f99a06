"""The config as frozen dataclasses, built once at start-up (configfile reads them from config.yml)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal, NamedTuple

from proxy.records import PriceApplied

ProviderKind = Literal["openai", "anthropic", "gemini"]
UpstreamClient = Literal["http1", "aiohttp"]


class ConfigError(Exception):
    """A config problem, its message naming the file, the key path and (where known) the line."""


class Secret:
    """A key whose repr never shows it (after starlette.datastructures.Secret)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def reveal(self) -> str:
        return self._value


class WholePrices(NamedTuple):
    """A Price's five prices as whole numbers of 1/`per` of a currency unit per token (`per` is 1M
    times a power of ten), so that a call is priced exactly in integers."""

    per: int
    input: int
    output: int
    cached_input: int
    cache_write: int
    cache_write_1h: int


@dataclass(frozen=True)
class Price:
    """Prices per 1M tokens, in the provider's currency."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal | None = None  # cache writes with a 1-hour TTL (Anthropic's); None: cache_write
    above_input_tokens: int | None = None  # set on a tier: it prices calls with more input tokens
    tiers: tuple[Price, ...] = ()  # by above_input_tokens, ascending

    @functools.cached_property
    def cache_write_1h_price(self) -> Decimal:
        """The price of a cache write with a 1-hour TTL."""
        return self.cache_write if self.cache_write_1h is None else self.cache_write_1h

    @functools.cached_property
    def whole(self) -> WholePrices:
        prices = (self.input, self.output, self.cached_input, self.cache_write, self.cache_write_1h_price)
        exponent = min(int(price.as_tuple().exponent) for price in prices)
        scale = 10 ** max(-exponent, 0)
        # Not int(price * scale): Decimal arithmetic keeps 28 digits, and a price may have more. Each
        # denominator is a power of ten up to scale, so the division is exact.
        ratios = (price.as_integer_ratio() for price in prices)
        return WholePrices(1_000_000 * scale, *(top * scale // bottom for top, bottom in ratios))

    @functools.cached_property
    def record(self) -> PriceApplied:
        """These prices as a record's `price` field; one dict per price, shared by its records (read-only)."""
        return {
            "input": float(self.input),
            "output": float(self.output),
            "cached_input": float(self.cached_input),
            "cache_write": float(self.cache_write),
            "tier": self.above_input_tokens,
            "cache_write_1h": float(self.cache_write_1h_price),
        }


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key: Secret | None
    timeout: float
    currency: str
    stream_usage: bool
    kind: ProviderKind
    models: Mapping[str, Price]


@dataclass(frozen=True)
class AuthKey:
    name: str
    key: Secret


@dataclass(frozen=True)
class Budgets:
    daily: Decimal | None
    monthly: Decimal | None
    warn_at: Decimal
    critical_at: Decimal


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    max_body_bytes: int
    upstream_client: UpstreamClient
    currency: str
    exchange_rates: Mapping[str, Decimal]
    cost_tracking: bool
    cost_in_response: bool
    record_file: Path
    providers: Mapping[str, Provider]
    auth_keys: tuple[AuthKey, ...]
    budgets: Budgets | None
    source: str
    fail_closed: bool = False  # answer 503 rather than serve a call whose record cannot be written
    drain_seconds: int = 30  # on SIGTERM, how long calls in flight may take before they are cut
    upstream_pool_size: int = 1000  # calls that may be with providers at once
    pool_timeout: float = 10.0  # how long a call waits for one of those before it gets 503
    body_timeout: float = 30.0  # how long a request body that did not come in one piece may take to arrive
