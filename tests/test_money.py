from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.money import UNIT_SCALE, Exchange, ExchangeError, format_money, units_to_decimal


def test_units_sum_many_costs_without_drift() -> None:
    costs = [0.1] * 10_000
    assert sum(costs) != 1000.0  # the naive float sum drifts
    total = units_to_decimal(sum(int(cost * UNIT_SCALE) for cost in costs))
    assert round(total, 9) == Decimal("1000.000000000")
    assert units_to_decimal(int(0.5 * UNIT_SCALE)) == Decimal("0.5")


PRICES = ["2.5", "10", "0.15", "0.6", "0.075", "3", "15", "3.75", "0.3", "0.8", "1.25", "0.0375"]  # per 1M


@given(st.lists(st.tuples(st.integers(0, 2_000_000), st.sampled_from(PRICES)), max_size=60))
@example([(1, "3.5")])  # 3.5e-06: a float below 0.0000035, which rounded to $0.000003
@example([(7, "2.5"), (8, "2.5")])  # 1.75e-05 + 2e-05, exactly half-way at 6 places
def test_units_sum_to_the_decimals_the_records_write(calls: list[tuple[int, str]]) -> None:
    # Each cost as the proxy stores it: the nearest float to tokens x price, written as its shortest repr.
    costs = [float(Fraction(tokens) * Fraction(price) / 1_000_000) for tokens, price in calls]
    written = sum((Decimal(repr(cost)) for cost in costs), Decimal(0))
    assert units_to_decimal(sum(int(cost * UNIT_SCALE) for cost in costs)) == written


def test_exchange_converts_with_rates_and_leaves_unknown_currencies() -> None:
    exchange = Exchange("USD", {"CNY": Decimal("0.14")})
    assert exchange.convert(Decimal("10"), "CNY") == Decimal("1.40")
    assert exchange.convert(Decimal("10"), "USD") == Decimal("10")
    assert exchange.convert(Decimal("10"), "JPY") is None


def test_exchange_rebased_to_another_currency() -> None:
    in_cny = Exchange("USD", {"CNY": Decimal("0.14"), "EUR": Decimal("1.1")}).to("cny")
    assert in_cny.currency == "CNY"
    assert in_cny.convert(Decimal("1.4"), "USD") == Decimal("10")
    assert in_cny.convert(Decimal("7"), "CNY") == Decimal("7")
    assert round(in_cny.convert(Decimal("1.4"), "EUR") or 0, 20) == Decimal("11")


def test_exchange_without_a_rate_names_the_currency_and_the_fix() -> None:
    with pytest.raises(
        ExchangeError, match=r"--currency JPY: no exchange rate .* CNY, USD .* exchange_rates.JPY"
    ):
        Exchange("USD", {"CNY": Decimal("0.14")}).to("JPY")


def test_format_money() -> None:
    assert format_money(Decimal("12.3456784"), "USD") == "$12.345678"
    assert format_money(Decimal("1234.5"), "EUR") == "€1,234.500000"
    assert format_money(Decimal("-2"), "USD") == "-$2.000000"
    assert format_money(Decimal("7.1"), "CNY") == "7.100000 CNY"
