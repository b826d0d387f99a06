"""config.yml + environment -> Config: the file's keys, their defaults, and the checks across keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config import (
    AuthKey,
    Budgets,
    Config,
    ConfigError,
    Price,
    Provider,
    ProviderKind,
    Secret,
    UpstreamClient,
)
from proxy.configreader import ConfigReader, line_map, load_yaml, show

DEFAULT_RECORD_FILE = "logs/cost-tracking.jsonl"
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RESERVED_PROVIDER_NAMES = frozenset({"v1", "health"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_TOP_KEYS = {"server", "currency", "exchange_rates", "features", "providers", "auth", "budgets"}
_SERVER_KEYS = {
    "host",
    "port",
    "max_body_mb",
    "upstream_client",
    "drain_seconds",
    "upstream_pool_size",
    "pool_timeout_seconds",
    "body_timeout_seconds",
}
_PROVIDER_KEYS = {"base_url", "api_key", "timeout", "currency", "stream_usage", "kind", "models"}
# Per 1M tokens, in any currency: far above any model's price, and low enough that a call's cost (of up to
# 2**53 tokens) is a float, which a record can hold and a report can add up. A price past it is a typo.
MAX_PRICE = Decimal(10**12)
_PRICE_KEYS = {"input", "output", "cached_input", "cache_write", "cache_write_1h", "tiers"}
_TIER_KEYS = {"above_input_tokens", "input", "output", "cached_input", "cache_write", "cache_write_1h"}
_CLIENTS: dict[str, UpstreamClient] = {"http1": "http1", "aiohttp": "aiohttp"}
_KINDS: dict[str, ProviderKind] = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
_BUDGET_KEYS = {"daily", "monthly", "warn_at", "critical_at"}


def load_config(path: str | Path, environ: Mapping[str, str], *, keep_unset: bool = False) -> Config:
    """Read and validate a config file; raise ConfigError naming the key path on any problem.

    keep_unset leaves an unset ${VAR} without a default as written instead of failing: for reports,
    which never use what only serving needs (the keys).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: config file not found; pass --config PATH or set METERPROXY_CONFIG"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a folder, not a config file; give the path of one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc}") from exc
    return parse_config(text, environ, source=source, keep_unset=keep_unset)


