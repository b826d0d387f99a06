import math
from decimal import Decimal, localcontext

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Price, Provider
from proxy.pricing import find_price, price_call
from proxy.usage import Usage

GPT_4O = Price(Decimal("2.50"), Decimal("10.00"), Decimal("1.25"), Decimal("2.50"))
CLAUDE = Price(Decimal("3"), Decimal("15"), Decimal("0.30"), Decimal("3.75"))
CLAUDE_1H = Price(Decimal("3"), Decimal("15"), Decimal("0.30"), Decimal("3.75"), Decimal("6.00"))


def provider(**models: Price) -> Provider:
    return Provider("openai", "https://api.openai.com/v1", None, 600, "USD", True, "openai", models)


def test_cost_formula_with_cached_tokens() -> None:
    cost = price_call(Usage(1000, 500, 1500, cached_tokens=200), GPT_4O)
    # (1000 - 200) * 2.50 / 1M + 200 * 1.25 / 1M = 0.002 + 0.00025; 500 * 10 / 1M = 0.005
    assert (cost.input_cost, cost.output_cost, cost.total_cost) == (0.00225, 0.005, 0.00725)


def test_cost_formula_with_cache_writes_and_reasoning_priced_as_output() -> None:
    cost = price_call(
        Usage(10000, 2000, 12000, cached_tokens=6000, cache_write_tokens=3000, reasoning_tokens=1500), CLAUDE
    )
    # 1000 * 3 + 6000 * 0.30 + 3000 * 3.75 = 3000 + 1800 + 11250 = 16050 per 1M; output 2000 * 15 = 30000
    assert (cost.input_cost, cost.output_cost, cost.total_cost) == (0.01605, 0.03, 0.04605)


