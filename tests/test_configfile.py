"""Tests of proxy/configfile.py: the shipped config loads, and every problem names its key path and line."""

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from textwrap import dedent, indent

import pytest

from proxy.config import ConfigError, Secret
from proxy.configfile import load_config, parse_config
from proxy.pricing import price_call
from proxy.usage import Usage

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config.yml"

MINIMAL = """\
providers:
  openai:
    base_url: https://api.openai.com/v1
    models:
      gpt-4o:
        pricing: {input: 2.50, output: 10.00, cached_input: 1.25}
"""


def error_of(text: str, environ: Mapping[str, str] | None = None) -> str:
    """The ConfigError message that parsing `text` raises."""
    with pytest.raises(ConfigError) as caught:
        parse_config(dedent(text), environ or {}, source="team.yml")
    return str(caught.value)


def message(where: str, problem: str) -> str:
    """The message a ConfigError from team.yml carries: where (key path and line), then the problem."""
    return f"team.yml: {where}: {problem}"


def provider_with(fields: str) -> str:
    """A config with one provider, openai (line 2), whose settings are the given lines from line 3 on."""
    return "providers:\n  openai:\n" + indent(dedent(fields), "    ")


def priced(pricing: str) -> str:
    """A one-model config whose pricing mapping (line 5) is the given flow mapping."""
    return (
        "providers:\n"
        "  openai:\n"
        "    base_url: https://api.openai.com/v1\n"
        "    models:\n"
        f"      gpt-4o: {{pricing: {pricing}}}\n"
    )


# The shipped config


def test_shipped_config_loads_with_an_empty_environment() -> None:
    config = load_config(SHIPPED_CONFIG, {})

    assert (config.host, config.port) == ("127.0.0.1", 9002)
    assert config.currency == "USD"
    assert config.cost_tracking is True
    assert config.record_file == Path("logs/cost-tracking.jsonl")
    assert config.auth_keys == ()
    assert config.budgets is None


def test_shipped_config_forwards_the_clients_key_to_every_provider() -> None:
    config = load_config(SHIPPED_CONFIG, {})

    assert {name: p.api_key for name, p in config.providers.items() if p.api_key is not None} == {}


def test_shipped_config_has_the_seed_providers_with_priced_models() -> None:
    config = load_config(SHIPPED_CONFIG, {})

    assert list(config.providers) == [
        "openai",
        "anthropic",
        "gemini",
        "dashscope",
        "dashscope-cn",
        "deepseek",
        "moonshot",
        "hunyuan",
        "openrouter",
    ]
    for name, provider in config.providers.items():
        assert provider.models, name
        assert any(price.input > 0 and price.output > 0 for price in provider.models.values()), name
        assert provider.base_url.startswith("https://"), name
        assert provider.currency == config.currency or provider.currency in config.exchange_rates, name
    assert config.providers["anthropic"].kind == "anthropic"
    # The README calls Gemini natively through this provider, with x-goog-api-key or ?key=.
    assert config.providers["gemini"].kind == "gemini"
    assert config.providers["dashscope-cn"].currency == "CNY"
    assert config.providers["hunyuan"].currency == "CNY"


def test_shipped_config_prices_anthropic_1_hour_cache_writes_at_twice_input() -> None:
    # Anthropic bills cache writes with a 1-hour TTL at 2x input, 5-minute ones at 1.25x.
    config = load_config(SHIPPED_CONFIG, {})
    claudes = {
        f"{provider.name}/{name}": price
        for provider in config.providers.values()
        for name, price in provider.models.items()
        if provider.kind == "anthropic" or name.startswith("anthropic/")
    }

    assert len(claudes) == 11
    for name, price in claudes.items():
        assert (price.cache_write, price.cache_write_1h) == (
            price.input * Decimal("1.25"),
            price.input * 2,
        ), name


def test_shipped_config_lists_a_plain_model_name_under_one_provider_except_dashscopes() -> None:
    config = load_config(SHIPPED_CONFIG, {})
    owners: dict[str, list[str]] = {}
    for name, provider in config.providers.items():
        for model in provider.models:
            owners.setdefault(model, []).append(name)

    shared = {model: names for model, names in owners.items() if len(names) > 1}

    assert all(names == ["dashscope", "dashscope-cn"] for names in shared.values()), shared


