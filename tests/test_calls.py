import json
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.calls import Call, decimal_text, iso_time
from proxy.config import Price
from proxy.configfile import parse_config
from proxy.facts import StreamFacts
from proxy.records import CallError
from proxy.usage import Api


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
    expected = {
        "input": 2.5,
        "output": 10.0,
        "cached_input": 1.25,
        "cache_write": 3.125,
        "tier": None,
        "cache_write_1h": 3.125,
    }
    assert price.record == expected
    assert tier.record["tier"] == 200_000
    assert price.record is price.record  # worked out once per price


def priced_call(api: Api, stream: bool) -> Call:
    text = json.dumps(
        {
            "providers": {
                "p": {
                    "base_url": "http://upstream.invalid/v1",
                    "models": {"m": {"pricing": {"input": 2, "output": 8}}},
                }
            }
        }
    )
    provider = parse_config(text, {}).providers["p"]
    call = Call("id", 0.0, 0.0, provider, "m", api, stream, "user", {"messages": "hi"})
    call.sent, call.status = True, 200
    return call


def test_a_body_whose_usage_has_a_count_that_is_not_a_count_is_billed_as_one_without_usage() -> None:
    call = priced_call("chat", stream=False)
    call.body = b'{"usage":{"prompt_tokens":10,"completion_tokens":"57"}}'
    bill = call.settle()
    assert (bill.source, bill.cost, bill.error) == ("none", None, None)
    record = call.record(bill)
    assert (record["input_cost"], record["output_cost"], record["total_cost"], record["price"]) == (None,) * 4


STREAM_NOT_A_COUNT: dict[Api, list[bytes]] = {
    "chat": [
        b'{"id":"c","choices":[{"delta":{"content":"Hi"}}]}',
        b'{"id":"c","choices":[{"delta":{},"finish_reason":"stop"}]}',
        b'{"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":-57}}',
    ],
    "anthropic": [
        b'{"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,"output_tokens":1}}}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}',
        b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":true}}',
    ],
    "gemini": [
        b'{"candidates":[{"content":{}}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":1}}',
        b'{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,'
        b'"candidatesTokenCount":1e20}}',
    ],
}


@pytest.mark.parametrize("api", STREAM_NOT_A_COUNT)
@pytest.mark.parametrize(("error", "source"), [(None, "none"), ("upstream_reset", "estimated")])
def test_a_stream_whose_last_usage_has_a_count_that_is_not_a_count_is_billed_as_one_whose_usage_never_came(
    api: Api, error: CallError | None, source: str
) -> None:
    # Whole, it is as a stream the provider sent no usage for: no cost. Cut, it is estimated as any cut
    # stream is. Never the earlier usage, nor the rest of the counts with the bad one read as 0.
    call = priced_call(api, stream=True)
    facts = call.facts = StreamFacts(api)
    for data in STREAM_NOT_A_COUNT[api]:
        facts.observe(data)
    call.error = error
    bill = call.settle()
    assert bill.source == source
    if error is None:
        assert bill.cost is None and bill.usage.total_tokens == 0
    else:
        assert bill.cost is not None and bill.cost.output_cost > 0 and bill.cost.input_cost > 0


@pytest.mark.parametrize(
    ("status", "error", "cost"),
    [
        (429, None, 0.0),
        (503, "pool_timeout", 0.0),
        (504, "upstream_timeout", None),
        (502, "upstream_reset", None),
    ],
)
def test_a_call_nothing_was_billed_for_costs_zero_one_the_provider_may_have_billed_is_unknown(
    status: int, error: CallError | None, cost: float | None
) -> None:
    # A provider's refusal and a call that waited in vain for an upstream slot never ran at the provider:
    # 0. A timeout or a reset may have been billed, and the usage never came: unknown, not 0.
    call = priced_call("chat", stream=False)
    call.status, call.error = status, error
    record = call.record(call.settle())
    assert (record["input_cost"], record["output_cost"], record["total_cost"]) == (cost,) * 3
    assert (record["usage_source"], record["priced"], record["status_code"], record["error"]) == (
        "none",
        True,
        status,
        error,
    )
