"""config.yml + environment -> frozen dataclasses, validated once at start-up."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import yaml

from proxy.records import PriceApplied

DEFAULT_RECORD_FILE = "logs/cost-tracking.jsonl"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RESERVED_PROVIDER_NAMES = frozenset({"v1", "health"})

ProviderKind = Literal["openai", "anthropic", "gemini"]


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
    """A Price's four prices as whole numbers of 1/`per` of a currency unit per token (`per` is 1M
    times a power of ten), so that a call is priced exactly in integers."""

    per: int
    input: int
    output: int
    cached_input: int
    cache_write: int


@dataclass(frozen=True)
class Price:
    """Prices per 1M tokens, in the provider's currency."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    above_input_tokens: int | None = None  # set on a tier: it prices calls with more input tokens
    tiers: tuple[Price, ...] = ()  # by above_input_tokens, ascending

    @functools.cached_property
    def whole(self) -> WholePrices:
        prices = (self.input, self.output, self.cached_input, self.cache_write)
        exponent = min(int(price.as_tuple().exponent) for price in prices)
        scale = 10 ** max(-exponent, 0)
        return WholePrices(1_000_000 * scale, *(int(price * scale) for price in prices))

    @functools.cached_property
    def record(self) -> PriceApplied:
        """These prices as a record's `price` field; one dict per price, shared by its records (read-only)."""
        return {
            "input": float(self.input),
            "output": float(self.output),
            "cached_input": float(self.cached_input),
            "cache_write": float(self.cache_write),
            "tier": self.above_input_tokens,
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
_PRICE_KEYS = {"input", "output", "cached_input", "cache_write", "tiers"}
_TIER_KEYS = {"above_input_tokens", "input", "output", "cached_input", "cache_write"}
UpstreamClient = Literal["http1", "aiohttp"]
_CLIENTS: dict[str, UpstreamClient] = {"http1": "http1", "aiohttp": "aiohttp"}
_KINDS: dict[str, ProviderKind] = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
_BUDGET_KEYS = {"daily", "monthly", "warn_at", "critical_at"}


class _Reader:
    """Walks the parsed YAML, turning problems into ConfigErrors that name the key path and line."""

    def __init__(
        self,
        source: str,
        lines: dict[tuple[str, ...], int],
        environ: Mapping[str, str],
        keep_unset: bool,
    ) -> None:
        self.source = source
        self.lines = lines
        self.environ = environ
        self.keep_unset = keep_unset

    def fail(self, path: tuple[str, ...], problem: str) -> ConfigError:
        where = ".".join(path) or "(top level)"
        line = self.lines.get(path)
        at = f" (line {line})" if line else ""
        return ConfigError(f"{self.source}: {where}{at}: {problem}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: set[str] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping of keys to values, got {_show(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be text, got {_show(key)}")
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail((*path, key), f"unknown key; known keys here: {known}")
        return value

    def text(self, value: Any, path: tuple[str, ...]) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(path, f"must be text, got {_show(value)}")
        return self.expand(str(value), path)

    def expand(self, value: str, path: tuple[str, ...]) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            if self.keep_unset:
                return match.group(0)
            raise self.fail(path, f"${{{name}}} names an unset environment variable; set {name} or remove it")

        return _ENV_REF.sub(substitute, value)

    def number(self, value: Any, path: tuple[str, ...], *, positive: bool = False) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"must be a number, got {_show(value)}")
        # repr() of a float is its shortest round-trip form: 2.5 -> Decimal('2.5'), not 2.5000000000000000001.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not number.is_finite() or number < 0 or (positive and number == 0):
            kind = "a positive" if positive else "a non-negative"
            raise self.fail(path, f"must be {kind} number, got {_show(value)}")
        return number

    def whole(self, value: Any, path: tuple[str, ...], what: str, minimum: int = 0) -> int:
        """An int of at least `minimum`; `what` names it in the error ("a whole number of seconds")."""
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"must be {what}, got {_show(value)}")
        return value

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_show(value)}")
        return value

    def currency(self, value: Any, path: tuple[str, ...]) -> str:
        code = self.text(value, path).upper()
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise self.fail(path, f"must be a three-letter currency code such as USD, got {_show(value)}")
        return code


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"


def _line_map(node: yaml.Node | None, source: str) -> dict[tuple[str, ...], int]:
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, str(key_node.value))
                line = key_node.start_mark.line + 1
                # PyYAML keeps the last of two equal keys; a model pasted twice would silently take
                # the later price, so a repeated key is an error (YAML requires unique keys).
                if key_path in lines:
                    where, first = ".".join(key_path), lines[key_path]
                    raise ConfigError(f"{source}: {where} (line {line}): repeats the key on line {first}")
                lines[key_path] = line
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, str(index)))

    if node is not None:
        walk(node, ())
    return lines


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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc}") from exc
    return parse_config(text, environ, source=source, keep_unset=keep_unset)