def test_a_missing_file_names_the_file_and_how_to_choose_another(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yml"

    with pytest.raises(ConfigError) as caught:
        load_config(missing, {})

    assert str(caught.value) == (
        f"{missing}: config file not found; pass --config PATH or set METERPROXY_CONFIG"
    )


def test_a_folder_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, {})

    assert str(caught.value) == f"{tmp_path}: is a folder, not a config file; give the path of one"


# Not a config at all


def test_bad_yaml_reports_its_line() -> None:
    text = """\
        server: {host: 127.0.0.1, port: 9002
        providers: {}
    """

    assert error_of(text) == "team.yml (line 2): not valid YAML: expected ',' or '}', but got ':'"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("server: {host: 127.0.0.1, port: ${PORT:-9002}}\n", "(line 1): not valid YAML: expected ',' or '}'"),
        ("server:\n  port: 9002\nx: [${X}]\n", "(line 3): not valid YAML: expected ',' or ']'"),
    ],
)
def test_an_unquoted_variable_in_braces_or_brackets_says_to_quote_it(text: str, problem: str) -> None:
    quote = 'a ${VAR} inside {...} or [...] must be quoted: "${VAR}"'
    assert error_of(text) == f"team.yml {problem}, but got '{{'; {quote}"


def test_a_tab_in_the_indentation_reports_its_line() -> None:
    assert error_of("providers:\n\topenai: {}\n") == (
        "team.yml (line 2): not valid YAML: found character '\\t' that cannot start any token"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_an_error(text: str) -> None:
    assert error_of(text) == message(
        "(top level)", "the config file is empty; start from the shipped config.yml"
    )


def test_a_top_level_list_is_an_error() -> None:
    assert error_of("- openai\n- anthropic\n") == message(
        "(top level) (line 1)", "must be a mapping of keys to values, got list ['openai', 'anthropic']"
    )


def test_a_key_given_twice_names_both_lines() -> None:
    text = """\
        providers:
          openai:
            base_url: https://api.openai.com/v1
            models:
              gpt-4o: {pricing: {input: 2.50, output: 10.00}}
              gpt-4o: {pricing: {input: 5.00, output: 15.00}}
    """

    assert error_of(text) == message("providers.openai.models.gpt-4o (line 6)", "repeats the key on line 5")


def test_no_providers_is_an_error() -> None:
    assert error_of("server: {port: 9002}\n") == message(
        "providers", "no providers configured; add at least one with its base_url"
    )


# Unknown keys, at every level


def test_an_unknown_top_level_key_is_named_with_its_line() -> None:
    text = "server: {port: 9002}\nprovider:\n  openai: {base_url: https://api.openai.com/v1}\n"

    assert error_of(text) == message(
        "provider (line 2)",
        "unknown key; known keys here: auth, budgets, currency, exchange_rates, features, providers, server",
    )


def test_an_unknown_server_key_is_named_with_its_line() -> None:
    text = "server:\n  host: 127.0.0.1\n  prot: 9002\n" + MINIMAL

    assert error_of(text) == message(
        "server.prot (line 3)",
        "unknown key; known keys here: body_timeout_seconds, drain_seconds, host, max_body_mb, "
        "pool_timeout_seconds, port, upstream_client, upstream_pool_size",
    )


def test_an_unknown_provider_key_is_named_with_its_line() -> None:
    text = provider_with(
        """\
        base_url: https://api.openai.com/v1
        api-key: sk-test
        """
    )

    assert error_of(text) == message(
        "providers.openai.api-key (line 4)",
        "unknown key; known keys here: api_key, base_url, currency, kind, models, stream_usage, timeout",
    )


def test_an_unknown_pricing_key_is_named_with_its_line() -> None:
    assert error_of(priced("{input: 2.50, output: 10.00, cache_read: 1.25}")) == message(
        "providers.openai.models.gpt-4o.pricing.cache_read (line 5)",
        "unknown key; known keys here: cache_write, cache_write_1h, cached_input, input, output, tiers",
    )


def test_an_unknown_feature_is_named_with_its_line() -> None:
    text = "features:\n  cost_tracking: {enabled: true}\n  dashboard: {enabled: true}\n" + MINIMAL

    assert error_of(text) == message(
        "features.dashboard (line 3)", "unknown key; known keys here: cost_in_response, cost_tracking"
    )


# Prices


def test_a_negative_price_is_an_error() -> None:
    assert error_of(priced("{input: 2.50, output: -10}")) == message(
        "providers.openai.models.gpt-4o.pricing.output (line 5)", "must be a non-negative number, got int -10"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [("$2.50", "str '$2.50'"), ("2.50 USD", "str '2.50 USD'")],
)
def test_a_price_given_as_text_is_an_error(value: str, shown: str) -> None:
    assert error_of(priced(f"{{input: {value}, output: 10.00}}")) == message(
        "providers.openai.models.gpt-4o.pricing.input (line 5)", f"must be a number, got {shown}"
    )


AS_TEXT = "YAML reads this as text: write the number unquoted, in plain decimals (0.000001, not 1e-6)"


@pytest.mark.parametrize("value", ["'2.50'", "1e-6", "1.5e6", "1E6"])
def test_a_price_yaml_reads_as_text_says_how_to_write_it(value: str) -> None:
    # YAML 1.1 reads an exponent without a point and a sign (1e-6, 1.5e6) as text: it looks like a
    # number to whoever wrote it, so the error says what YAML takes, not only that it got a str.
    shown = value.strip("'")
    assert error_of(priced(f"{{input: {value}, output: 10.00}}")) == message(
        "providers.openai.models.gpt-4o.pricing.input (line 5)",
        f"must be a number, got str '{shown}'; {AS_TEXT}",
    )


def test_a_boolean_price_is_an_error() -> None:
    assert error_of(priced("{input: 2.50, output: 10.00, cached_input: true}")) == message(
        "providers.openai.models.gpt-4o.pricing.cached_input (line 5)", "must be a number, got bool True"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [(".nan", "float nan"), (".inf", "float inf"), ("1.0e+400", "float 1.0E+400")]
)
def test_a_price_that_is_not_finite_is_an_error(value: str, shown: str) -> None:
    assert error_of(priced(f"{{input: {value}, output: 10.00}}")) == message(
        "providers.openai.models.gpt-4o.pricing.input (line 5)", f"must be a non-negative number, got {shown}"
    )


def test_a_price_no_model_has_is_an_error() -> None:
    # At 1e300 per 1M tokens, a call's cost is past a float's range: its record could not be written.
    assert error_of(priced("{input: 2.50, output: 1.0e+300}")) == message(
        "providers.openai.models.gpt-4o.pricing.output (line 5)",
        "must be at most 1,000,000,000,000 per 1M tokens, got 1.0E+300",
    )
    assert error_of(priced("{input: 2.50, output: 1000000000001}")).endswith("got 1000000000001")
    assert parse_config(priced("{input: 2.50, output: 1000000000000}"), {}) is not None


def test_a_missing_output_price_is_an_error() -> None:
    assert error_of(priced("{input: 2.50}")) == message(
        "providers.openai.models.gpt-4o.pricing.output (line 5)", "missing; prices are per 1M tokens"
    )


def test_a_model_without_pricing_is_an_error() -> None:
    text = provider_with(
        """\
        base_url: https://api.openai.com/v1
        models:
          gpt-4o: {}
        """
    )

    assert error_of(text) == message(
        "providers.openai.models.gpt-4o.pricing (line 5)",
        "missing; give at least input and output prices per 1M tokens",
    )


def test_prices_are_exact_decimals() -> None:
    text = priced("{input: 0.1, output: 2.50, cached_input: 0.075}")
    price = parse_config(text, {}).providers["openai"].models["gpt-4o"]

    assert (price.input, price.output, price.cached_input) == (
        Decimal("0.1"),
        Decimal("2.5"),
        Decimal("0.075"),
    )


def test_a_price_keeps_every_digit_written_and_a_call_is_priced_at_it() -> None:
    # 2/7 per 1M tokens to 20 places, as bc writes it: more digits than a float keeps (read as one, the
    # price was 0.2857142857142857 and 1,000 tokens cost 0.0002857142857142857).
    two_sevenths = "0.28571428571428571428"
    text = priced(f"{{input: {two_sevenths}, output: '${{OUTPUT}}'}}")
    price = parse_config(text, {"OUTPUT": two_sevenths}).providers["openai"].models["gpt-4o"]

    assert (price.input, price.output) == (Decimal(two_sevenths), Decimal(two_sevenths))
    cost = price_call(Usage(1000, 1000, 2000), price)
    exact = float(Decimal(two_sevenths) / 1000)
    assert (cost.input_cost, cost.output_cost) == (exact, exact) == (0.00028571428571428574,) * 2


def test_an_exchange_rate_keeps_every_digit_written() -> None:
    config = parse_config("exchange_rates: {CNY: 0.13888888888888888889}\n" + MINIMAL, {})

    assert config.exchange_rates == {"CNY": Decimal("0.13888888888888888889")}


def test_cached_input_and_cache_write_default_to_input() -> None:
    price = parse_config(priced("{input: 3, output: 15}"), {}).providers["openai"].models["gpt-4o"]

    assert (price.cached_input, price.cache_write) == (Decimal(3), Decimal(3))


def test_cached_input_and_cache_write_are_kept_when_given() -> None:
    pricing = "{input: 3, output: 15, cached_input: 0.30, cache_write: 3.75}"
    price = parse_config(priced(pricing), {}).providers["openai"].models["gpt-4o"]

    assert (price.cached_input, price.cache_write) == (Decimal("0.3"), Decimal("3.75"))


def test_the_1_hour_cache_write_price_defaults_to_cache_write_and_is_kept_when_given() -> None:
    def price_of(pricing: str) -> Decimal | None:
        return parse_config(priced(pricing), {}).providers["openai"].models["gpt-4o"].cache_write_1h

    # Without it a config prices 1-hour cache writes as it always did: as the other cache writes.
    assert price_of("{input: 3, output: 15, cache_write: 3.75}") == Decimal("3.75")
    assert price_of("{input: 3, output: 15}") == Decimal(3)
    assert price_of("{input: 3, output: 15, cache_write: 3.75, cache_write_1h: 6.00}") == Decimal("6.0")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-6", "must be a non-negative number, got int -6"),
        ("'6.00'", f"must be a number, got str '6.00'; {AS_TEXT}"),
        ("true", "must be a number, got bool True"),
        (".inf", "must be a non-negative number, got float inf"),
    ],
)
def test_a_1_hour_cache_write_price_that_is_not_a_price_is_an_error(value: str, problem: str) -> None:
    assert error_of(priced(f"{{input: 3, output: 15, cache_write_1h: {value}}}")) == message(
        "providers.openai.models.gpt-4o.pricing.cache_write_1h (line 5)", problem
    )
    tier = f"{{above_input_tokens: 9, input: 6, output: 30, cache_write_1h: {value}}}"
    tiered = f"{{input: 3, output: 15, tiers: [{tier}]}}"
    assert error_of(priced(tiered)) == message(
        "providers.openai.models.gpt-4o.pricing.tiers.0.cache_write_1h (line 5)", problem
    )