def test_1_hour_cache_writes_are_priced_at_their_own_price() -> None:
    usage = Usage(10000, 742, 10742, cached_tokens=6000, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    cost = price_call(usage, CLAUDE_1H)
    # 1000 * 3 + 6000 * 0.30 + (3000 - 2000) * 3.75 + 2000 * 6.00 = 3000 + 1800 + 3750 + 12000 = 20550 per 1M;
    # output 742 * 15 = 11130 per 1M
    assert (cost.input_cost, cost.output_cost, cost.total_cost) == (0.02055, 0.01113, 0.03168)


def test_without_a_1_hour_price_1_hour_cache_writes_cost_what_other_cache_writes_do() -> None:
    usage = Usage(10000, 742, 10742, cached_tokens=6000, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    cost = price_call(usage, CLAUDE)
    # 1000 * 3 + 6000 * 0.30 + 3000 * 3.75 = 16050 per 1M, as before 1-hour writes had a price of their own
    assert (cost.input_cost, cost.total_cost) == (0.01605, 0.02718)


def test_1_hour_cache_writes_past_the_cache_writes_are_priced_as_the_cache_writes() -> None:
    # A record from another writer may say more 1-hour writes than writes: only the writes are priced.
    usage = Usage(10000, 0, 10000, cached_tokens=6000, cache_write_tokens=3000, cache_write_1h_tokens=5000)
    # 1000 * 3 + 6000 * 0.30 + 3000 * 6.00 = 3000 + 1800 + 18000 = 22800 per 1M
    assert price_call(usage, CLAUDE_1H).total_cost == 0.0228


def test_exact_decimal_arithmetic_avoids_float_drift() -> None:
    price = Price(Decimal("0.1"), Decimal("0.2"), Decimal("0.1"), Decimal("0.1"))
    cost = price_call(Usage(3, 3, 6), price)
    assert cost.total_cost == 0.0000009  # 0.1*3 + 0.2*3 = 0.9 per 1M; floats would give 9.000000000000001e-07


def test_zero_usage_costs_zero() -> None:
    assert price_call(Usage(0, 0, 0), GPT_4O).total_cost == 0.0


def test_price_lookup_order() -> None:
    mini = Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.15"), Decimal("0.15"))
    p = provider(**{"gpt-4o": GPT_4O, "gpt-4o-mini": mini})
    assert find_price(p, "gpt-4o-mini", "gpt-4o-2024-08-06") is mini
    assert find_price(p, "my-alias", "gpt-4o-mini") is mini
    assert find_price(p, "gpt-4o-2024-08-06", None) is GPT_4O
    assert find_price(p, "unknown", "gpt-4o-2024-11-20") is GPT_4O
    assert find_price(p, "unknown", None) is None
    assert find_price(p, None, None) is None


def test_date_suffix_forms() -> None:
    p = provider(**{"claude-3-5-sonnet": CLAUDE, "gpt-4": GPT_4O})
    assert find_price(p, "claude-3-5-sonnet-20241022", None) is CLAUDE
    assert find_price(p, "gpt-4-0613", None) is GPT_4O
    assert find_price(p, "gpt-4-turbo", None) is None


def test_a_call_above_a_tier_threshold_is_priced_wholly_at_that_tier() -> None:
    tier = Price(
        Decimal("2.50"), Decimal("15"), Decimal("0.625"), Decimal("2.50"), above_input_tokens=200_000
    )
    price = Price(Decimal("1.25"), Decimal("10"), Decimal("0.3125"), Decimal("1.25"), tiers=(tier,))
    below = price_call(Usage(200_000, 1000, 201_000), price)
    # 200000 * 1.25 + 1000 * 10 per 1M
    assert (below.total_cost, below.applied) == (0.26, price)
    above = price_call(Usage(200_001, 1000, 201_001, cached_tokens=100_000), price)
    # 100001 * 2.50 + 100000 * 0.625 + 1000 * 15 per 1M = 250002.5 + 62500 + 15000
    assert (above.total_cost, above.applied) == (0.3275025, tier)


def test_a_tier_prices_1_hour_cache_writes_at_its_own_1_hour_price() -> None:
    tier = Price(
        Decimal("6"),
        Decimal("22.5"),
        Decimal("0.6"),
        Decimal("7.5"),
        Decimal("12"),
        above_input_tokens=200_000,
    )
    price = Price(Decimal("3"), Decimal("15"), Decimal("0.3"), Decimal("3.75"), Decimal("6"), tiers=(tier,))
    usage = Usage(300_000, 0, 300_000, cache_write_tokens=100_000, cache_write_1h_tokens=40_000)
    # 200000 * 6 + 60000 * 7.5 + 40000 * 12 = 1200000 + 450000 + 480000 = 2130000 per 1M
    assert price_call(usage, price).total_cost == 2.13


def _decimal_cost(usage: Usage, price: Price) -> tuple[float, float, float]:
    """The cost formula in Decimal with room for every digit, rounded to float once."""
    with localcontext() as context:
        context.prec = 60
        uncached = max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
        written_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        price_1h = price.cache_write if price.cache_write_1h is None else price.cache_write_1h
        input_cost = (
            uncached * price.input + usage.cached_tokens * price.cached_input
            + (usage.cache_write_tokens - written_1h) * price.cache_write + written_1h * price_1h
        ) / 1_000_000  # fmt: skip
        output_cost = usage.output_tokens * price.output / 1_000_000
        return float(input_cost), float(output_cost), float(input_cost + output_cost)


def _prices() -> st.SearchStrategy[Decimal]:
    """Prices per 1M tokens with 0 to 6 decimals."""
    return st.builds(
        lambda units, places: Decimal(units).scaleb(-places), st.integers(0, 10**11), st.integers(0, 6)
    )


@settings(max_examples=500)
@given(st.tuples(*[_prices()] * 4, st.none() | _prices()), st.tuples(*[st.integers(0, 10**10)] * 5))
def test_pricing_in_whole_numbers_gives_the_decimal_formula_to_the_last_bit(
    prices: tuple[Decimal, Decimal, Decimal, Decimal, Decimal | None], tokens: tuple[int, int, int, int, int]
) -> None:
    price = Price(*prices)
    prompt, output, cached, written, written_1h = tokens
    usage = Usage(
        prompt,
        output,
        prompt + output,
        cached_tokens=cached,
        cache_write_tokens=written,
        cache_write_1h_tokens=written_1h,
    )
    cost = price_call(usage, price)
    assert (cost.input_cost, cost.output_cost, cost.total_cost) == _decimal_cost(usage, price)


@given(st.floats(1e-9, 1e9), st.sampled_from([-1, 1]))
def test_a_price_a_hair_off_halfway_between_two_floats_costs_the_float_on_its_side(
    below: float, side: int
) -> None:
    # Exactly halfway between two floats, a price's last digits decide which one the cost rounds to: a price
    # with more than 28 digits must not be cut to 28 on its way into whole numbers.
    above = math.nextafter(below, math.inf)
    with localcontext() as context:
        context.prec = 200
        halfway = (Decimal(below) + Decimal(above)) / 2
        price = halfway + side * Decimal(10) ** (halfway.adjusted() - 40)
    cost = price_call(Usage(1_000_000, 0, 1_000_000), Price(price, price, price, price))
    assert cost.input_cost == cost.total_cost == (above if side > 0 else below)
