from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.calls import decimal_text, iso_time
from proxy.config import Price


@example(2**-24)  # a tie: a float format rounds the binary value to ...062, the shortest text is ...063
@example(-4.75e-05)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_decimal_text_is_the_exact_decimal_of_the_float_never_in_exponent_form(amount: float) -> None:
    text = decimal_text(amount)
    assert text == format(Decimal(repr(amount)), "f")
    assert "e" not in text and "E" not in text
    assert float(text) == amount


def test_decimal_text_examples() -> None:
    assert decimal_text(4.75e-05) == "0.0000475"
    assert decimal_text(0.0001) == "0.0001"
    assert decimal_text(0.1 + 0.2) == "0.30000000000000004"
    assert decimal_text(0.0) == "0.0"
    assert decimal_text(12.5) == "12.5"
    assert decimal_text(1e16) == "10000000000000000"
    assert decimal_text(1.8e-06) == "0.0000018"
    assert decimal_text(5e-324) == "0." + "0" * 323 + "5"


def test_iso_time_has_microseconds_and_carries_a_rounded_up_second() -> None:
    assert iso_time(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert iso_time(1_700_000_000.9999996) == "2023-11-14T22:13:21.000000Z"


def test_a_price_as_a_record_field() -> None:
    tier = Price(Decimal("5"), Decimal("20"), Decimal("2.5"), Decimal("6.25"), above_input_tokens=200_000)
    price = Price(Decimal("2.5"), Decimal("10"), Decimal("1.25"), Decimal("3.125"), tiers=(tier,))
    expected = {"input": 2.5, "output": 10.0, "cached_input": 1.25, "cache_write": 3.125, "tier": None}
    assert price.record == expected
    assert tier.record["tier"] == 200_000
    assert price.record is price.record  # worked out once per price