# Providers


def test_a_missing_base_url_is_an_error() -> None:
    text = provider_with(
        """\
        models:
          gpt-4o: {pricing: {input: 2.50, output: 10.00}}
        """
    )

    assert error_of(text) == message(
        "providers.openai.base_url (line 2)",
        "missing; set the provider's API URL, e.g. https://api.openai.com/v1",
    )


@pytest.mark.parametrize("url", ["ftp://api.openai.com/v1", "api.openai.com/v1", "https:///v1"])
def test_a_base_url_that_is_not_http_is_an_error(url: str) -> None:
    assert error_of(provider_with(f"base_url: {url}\n")) == message(
        "providers.openai.base_url (line 3)", f"must be an http(s) URL with a host, got {url!r}"
    )


@pytest.mark.parametrize("url", ["https://a.b/v1?key=AIzaSyCANARY", "https://a.b/v1#x", "https://a.b/v1?"])
def test_a_base_url_with_a_query_or_fragment_is_an_error_saying_so_without_showing_it(url: str) -> None:
    # A key put in the query (Gemini's ?key=) must not reach the log with the error.
    assert error_of(provider_with(f"base_url: '{url}'\n")) == message(
        "providers.openai.base_url (line 3)",
        "must have no '?' or '#' part (a call's path and query are added to it): give 'https://a.b/v1'",
    )