def parse_config(
    text: str, environ: Mapping[str, str], source: str = "config.yml", *, keep_unset: bool = False
) -> Config:
    try:
        data = load_yaml(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        # YAML takes an unquoted ${VAR} in a {...} or [...] for a nested mapping and fails on its brace,
        # where the README's `port: ${PORT:-9002}` meets the shipped config's `server: {...}`.
        if mark is not None and text[mark.index - 1 : mark.index + 1] == "${":
            problem += '; a ${VAR} inside {...} or [...] must be quoted: "${VAR}"'
        raise ConfigError(f"{source}{at}: not valid YAML: {problem}") from exc
    r = ConfigReader(source, line_map(node, source), environ, keep_unset)
    if data is None:
        raise r.fail((), "the config file is empty; start from the shipped config.yml")
    top = r.mapping(data, (), _TOP_KEYS)

    server = r.mapping(top.get("server"), ("server",), _SERVER_KEYS)
    host = r.text(server.get("host", "127.0.0.1"), ("server", "host"))
    port_value = r.scalar(server.get("port", 9002), ("server", "port"))
    if isinstance(port_value, bool) or not isinstance(port_value, int) or not 0 < port_value < 65536:
        raise r.fail(("server", "port"), f"must be a port number from 1 to 65535, got {show(port_value)}")
    max_body_mb = r.number(server.get("max_body_mb", 32), ("server", "max_body_mb"), positive=True)
    drain_seconds = r.whole(
        server.get("drain_seconds", 30), ("server", "drain_seconds"), "a whole number of seconds"
    )
    pool_size = r.whole(
        server.get("upstream_pool_size", 1000),
        ("server", "upstream_pool_size"),
        "a whole number of 1 or more",
        minimum=1,
    )
    pool_timeout = r.number(
        server.get("pool_timeout_seconds", 10), ("server", "pool_timeout_seconds"), positive=True
    )
    body_timeout = r.number(
        server.get("body_timeout_seconds", 30), ("server", "body_timeout_seconds"), positive=True
    )
    client = r.text(server.get("upstream_client", "http1"), ("server", "upstream_client"))
    if client not in _CLIENTS:
        raise r.fail(("server", "upstream_client"), f"must be http1 (the default) or aiohttp, got {client!r}")

    currency = r.currency(top.get("currency", "USD"), ("currency",))
    rates = {
        r.currency(code, ("exchange_rates", str(code))): r.number(
            rate, ("exchange_rates", str(code)), positive=True
        )
        for code, rate in r.mapping(top.get("exchange_rates"), ("exchange_rates",)).items()
    }

    features = r.mapping(top.get("features"), ("features",), {"cost_tracking", "cost_in_response"})
    returning = r.mapping(features.get("cost_in_response"), ("features", "cost_in_response"), {"enabled"})
    cost_in_response = r.boolean(returning.get("enabled", True), ("features", "cost_in_response", "enabled"))
    tracking_path = ("features", "cost_tracking")
    tracking = r.mapping(features.get("cost_tracking"), tracking_path, {"enabled", "file", "fail_closed"})
    enabled = r.boolean(tracking.get("enabled", True), (*tracking_path, "enabled"))
    fail_closed = r.boolean(tracking.get("fail_closed", False), (*tracking_path, "fail_closed"))
    record_file = environ.get("COST_TRACKING_FILE") or r.text(
        tracking.get("file", DEFAULT_RECORD_FILE), (*tracking_path, "file")
    )

    providers_raw = r.mapping(top.get("providers"), ("providers",))
    if not providers_raw:
        raise r.fail(("providers",), "no providers configured; add at least one with its base_url")
    providers = {name: _provider(r, name, value) for name, value in providers_raw.items()}

    return Config(
        host=host,
        port=port_value,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        upstream_client=_CLIENTS[client],
        currency=currency,
        exchange_rates=rates,
        cost_tracking=enabled,
        cost_in_response=cost_in_response,
        record_file=Path(record_file),
        providers=providers,
        auth_keys=_auth_keys(r, top.get("auth")),
        budgets=_budgets(r, top.get("budgets")),
        source=source,
        fail_closed=enabled and fail_closed,
        drain_seconds=drain_seconds,
        upstream_pool_size=pool_size,
        pool_timeout=float(pool_timeout),
        body_timeout=float(body_timeout),
    )


def _provider(r: ConfigReader, name: str, value: Any) -> Provider:
    path = ("providers", name)
    if not _PROVIDER_NAME.fullmatch(name) or name in _RESERVED_PROVIDER_NAMES:
        raise r.fail(path, "provider names are letters, digits, '_', '.', '-' (and not 'v1' or 'health')")
    raw = r.mapping(value, path, _PROVIDER_KEYS)
    if raw.get("base_url") is None:
        raise r.fail(
            (*path, "base_url"), "missing; set the provider's API URL, e.g. https://api.openai.com/v1"
        )
    base_url = r.text(raw["base_url"], (*path, "base_url")).rstrip("/")
    parts = urlsplit(base_url)
    # What follows a '?' or '#' is never shown: a query is where a key may be put (Gemini's ?key=).
    kept = base_url.partition("?")[0].partition("#")[0]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail((*path, "base_url"), f"must be an http(s) URL with a host, got {kept!r}")
    if kept != base_url:
        # A call's own path and query are joined after base_url: a '?' or '#' in it would swallow them.
        problem = f"must have no '?' or '#' part (a call's path and query are added to it): give {kept!r}"
        raise r.fail((*path, "base_url"), problem)
    api_key = None
    if raw.get("api_key") is not None:
        key = r.text(raw["api_key"], (*path, "api_key"))
        if _CONTROL.search(key):
            # It goes into a header as it is: a line break there would end the header (and the key) early.
            raise r.fail(
                (*path, "api_key"),
                "has a control character (often a line break at its end, from a file); remove it from the "
                "key or from the environment variable it comes from",
            )
        api_key = Secret(key) if key else None
    kind = r.text(raw.get("kind", "openai"), (*path, "kind"))
    if kind not in _KINDS:
        raise r.fail((*path, "kind"), f"must be one of {', '.join(_KINDS)}, got {kind!r}")
    models_path = (*path, "models")
    models = {
        str(model): _price(r, (*models_path, str(model)), spec)
        for model, spec in r.mapping(raw.get("models"), models_path).items()
    }
    return Provider(
        name=name,
        base_url=base_url,
        api_key=api_key,
        timeout=float(r.number(raw.get("timeout", 600), (*path, "timeout"), positive=True)),
        currency=r.currency(raw.get("currency", "USD"), (*path, "currency")),
        stream_usage=r.boolean(raw.get("stream_usage", True), (*path, "stream_usage")),
        kind=_KINDS[kind],
        models=models,
    )


def _price(r: ConfigReader, path: tuple[str, ...], spec: Any) -> Price:
    model = r.mapping(spec, path, {"pricing"})
    pricing_path = (*path, "pricing")
    if model.get("pricing") is None:
        raise r.fail(pricing_path, "missing; give at least input and output prices per 1M tokens")
    pricing = r.mapping(model["pricing"], pricing_path, _PRICE_KEYS)
    tiers = pricing.get("tiers")
    if tiers is not None and (not isinstance(tiers, list) or not tiers):
        shape = "{above_input_tokens, input, output}"
        empty = f"is empty: give at least one tier {shape}, or leave tiers out"
        raise r.fail((*pricing_path, "tiers"), empty if tiers == [] else f"must be a list of {shape}")
    levels = tuple(
        _rates(r, (*pricing_path, "tiers", str(index)), tier, tier=True)
        for index, tier in enumerate(tiers or [])
    )
    thresholds = [level.above_input_tokens or 0 for level in levels]
    if any(later <= earlier for earlier, later in zip(thresholds, thresholds[1:], strict=False)):
        raise r.fail((*pricing_path, "tiers"), "list the tiers by above_input_tokens, ascending, each once")
    base = _rates(r, pricing_path, {k: v for k, v in pricing.items() if k != "tiers"}, tier=False)
    return Price(
        base.input, base.output, base.cached_input, base.cache_write, base.cache_write_1h, tiers=levels
    )


def _rates(r: ConfigReader, path: tuple[str, ...], spec: Any, *, tier: bool) -> Price:
    pricing = r.mapping(spec, path, _TIER_KEYS if tier else _PRICE_KEYS)
    if tier and "above_input_tokens" not in pricing:
        problem = "missing; give the number of input tokens above which this tier prices a call"
        raise r.fail((*path, "above_input_tokens"), problem)
    for needed in ("input", "output"):
        if needed not in pricing:
            raise r.fail((*path, needed), "missing; prices are per 1M tokens")
    above = None
    if tier:
        above = r.whole(
            pricing.pop("above_input_tokens"), (*path, "above_input_tokens"), "a whole number of tokens"
        )
    prices = {key: r.number(value, (*path, key)) for key, value in pricing.items()}
    for key, price in prices.items():
        if price > MAX_PRICE:
            raise r.fail((*path, key), f"must be at most {MAX_PRICE:,} per 1M tokens, got {price}")
    cache_write = prices.get("cache_write", prices["input"])
    return Price(
        input=prices["input"],
        output=prices["output"],
        cached_input=prices.get("cached_input", prices["input"]),
        cache_write=cache_write,
        cache_write_1h=prices.get("cache_write_1h", cache_write),
        above_input_tokens=above,
    )


def _auth_keys(r: ConfigReader, value: Any) -> tuple[AuthKey, ...]:
    auth = r.mapping(value, ("auth",), {"keys"})
    if auth.get("keys") is None:
        return ()
    if not isinstance(auth["keys"], list) or not auth["keys"]:
        raise r.fail(("auth", "keys"), "must be a list of {name, key} entries")
    keys: list[AuthKey] = []
    for index, entry in enumerate(auth["keys"]):
        path = ("auth", "keys", str(index))
        item = r.mapping(entry, path, {"name", "key"})
        for needed in ("name", "key"):
            if item.get(needed) is None:
                raise r.fail((*path, needed), "missing; each entry needs a name and a key")
        name = r.text(item["name"], (*path, "name"))
        key = r.text(item["key"], (*path, "key"))
        if not key:
            raise r.fail((*path, "key"), "is empty; an empty key would let anyone in")
        if any(existing.name == name for existing in keys):
            raise r.fail((*path, "name"), f"name {name!r} is used twice; names identify callers in records")
        for existing in keys:
            if existing.key.reveal() == key:  # the key itself is never shown
                problem = (
                    f"is the key of {existing.name!r} too; give each name its own key, as records name "
                    "callers by it"
                )
                raise r.fail((*path, "key"), problem)
        keys.append(AuthKey(name=name, key=Secret(key)))
    return tuple(keys)


def _budgets(r: ConfigReader, value: Any) -> Budgets | None:
    if value is None:
        return None
    raw = r.mapping(value, ("budgets",), _BUDGET_KEYS)

    def amount(key: str) -> Decimal | None:
        return None if raw.get(key) is None else r.number(raw[key], ("budgets", key), positive=True)

    def fraction(key: str, default: float) -> Decimal:
        value = r.number(raw.get(key, default), ("budgets", key))
        if value > 1:
            # warn_at: 50 would warn at 5,000% of the budget: never, in effect.
            problem = f"must be a fraction of the budget up to 1 (0.5 is 50%), got {value}"
            raise r.fail(("budgets", key), problem)
        return value

    warn_at = fraction("warn_at", 0.5)
    critical_at = fraction("critical_at", 0.8)
    if not warn_at <= critical_at:
        raise r.fail(("budgets", "warn_at"), f"must not exceed critical_at ({critical_at}), got {warn_at}")
    daily, monthly = amount("daily"), amount("monthly")
    if daily is None and monthly is None:
        raise r.fail(("budgets",), "sets no budget; give daily, monthly or both, in the reporting currency")
    return Budgets(daily=daily, monthly=monthly, warn_at=warn_at, critical_at=critical_at)