def parse_config(
    text: str, environ: Mapping[str, str], source: str = "config.yml", *, keep_unset: bool = False
) -> Config:
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{at}: not valid YAML: {problem}") from exc
    r = _Reader(source, _line_map(node, source), environ, keep_unset)
    if data is None:
        raise r.fail((), "the config file is empty; start from the shipped config.yml")
    top = r.mapping(data, (), _TOP_KEYS)

    server = r.mapping(top.get("server"), ("server",), _SERVER_KEYS)
    host = r.text(server.get("host", "127.0.0.1"), ("server", "host"))
    port_value = server.get("port", 9002)
    if isinstance(port_value, bool) or not isinstance(port_value, int) or not 0 < port_value < 65536:
        raise r.fail(("server", "port"), f"must be a port number from 1 to 65535, got {_show(port_value)}")
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


def _provider(r: _Reader, name: str, value: Any) -> Provider:
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
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise r.fail((*path, "base_url"), f"must be an http(s) URL with a host, got {base_url!r}")
    api_key = None
    if raw.get("api_key") is not None:
        key = r.text(raw["api_key"], (*path, "api_key"))
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


def _price(r: _Reader, path: tuple[str, ...], spec: Any) -> Price:
    model = r.mapping(spec, path, {"pricing"})
    pricing_path = (*path, "pricing")
    if model.get("pricing") is None:
        raise r.fail(pricing_path, "missing; give at least input and output prices per 1M tokens")
    pricing = r.mapping(model["pricing"], pricing_path, _PRICE_KEYS)
    tiers = pricing.get("tiers")
    if tiers is not None and (not isinstance(tiers, list) or not tiers):
        raise r.fail((*pricing_path, "tiers"), "must be a list of {above_input_tokens, input, output}")
    levels = tuple(
        _rates(r, (*pricing_path, "tiers", str(index)), tier, tier=True)
        for index, tier in enumerate(tiers or [])
    )
    thresholds = [level.above_input_tokens or 0 for level in levels]
    if any(later <= earlier for earlier, later in zip(thresholds, thresholds[1:], strict=False)):
        raise r.fail((*pricing_path, "tiers"), "list the tiers by above_input_tokens, ascending, each once")
    base = _rates(r, pricing_path, {k: v for k, v in pricing.items() if k != "tiers"}, tier=False)
    return Price(base.input, base.output, base.cached_input, base.cache_write, tiers=levels)


def _rates(r: _Reader, path: tuple[str, ...], spec: Any, *, tier: bool) -> Price:
    pricing = r.mapping(spec, path, _TIER_KEYS if tier else _PRICE_KEYS)
    for needed in ("above_input_tokens", "input", "output") if tier else ("input", "output"):
        if needed not in pricing:
            raise r.fail((*path, needed), "missing; prices are per 1M tokens")
    above = None
    if tier:
        above = r.whole(
            pricing.pop("above_input_tokens"), (*path, "above_input_tokens"), "a whole number of tokens"
        )
    prices = {key: r.number(value, (*path, key)) for key, value in pricing.items()}
    return Price(
        input=prices["input"],
        output=prices["output"],
        cached_input=prices.get("cached_input", prices["input"]),
        cache_write=prices.get("cache_write", prices["input"]),
        above_input_tokens=above,
    )


def _auth_keys(r: _Reader, value: Any) -> tuple[AuthKey, ...]:
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
        keys.append(AuthKey(name=name, key=Secret(key)))
    return tuple(keys)


def _budgets(r: _Reader, value: Any) -> Budgets | None:
    if value is None:
        return None
    raw = r.mapping(value, ("budgets",), _BUDGET_KEYS)

    def amount(key: str) -> Decimal | None:
        return None if raw.get(key) is None else r.number(raw[key], ("budgets", key), positive=True)

    warn_at = r.number(raw.get("warn_at", 0.5), ("budgets", "warn_at"))
    critical_at = r.number(raw.get("critical_at", 0.8), ("budgets", "critical_at"))
    if not warn_at <= critical_at:
        raise r.fail(("budgets", "warn_at"), f"must not exceed critical_at ({critical_at}), got {warn_at}")
    return Budgets(daily=amount("daily"), monthly=amount("monthly"), warn_at=warn_at, critical_at=critical_at)