def test_a_base_url_without_a_scheme_is_named_without_its_query() -> None:
    assert error_of(provider_with("base_url: 'a.b/v1?key=AIzaSyCANARY'\n")) == message(
        "providers.openai.base_url (line 3)", "must be an http(s) URL with a host, got 'a.b/v1'"
    )


def test_a_trailing_slash_is_taken_off_the_base_url() -> None:
    config = parse_config(provider_with("base_url: http://127.0.0.1:8080/v1/\n"), {})

    assert config.providers["openai"].base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize("name", ["v1", "health", "my provider"])
def test_a_provider_name_that_would_clash_with_routes_is_an_error(name: str) -> None:
    text = f"providers:\n  {name}:\n    base_url: https://api.openai.com/v1\n"

    assert error_of(text) == message(
        f"providers.{name} (line 2)",
        "provider names are letters, digits, '_', '.', '-' (and not 'v1' or 'health')",
    )


def test_provider_defaults() -> None:
    provider = parse_config(MINIMAL, {}).providers["openai"]

    assert (provider.kind, provider.currency, provider.timeout) == ("openai", "USD", 600)
    assert provider.stream_usage is True
    assert provider.api_key is None


def test_a_currency_that_is_not_a_code_is_an_error() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\ncurrency: yuan\n")

    assert error_of(text) == message(
        "providers.openai.currency (line 4)",
        "must be a three-letter currency code such as USD, got str 'yuan'",
    )


# Environment variables


def test_an_unset_variable_names_the_key_path_and_the_variable() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY}\n")

    assert error_of(text, {"OTHER": "x"}) == message(
        "providers.openai.api_key (line 4)",
        "${OPENAI_API_KEY} names an unset environment variable; set OPENAI_API_KEY or remove it",
    )


def test_a_set_variable_is_substituted() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY}\n")

    api_key = parse_config(text, {"OPENAI_API_KEY": "sk-test-123"}).providers["openai"].api_key

    assert api_key is not None and api_key.reveal() == "sk-test-123"


@pytest.mark.parametrize("key", ["sk-test-123\n", "sk-test-123\r", "sk-\ttest", "sk-test\r\nx-other: 1"])
def test_a_key_with_a_control_character_is_refused_without_showing_it(key: str) -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY}\n")

    error = error_of(text, {"OPENAI_API_KEY": key})

    assert error == message(
        "providers.openai.api_key (line 4)",
        "has a control character (often a line break at its end, from a file); remove it from the key or "
        "from the environment variable it comes from",
    )
    assert "sk-" not in error


def test_a_variable_inside_a_longer_string_is_substituted() -> None:
    text = provider_with("base_url: https://${UPSTREAM_HOST}:${UPSTREAM_PORT}/v1\n")

    config = parse_config(text, {"UPSTREAM_HOST": "llm.internal", "UPSTREAM_PORT": "8443"})

    assert config.providers["openai"].base_url == "https://llm.internal:8443/v1"


def test_the_default_is_used_when_the_variable_is_unset() -> None:
    text = provider_with("base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}\n")

    assert parse_config(text, {}).providers["openai"].base_url == "https://api.openai.com/v1"
    assert parse_config(text, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}).providers["openai"].base_url == (
        "http://127.0.0.1:9/v1"
    )


def test_an_empty_default_makes_a_provider_key_optional() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY:-}\n")

    assert parse_config(text, {}).providers["openai"].api_key is None


def test_a_substituted_value_is_not_expanded_again() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY}\n")

    api_key = parse_config(text, {"OPENAI_API_KEY": "${HOME}"}).providers["openai"].api_key

    assert api_key is not None and api_key.reveal() == "${HOME}"


def test_a_number_or_a_flag_can_come_from_a_variable() -> None:
    text = (
        "server:\n  port: ${PORT:-9100}\n  drain_seconds: ${DRAIN}\n"
        "features:\n  cost_in_response: {enabled: '${COST_HEADERS:-false}'}\n"
        "budgets:\n  daily: ${DAILY_BUDGET}\n" + MINIMAL
    )

    config = parse_config(text, {"DRAIN": "5", "DAILY_BUDGET": "12.5"})

    assert (config.port, config.drain_seconds) == (9100, 5)
    assert config.cost_in_response is False
    assert config.budgets is not None and config.budgets.daily == Decimal("12.5")
    assert parse_config(text, {"PORT": "9200", "DRAIN": "5", "DAILY_BUDGET": "1"}).port == 9200


def test_an_unset_variable_for_a_number_names_the_variable_even_for_reports() -> None:
    text = "server:\n  port: ${PORT}\n" + MINIMAL

    with pytest.raises(ConfigError) as caught:
        parse_config(text, {}, source="team.yml", keep_unset=True)

    assert str(caught.value) == message(
        "server.port (line 2)", "${PORT} names an unset environment variable; set PORT or remove it"
    )


def test_a_variable_that_is_not_a_number_is_named_by_its_value() -> None:
    text = "server:\n  port: ${PORT}\n" + MINIMAL

    assert error_of(text, {"PORT": "http"}) == message(
        "server.port (line 2)", "must be a port number from 1 to 65535, got str 'http'"
    )


def test_the_api_key_is_kept_in_a_secret_that_never_shows_it() -> None:
    text = provider_with("base_url: https://api.openai.com/v1\napi_key: ${OPENAI_API_KEY}\n")

    config = parse_config(text, {"OPENAI_API_KEY": "sk-live-very-secret"})
    api_key = config.providers["openai"].api_key

    assert isinstance(api_key, Secret)
    assert "sk-live-very-secret" not in repr(api_key)
    assert "sk-live-very-secret" not in str(api_key)
    assert "sk-live-very-secret" not in repr(config)


# Cost tracking


def test_the_record_file_comes_from_the_config() -> None:
    text = "features:\n  cost_tracking: {enabled: false, file: records/calls.jsonl}\n" + MINIMAL

    config = parse_config(text, {})

    assert (config.cost_tracking, config.record_file) == (False, Path("records/calls.jsonl"))


def test_cost_tracking_file_overrides_the_configured_file() -> None:
    text = "features:\n  cost_tracking: {file: records/calls.jsonl}\n" + MINIMAL

    config = parse_config(text, {"COST_TRACKING_FILE": "shared/all-workers.jsonl"})

    assert config.record_file == Path("shared/all-workers.jsonl")


def test_the_record_file_defaults_to_the_logs_folder() -> None:
    assert parse_config(MINIMAL, {}).record_file == Path("logs/cost-tracking.jsonl")


def test_enabled_must_be_a_boolean() -> None:
    text = "features:\n  cost_tracking: {enabled: 'yes'}\n" + MINIMAL

    assert error_of(text) == message(
        "features.cost_tracking.enabled (line 2)", "must be true or false, got str 'yes'"
    )


# Server


@pytest.mark.parametrize(("value", "shown"), [("0", "int 0"), ("65536", "int 65536"), ("-1", "int -1")])
def test_a_port_out_of_range_is_an_error(value: str, shown: str) -> None:
    assert error_of(f"server: {{port: {value}}}\n" + MINIMAL) == message(
        "server.port (line 1)", f"must be a port number from 1 to 65535, got {shown}"
    )


@pytest.mark.parametrize(
    ("value", "shown"), [("'9002'", "str '9002'"), ("true", "bool True"), ("1.5", "float 1.5")]
)
def test_a_port_that_is_not_an_integer_is_an_error(value: str, shown: str) -> None:
    assert error_of(f"server: {{port: {value}}}\n" + MINIMAL) == message(
        "server.port (line 1)", f"must be a port number from 1 to 65535, got {shown}"
    )


def test_server_settings_are_read() -> None:
    config = parse_config("server: {host: 0.0.0.0, port: 8080, max_body_mb: 2}\n" + MINIMAL, {})

    assert (config.host, config.port, config.max_body_bytes) == ("0.0.0.0", 8080, 2 * 1024 * 1024)


def test_server_defaults() -> None:
    config = parse_config(MINIMAL, {})

    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 9002, 32 * 1024 * 1024)


def test_a_zero_body_limit_is_an_error() -> None:
    assert error_of("server: {max_body_mb: 0}\n" + MINIMAL) == message(
        "server.max_body_mb (line 1)", "must be a positive number, got int 0"
    )


def test_the_body_timeout_defaults_to_30_seconds_and_can_be_set() -> None:
    assert parse_config(MINIMAL, {}).body_timeout == 30
    assert parse_config("server: {body_timeout_seconds: 2.5}\n" + MINIMAL, {}).body_timeout == 2.5


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be a positive number, got int 0"),
        ("-1", "must be a positive number, got int -1"),
        ("'30'", f"must be a number, got str '30'; {AS_TEXT}"),
        ("true", "must be a number, got bool True"),
        (".inf", "must be a positive number, got float inf"),
        ("1.0e+400", "must be a positive number, got float 1.0E+400"),
    ],
)
def test_a_body_timeout_that_is_not_a_positive_number_is_an_error(value: str, problem: str) -> None:
    assert error_of(f"server: {{body_timeout_seconds: {value}}}\n" + MINIMAL) == message(
        "server.body_timeout_seconds (line 1)", problem
    )


# Access keys


def test_auth_keys_are_read_into_secrets() -> None:
    text = """\
        auth:
          keys:
            - {name: team-a, key: "${TEAM_A_KEY}"}
            - {name: batch-jobs, key: batch-key-2}
    """

    config = parse_config(dedent(text) + MINIMAL, {"TEAM_A_KEY": "team-a-key-1"})

    assert [(k.name, k.key.reveal()) for k in config.auth_keys] == [
        ("team-a", "team-a-key-1"),
        ("batch-jobs", "batch-key-2"),
    ]
    assert "team-a-key-1" not in repr(config)


def test_two_auth_keys_with_the_same_name_are_an_error() -> None:
    text = """\
        auth:
          keys:
            - name: team-a
              key: first-key
            - name: team-a
              key: second-key
    """

    assert error_of(dedent(text) + MINIMAL) == message(
        "auth.keys.1.name (line 5)", "name 'team-a' is used twice; names identify callers in records"
    )


def test_an_auth_key_given_to_two_names_is_an_error_that_does_not_show_it() -> None:
    # Every call with that key would be recorded under one of the two names.
    text = """\
        auth:
          keys:
            - name: team-a
              key: sk-proxy-CANARY
            - name: team-b
              key: sk-proxy-CANARY
    """

    assert error_of(dedent(text) + MINIMAL) == message(
        "auth.keys.1.key (line 6)",
        "is the key of 'team-a' too; give each name its own key, as records name callers by it",
    )


def test_an_empty_auth_key_is_an_error() -> None:
    text = """\
        auth:
          keys:
            - name: team-a
              key: ""
    """

    assert error_of(dedent(text) + MINIMAL) == message(
        "auth.keys.0.key (line 4)", "is empty; an empty key would let anyone in"
    )


def test_an_auth_key_from_a_variable_with_an_empty_default_is_an_error() -> None:
    text = """\
        auth:
          keys:
            - name: team-a
              key: ${TEAM_A_KEY:-}
    """

    assert error_of(dedent(text) + MINIMAL) == message(
        "auth.keys.0.key (line 4)", "is empty; an empty key would let anyone in"
    )


def test_an_auth_key_without_a_key_is_an_error() -> None:
    text = "auth:\n  keys:\n    - name: team-a\n" + MINIMAL

    assert error_of(text) == message("auth.keys.0.key (line 3)", "missing; each entry needs a name and a key")


def test_auth_keys_must_be_a_list() -> None:
    text = "auth:\n  keys: {team-a: key-1}\n" + MINIMAL

    assert error_of(text) == message("auth.keys (line 2)", "must be a list of {name, key} entries")


# Budgets


def test_warn_at_above_critical_at_is_an_error() -> None:
    text = "budgets: {daily: 10.0, monthly: 200.0, warn_at: 0.9, critical_at: 0.8}\n" + MINIMAL

    assert error_of(text) == message("budgets.warn_at (line 1)", "must not exceed critical_at (0.8), got 0.9")


@pytest.mark.parametrize("key", ["warn_at", "critical_at"])
def test_a_budget_level_given_as_a_percentage_is_an_error(key: str) -> None:
    text = f"budgets: {{daily: 10.0, {key}: 80}}\n" + MINIMAL

    assert error_of(text) == message(
        f"budgets.{key} (line 1)", "must be a fraction of the budget up to 1 (0.5 is 50%), got 80"
    )


def test_budgets_without_a_daily_or_monthly_amount_are_an_error() -> None:
    text = "budgets: {warn_at: 0.5}\n" + MINIMAL

    assert error_of(text) == message(
        "budgets (line 1)", "sets no budget; give daily, monthly or both, in the reporting currency"
    )


def test_budgets_are_read() -> None:
    text = "budgets: {daily: 10.0, monthly: 200.0, warn_at: 0.5, critical_at: 0.8}\n" + MINIMAL

    budgets = parse_config(text, {}).budgets

    assert budgets is not None
    assert (budgets.daily, budgets.monthly) == (Decimal("10.0"), Decimal("200.0"))
    assert (budgets.warn_at, budgets.critical_at) == (Decimal("0.5"), Decimal("0.8"))


def test_a_zero_daily_budget_is_an_error() -> None:
    text = "budgets:\n  daily: 0\n" + MINIMAL

    assert error_of(text) == message("budgets.daily (line 2)", "must be a positive number, got int 0")


# Exchange rates


def test_a_zero_exchange_rate_is_an_error() -> None:
    text = "currency: USD\nexchange_rates:\n  CNY: 0\n" + MINIMAL

    assert error_of(text) == message("exchange_rates.CNY (line 3)", "must be a positive number, got int 0")


def test_exchange_rates_are_read_with_upper_case_codes() -> None:
    config = parse_config("currency: usd\nexchange_rates: {cny: 0.14}\n" + MINIMAL, {})

    assert (config.currency, config.exchange_rates) == ("USD", {"CNY": Decimal("0.14")})


def test_the_source_names_the_file_in_every_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("server: {port: 0}\n" + MINIMAL, {}, source="deploy/prod.yml")

    assert str(caught.value).startswith("deploy/prod.yml: server.port (line 1): ")


# Tiers, provider kinds, and the cost returned to clients


def test_tiers_are_read_in_order_with_their_defaults() -> None:
    config = parse_config(
        priced("{input: 1.25, output: 10, cached_input: 0.3125, cache_write_1h: 2.5, tiers: "
               "[{above_input_tokens: 200000, input: 2.5, output: 15, cached_input: 0.625, "
               "cache_write_1h: 5}, "
               "{above_input_tokens: 1000000, input: 5, output: 20, cache_write: 6.25}]}"),
        {},
    )  # fmt: skip
    price = config.providers["openai"].models["gpt-4o"]
    assert (price.input, price.above_input_tokens) == (Decimal("1.25"), None)
    assert price.cache_write_1h == Decimal("2.5")
    first, second = price.tiers
    assert (first.above_input_tokens, first.input, first.output, first.cached_input, first.cache_write) == (
        200000, Decimal("2.5"), Decimal("15"), Decimal("0.625"), Decimal("2.5"),
    )  # fmt: skip
    assert first.cache_write_1h == Decimal(5)
    # A tier's own cache_write, not the base price's 1-hour one, is its 1-hour price when it sets none.
    assert (second.above_input_tokens, second.cached_input, second.cache_write_1h) == (
        1000000, Decimal("5"), Decimal("6.25"),
    )  # fmt: skip


def test_tiers_out_of_order_or_without_a_threshold_are_errors() -> None:
    assert error_of(
        priced("{input: 1, output: 2, tiers: [{above_input_tokens: 9, input: 1, output: 2}, "
               "{above_input_tokens: 5, input: 1, output: 2}]}")
    ) == message(
        "providers.openai.models.gpt-4o.pricing.tiers (line 5)",
        "list the tiers by above_input_tokens, ascending, each once",
    )  # fmt: skip
    assert error_of(priced("{input: 1, output: 2, tiers: [{input: 1, output: 2}]}")) == message(
        "providers.openai.models.gpt-4o.pricing.tiers.0.above_input_tokens (line 5)",
        "missing; give the number of input tokens above which this tier prices a call",
    )


def test_tiers_that_are_empty_or_not_a_list_are_errors_saying_which() -> None:
    where = "providers.openai.models.gpt-4o.pricing.tiers (line 5)"
    assert error_of(priced("{input: 1, output: 2, tiers: []}")) == message(
        where, "is empty: give at least one tier {above_input_tokens, input, output}, or leave tiers out"
    )
    assert error_of(priced("{input: 1, output: 2, tiers: 3}")) == message(
        where, "must be a list of {above_input_tokens, input, output}"
    )


def test_provider_kinds() -> None:
    config = parse_config(
        provider_with("base_url: https://generativelanguage.googleapis.com/v1beta\nkind: gemini\n"), {}
    )
    assert config.providers["openai"].kind == "gemini"
    assert error_of(provider_with("base_url: https://x.example/v1\nkind: bedrock\n")) == message(
        "providers.openai.kind (line 4)", "must be one of openai, anthropic, gemini, got 'bedrock'"
    )


def test_cost_in_response_is_on_unless_switched_off() -> None:
    assert parse_config(MINIMAL, {}).cost_in_response is True
    off = parse_config("features: {cost_in_response: {enabled: false}}\n" + MINIMAL, {})
    assert off.cost_in_response is False
