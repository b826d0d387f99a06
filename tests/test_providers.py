"""Issue 5 across providers: the version path rule, /v1 routing for every endpoint, the cost handed back to
the caller (headers and the SSE comment), price provenance in the record, and tiered prices.

The helpers and the all-providers config here are shared by the per-provider files (test_providers_*.py).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    GPT_4O,
    MISSING,
    MakeConfig,
    ProxyLauncher,
    RawResponse,
    RunningProxy,
    only,
    pick,
    price_of,
)
from openai.types.chat import ChatCompletionMessageParam
from upstream_stub import SSE_DONE, Reply, Stream, UpstreamStub, sse

from proxy.records import CostRecord

FIXTURES = Path(__file__).parent / "fixtures"
COST_COMMENT = re.compile(rb": meterproxy-cost (\{[^\n]*\})\n\n")
# A plain decimal: digits, an optional fraction, never an exponent.
PLAIN_DECIMAL = re.compile(r"\d+(\.\d+)?")
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]

# Prices per 1M tokens of the providers below (the shipped config.yml's list prices where it has the model).
GPT_5 = {"input": 1.25, "output": 10.00, "cached_input": 0.125}
GPT_6_1_SOL = {"input": 2.00, "output": 10.00, "cached_input": 0.10, "cache_write": 2.50}
GPT_IMAGE_2 = {"input": 5.00, "output": 40.00, "cached_input": 1.25}  # the tests' own: not in config.yml
GPT_4O_TRANSCRIBE = {"input": 6.00, "output": 10.00}  # the tests' own: audio input, text output
# Billed by the minute, which no price per token says: priced here to show its cost is null, never 0.
WHISPER_1 = {"input": 6.00, "output": 10.00}
TEXT_EMBEDDING_3_SMALL = {"input": 0.02, "output": 0}
CLAUDE_SONNET_4_6 = {
    "input": 3.00,
    "output": 15.00,
    "cached_input": 0.30,
    "cache_write": 3.75,
    "cache_write_1h": 6.00,
}
GEMINI_2_5_FLASH = {"input": 0.30, "output": 2.50, "cached_input": 0.03}
DEEPSEEK_REASONER = {"input": 0.55, "output": 2.19, "cached_input": 0.14}
OPENROUTER_GPT_4O_MINI = {"input": 0.15, "output": 0.60, "cached_input": 0.075}
OPENROUTER_CLAUDE_SONNET_4_6 = {
    "input": 3.00,
    "output": 15.00,
    "cached_input": 0.30,
    "cache_write": 3.75,
    "cache_write_1h": 6.00,
}
KIMI_K2_5 = {"input": 0.60, "output": 3.00, "cached_input": 0.10}
QWEN_PLUS = {"input": 0.40, "output": 1.20, "cached_input": 0.08}
QWEN3_MAX_CNY = {"input": 2.50, "output": 10.00, "cached_input": 0.50}
HUNYUAN_TURBOS_CNY = {"input": 0.80, "output": 2.00}
# The contract's tier example: a call with more than 200K input tokens is priced wholly at the tier.
TIERED = {
    "input": 1.25,
    "output": 10.0,
    "cached_input": 0.3125,
    "tiers": [{"above_input_tokens": 200000, "input": 2.50, "output": 15.0, "cached_input": 0.625}],
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def per_million(*terms: tuple[int, str]) -> float:
    """Exact cost of (tokens, price per 1M) terms, as the float the record must hold."""
    return float(sum(Decimal(tokens) * Decimal(price) for tokens, price in terms) / Decimal(1_000_000))


def costs(inputs: list[tuple[int, str]], outputs: list[tuple[int, str]]) -> dict[str, float]:
    """The record's three cost fields for these input and output (tokens, price per 1M) terms."""
    return {
        "input_cost": per_million(*inputs),
        "output_cost": per_million(*outputs),
        "total_cost": per_million(*inputs, *outputs),
    }


def stream_error_record(
    input_tokens: int, input_price: str, events: int, output_price: str
) -> dict[str, object]:
    """The record of a 200 stream the provider broke off: `stream_error`, with its usage estimated (the
    input from the request as sent, one output token per event of the stream), priced as given."""
    return {
        **costs([(input_tokens, input_price)], [(events, output_price)]),
        "status_code": 200,
        "error": "stream_error",
        "usage_source": "estimated",
        "input_tokens": input_tokens,
        "output_tokens": events,
    }


def split_cost_comment(body: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    """A streamed body around its one `: meterproxy-cost {...}` comment: the bytes before, its JSON, after."""
    found = list(COST_COMMENT.finditer(body))
    assert len(found) == 1, body
    match = found[0]
    comment: dict[str, Any] = json.loads(match.group(1))
    return body[: match.start()], comment, body[match.end() :]


def assert_cost_headers(response: RawResponse, record: CostRecord, cost: str, currency: str) -> None:
    """The cost handed back on a non-streamed response: the record's total as a plain decimal string."""
    returned = (response.header("x-meterproxy-cost"), response.header("x-meterproxy-currency"))
    assert returned == (cost, currency)
    assert PLAIN_DECIMAL.fullmatch(cost)
    assert Decimal(cost) == Decimal(repr(record["total_cost"]))
    assert response.header("x-meterproxy-request-id") == record["proxy_request_id"]


def events_of(stream: bytes, separator: bytes = b"\n\n") -> list[bytes]:
    """A recorded stream cut into its events, each with its blank line, one network write each."""
    return [event + separator for event in stream.split(separator) if event]


def stub_url(stub: UpstreamStub, path: str) -> str:
    return f"http://127.0.0.1:{stub.port}{path}"


def all_providers(stub: UpstreamStub) -> dict[str, Any]:
    """Every provider of issue 5 on the stub, each under its own path so the stub's target names it."""
    return {
        "openai": {
            "models": {
                "gpt-5": {"pricing": GPT_5},
                "gpt-6.1-sol": {"pricing": GPT_6_1_SOL},
                "gpt-image-2": {"pricing": GPT_IMAGE_2},
                "gpt-4o-transcribe": {"pricing": GPT_4O_TRANSCRIBE},
                "whisper-1": {"pricing": WHISPER_1},
                "text-embedding-3-small": {"pricing": TEXT_EMBEDDING_3_SMALL},
            }
        },
        "anthropic": {
            "kind": "anthropic",
            "base_url": stub_url(stub, "/anthropic/v1"),
            "models": {"claude-sonnet-4-6": {"pricing": CLAUDE_SONNET_4_6}},
        },
        "gemini": {
            "kind": "gemini",
            "base_url": stub_url(stub, "/v1beta/openai"),
            "models": {
                "gemini-2.5-flash": {"pricing": GEMINI_2_5_FLASH},
                "gemini-2.5-pro": {"pricing": TIERED},
            },
        },
        "deepseek": {
            "base_url": stub_url(stub, "/deepseek/v1"),
            "models": {"deepseek-reasoner": {"pricing": DEEPSEEK_REASONER}},
        },
        "openrouter": {
            "base_url": stub_url(stub, "/openrouter/api/v1"),
            "models": {
                "openai/gpt-4o-mini": {"pricing": OPENROUTER_GPT_4O_MINI},
                "anthropic/claude-sonnet-4.6": {"pricing": OPENROUTER_CLAUDE_SONNET_4_6},
            },
        },
        "moonshot": {
            "base_url": stub_url(stub, "/moonshot/v1"),
            "models": {"kimi-k2.5": {"pricing": KIMI_K2_5}},
        },
        "dashscope": {
            "base_url": stub_url(stub, "/dashscope-intl/compatible-mode/v1"),
            "models": {"qwen-plus": {"pricing": QWEN_PLUS}},
        },
        "dashscope-cn": {
            "base_url": stub_url(stub, "/dashscope-cn/compatible-mode/v1"),
            "currency": "CNY",
            "models": {"qwen3-max": {"pricing": QWEN3_MAX_CNY}},
        },
        "hunyuan": {
            "base_url": stub_url(stub, "/hunyuan/v1"),
            "currency": "CNY",
            "models": {"hunyuan-turbos-latest": {"pricing": HUNYUAN_TURBOS_CNY}},
        },
    }


@pytest.fixture
def providers_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """The proxy with every provider of issue 5 (and the base config's openai gpt-4o, gpt-4o-mini)."""
    return launch(make_config(providers=all_providers(stub)))


def chat_completion(usage: dict[str, Any], model: str = "gpt-4o-2024-08-06") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-C3fT9kLmN2pQrS4tUvWxYz0a1B2c",
            "object": "chat.completion",
            "created": 1756482001,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
    ).encode()


# The core's recorded chat stream (gpt-4o, 1000 in, 200 of them cached, 500 out) ends with its usage chunk.
CHAT_STREAM = fixture("openai_chat_stream.sse")
CHAT_USAGE_CHUNK = fixture("openai_chat_stream_usage_chunk.sse")
assert CHAT_STREAM.endswith(CHAT_USAGE_CHUNK + SSE_DONE)
CHAT_EVENTS = CHAT_STREAM[: -len(CHAT_USAGE_CHUNK + SSE_DONE)]


# ----------------------------------------------------------------------------------------------------------
# The path rule: /{provider}/{version}/{rest} -> base_url cut after its segment `version`, + "/" + rest.


def test_version_in_the_path_cuts_base_url_after_that_segment(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(
        Reply(body=fixture("gemini_generate_content.json")), Reply(body=fixture("gemini_openai_chat.json"))
    )
    native = providers_proxy.post_json(
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "When does it renew?"}]}]},
    )
    compatible = providers_proxy.post_json(
        "/gemini/v1/chat/completions", {"model": "gemini-2.5-flash", "messages": HELLO}
    )

    assert (native.status, compatible.status) == (200, 200)
    assert [seen.target for seen in stub.wait_requests(2)] == [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/openai/chat/completions",
    ]
    records = providers_proxy.wait_records(2)
    assert [(r["provider"], r["model"], r["endpoint"], r["usage_source"]) for r in records] == [
        ("gemini", "gemini-2.5-flash", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", "provider"),
        ("gemini", "gemini-2.5-flash", "/gemini/v1/chat/completions", "provider"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/gemini/v2/models/gemini-2.5-flash:generateContent",
        "/openai/v1beta/responses",
        "/anthropic/v2/messages",
        "/openai/files/file-abc123",
    ],
)
def test_a_version_that_is_not_in_base_url_is_404_and_never_reaches_upstream(
    providers_proxy: RunningProxy, stub: UpstreamStub, path: str
) -> None:
    response = providers_proxy.post_json(path, {"model": "gpt-5", "input": "hi"})

    assert response.status == 404, response.body
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error), error
    assert stub.requests == []
    stub.push(Reply(body=chat_completion({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    good = providers_proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    assert good.status == 200
    assert only(providers_proxy.wait_records(1))["endpoint"] == "/v1/chat/completions"


V1_BY_MODEL: dict[str, tuple[dict[str, Any], str, str, str]] = {
    "responses": (
        {"model": "gpt-5", "input": "What is the capital of France?"},
        "responses_create.json",
        "/v1/responses",
        "openai",
    ),
    "embeddings": (
        {"model": "text-embedding-3-small", "input": ["first", "second"], "dimensions": 8},
        "embeddings_create.json",
        "/v1/embeddings",
        "openai",
    ),
    "messages": (
        {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": HELLO},
        "anthropic_messages.json",
        "/anthropic/v1/messages",
        "anthropic",
    ),
}


@pytest.mark.parametrize("rest", V1_BY_MODEL, ids=list(V1_BY_MODEL))
def test_plain_v1_routes_every_endpoint_by_the_bodys_model(
    providers_proxy: RunningProxy, stub: UpstreamStub, rest: str
) -> None:
    payload, body_fixture, upstream_target, provider = V1_BY_MODEL[rest]
    body = fixture(body_fixture)
    stub.push(Reply(body=body))
    response = providers_proxy.post_json(f"/v1/{rest}", payload)

    assert (response.status, response.body) == (200, body)
    seen = only(stub.requests)
    assert (seen.target, seen.json()) == (upstream_target, payload)
    record = only(providers_proxy.wait_records(1))
    expected = {"provider": provider, "model": payload["model"], "usage_source": "provider", "priced": True}
    assert pick(record, expected) == expected
    assert record["input_tokens"] > 0


# ----------------------------------------------------------------------------------------------------------
# The cost back to the caller: headers on non-streamed responses, an SSE comment at the end of streams.


def test_non_streamed_response_carries_cost_currency_and_request_id_headers(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = fixture("openai_chat.json")
    stub.push(Reply(body=body))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.body) == (200, body)
    record = only(proxy.wait_records(1))
    # (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M
    assert record["total_cost"] == per_million((800, "2.50"), (200, "1.25"), (500, "10.00")) == 0.00725
    assert_cost_headers(response, record, "0.00725", "USD")


def test_a_small_cost_header_is_a_plain_decimal_without_exponent(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=chat_completion({"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46})))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})

    record = only(proxy.wait_records(1))
    # 12 * 0.15 + 34 * 0.60 per 1M = 0.0000222, which repr() writes as 2.22e-05
    assert record["total_cost"] == per_million((12, "0.15"), (34, "0.60")) == 2.22e-05
    assert_cost_headers(response, record, "0.0000222", "USD")


def test_unpriced_call_has_no_cost_or_currency_header(proxy: RunningProxy, stub: UpstreamStub) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    stub.push(Reply(body=chat_completion(usage, model="mystery-model")))
    response = proxy.post_json("/openai/v1/chat/completions", {"model": "mystery-model", "messages": HELLO})

    assert response.status == 200
    record = only(proxy.wait_records(1))
    assert (record["priced"], record["total_cost"], record.get("price", MISSING)) == (False, None, None)
    assert response.header("x-meterproxy-cost") is None
    assert response.header("x-meterproxy-currency") is None
    assert response.header("x-meterproxy-request-id") == record["proxy_request_id"]


def test_stream_gets_the_cost_comment_just_before_done(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Stream([CHAT_EVENTS, CHAT_USAGE_CHUNK, SSE_DONE]))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True})

    # The usage chunk the proxy asked for is gone; the comment is the contract's line, then a blank line.
    assert response.body == (
        CHAT_EVENTS + b': meterproxy-cost {"total_cost": 0.00725, "currency": "USD", "input_tokens": 1000, '
        b'"output_tokens": 500}\n\n' + SSE_DONE
    )
    record = only(proxy.wait_records(1))
    assert (record["total_cost"], record["input_tokens"], record["output_tokens"]) == (0.00725, 1000, 500)
    assert response.header("x-meterproxy-request-id") == record["proxy_request_id"]


def test_cost_comment_lands_before_done_however_the_stream_is_cut_into_writes(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    whole = CHAT_EVENTS + CHAT_USAGE_CHUNK + SSE_DONE
    crlf = whole.replace(b"\n", b"\r\n")
    writes = {
        "one write": [whole],
        "[DONE] split": [whole[:-9], whole[-9:-5], whole[-5:]],
        "usage chunk split": [
            CHAT_EVENTS + CHAT_USAGE_CHUNK[:40],
            CHAT_USAGE_CHUNK[40:] + SSE_DONE[:3],
            SSE_DONE[3:],
        ],
        "crlf": [crlf[:1000], crlf[1000:]],
    }
    for chunks in writes.values():
        stub.push(Stream(chunks))
    bodies = [
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True}).body
        for _ in writes
    ]

    parts = [split_cost_comment(body) for body in bodies]
    crlf_events = CHAT_EVENTS.replace(b"\n", b"\r\n")
    assert [(before, after) for before, _, after in parts] == [
        (CHAT_EVENTS, SSE_DONE),
        (CHAT_EVENTS, SSE_DONE),
        (CHAT_EVENTS, SSE_DONE),
        (crlf_events, b"data: [DONE]\r\n\r\n"),
    ]
    # (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M
    assert [comment["total_cost"] for _, comment, _ in parts] == [0.00725] * 4


def test_chat_stream_without_done_gets_the_comment_at_its_end(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream([CHAT_EVENTS, CHAT_USAGE_CHUNK]))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True})

    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (CHAT_EVENTS, b"")
    # (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M
    assert comment == {"total_cost": 0.00725, "currency": "USD", "input_tokens": 1000, "output_tokens": 500}


def test_stream_that_asked_for_usage_keeps_it_and_gets_the_comment(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream([CHAT_EVENTS, CHAT_USAGE_CHUNK, SSE_DONE]))
    with proxy.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
    stub.push(Stream([CHAT_EVENTS, CHAT_USAGE_CHUNK, SSE_DONE]))
    response = proxy.post_json(
        "/v1/chat/completions",
        {"model": "gpt-4o", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )

    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1000
    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (CHAT_EVENTS + CHAT_USAGE_CHUNK, SSE_DONE)
    # (1000 - 200) * 2.50 + 200 * 1.25 + 500 * 10.00 per 1M
    assert comment == {"total_cost": 0.00725, "currency": "USD", "input_tokens": 1000, "output_tokens": 500}


def test_unpriced_stream_gets_a_comment_with_null_cost(proxy: RunningProxy, stub: UpstreamStub) -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    head = {"id": "chatcmpl-u1", "object": "chat.completion.chunk", "model": "mystery-model"}
    events = [
        sse({**head, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
        sse({**head, "choices": [], "usage": usage}),
    ]
    stub.push(Stream([*events, SSE_DONE]))
    payload = {"model": "mystery-model", "messages": HELLO, "stream": True}
    response = proxy.post_json(
        "/openai/v1/chat/completions", {**payload, "stream_options": {"include_usage": True}}
    )

    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (b"".join(events), SSE_DONE)
    assert (comment["total_cost"], comment["input_tokens"], comment["output_tokens"]) == (None, 9, 1)
    assert only(proxy.wait_records(1))["total_cost"] is None


def test_cost_in_response_switched_off_sends_no_cost_headers_and_no_comment(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(features={"cost_in_response": {"enabled": False}}))
    stub.push(Reply(body=fixture("openai_chat.json")), Stream([CHAT_EVENTS, CHAT_USAGE_CHUNK, SSE_DONE]))
    plain = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    streamed = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": True})

    assert (plain.body, streamed.body) == (fixture("openai_chat.json"), CHAT_EVENTS + SSE_DONE)
    assert (plain.header("x-meterproxy-cost"), plain.header("x-meterproxy-currency")) == (None, None)
    records = proxy.wait_records(2)
    assert [plain.header("x-meterproxy-request-id"), streamed.header("x-meterproxy-request-id")] == [
        record["proxy_request_id"] for record in records
    ]
    assert [record["total_cost"] for record in records] == [0.00725, 0.00725]


# ----------------------------------------------------------------------------------------------------------
# Price provenance and tiers.


def test_record_carries_the_prices_it_was_priced_at(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=fixture("openai_chat.json")))
    proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    record = only(proxy.wait_records(1))
    # gpt-4o has no cache_write price: it defaults to input, and the 1-hour one to cache_write.
    assert record.get("price", MISSING) == {
        "input": GPT_4O["input"],
        "output": GPT_4O["output"],
        "cached_input": GPT_4O["cached_input"],
        "cache_write": 2.5,
        "tier": None,
        "cache_write_1h": 2.5,
    }
    assert all(isinstance(value, float) for key, value in price_of(record).items() if key != "tier")


@pytest.mark.parametrize(
    ("prompt", "cached", "expected_price", "inputs", "outputs"),
    [
        # At exactly 200000 input tokens the call is not above the tier: (200000 - 50000) * 1.25 +
        # 50000 * 0.3125 + 1000 * 10.0 per 1M.
        (
            200000,
            50000,
            {
                "input": 1.25,
                "output": 10.0,
                "cached_input": 0.3125,
                "cache_write": 1.25,
                "tier": None,
                "cache_write_1h": 1.25,
            },
            [(150000, "1.25"), (50000, "0.3125")],
            [(1000, "10.0")],
        ),
        # One token more and the whole call is at the tier: (200001 - 50000) * 2.50 + 50000 * 0.625 +
        # 1000 * 15.0 per 1M; the tier's absent cache_write defaults to the tier's input.
        (
            200001,
            50000,
            {
                "input": 2.5,
                "output": 15.0,
                "cached_input": 0.625,
                "cache_write": 2.5,
                "tier": 200000,
                "cache_write_1h": 2.5,
            },
            [(150001, "2.50"), (50000, "0.625")],
            [(1000, "15.0")],
        ),
    ],
    ids=["at-threshold-base-price", "above-threshold-tier-price"],
)
def test_tiered_price_applies_to_the_whole_call_above_the_threshold(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    prompt: int,
    cached: int,
    expected_price: dict[str, Any],
    inputs: list[tuple[int, str]],
    outputs: list[tuple[int, str]],
) -> None:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": 1000,
        "total_tokens": prompt + 1000,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    stub.push(Reply(body=chat_completion(usage, model="gemini-2.5-pro")))
    response = providers_proxy.post_json(
        "/gemini/v1/chat/completions", {"model": "gemini-2.5-pro", "messages": HELLO}
    )

    record = only(providers_proxy.wait_records(1))
    expected = {**costs(inputs, outputs), "price": expected_price, "input_tokens": prompt, "priced": True}
    assert pick(record, expected) == expected
    assert Decimal(response.header("x-meterproxy-cost") or "nan") == Decimal(repr(expected["total_cost"]))


def test_tier_without_cached_input_prices_cached_tokens_at_the_tiers_input(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    tiered = {
        "input": 0.40,
        "output": 1.20,
        "cached_input": 0.08,
        "tiers": [{"above_input_tokens": 128000, "input": 1.20, "output": 3.60}],
    }
    proxy = launch(make_config(providers={"openai": {"models": {"long-context": {"pricing": tiered}}}}))
    usage = {
        "prompt_tokens": 130000,
        "completion_tokens": 2000,
        "total_tokens": 132000,
        "prompt_tokens_details": {"cached_tokens": 100000},
    }
    stub.push(Reply(body=chat_completion(usage, model="long-context")))
    proxy.post_json("/v1/chat/completions", {"model": "long-context", "messages": HELLO})

    record = only(proxy.wait_records(1))
    # (130000 - 100000) * 1.20 + 100000 * 1.20 + 2000 * 3.60 per 1M
    expected = {
        **costs([(30000, "1.20"), (100000, "1.20")], [(2000, "3.60")]),
        "price": {
            "input": 1.2,
            "output": 3.6,
            "cached_input": 1.2,
            "cache_write": 1.2,
            "tier": 128000,
            "cache_write_1h": 1.2,
        },
    }
    assert pick(record, expected) == expected


def test_of_several_tiers_the_highest_one_the_input_is_above_prices_the_call(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    tiered = {
        "input": 1.20,
        "output": 6.00,
        "cached_input": 0.24,
        "tiers": [
            {"above_input_tokens": 32000, "input": 2.40, "output": 12.00, "cached_input": 0.48},
            {"above_input_tokens": 128000, "input": 3.00, "output": 15.00, "cached_input": 0.60},
        ],
    }
    proxy = launch(make_config(providers={"openai": {"models": {"qwen3-max": {"pricing": tiered}}}}))
    usages = [(30000, 1000), (100000, 20000), (150000, 40000)]
    for prompt, cached in usages:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": 500,
            "total_tokens": prompt + 500,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        stub.push(Reply(body=chat_completion(usage, model="qwen3-max")))
        proxy.post_json("/v1/chat/completions", {"model": "qwen3-max", "messages": HELLO})

    records = proxy.wait_records(3)
    assert [(record["total_cost"], price_of(record)["tier"]) for record in records] == [
        # (30000 - 1000) * 1.20 + 1000 * 0.24 + 500 * 6.00 per 1M
        (per_million((29000, "1.20"), (1000, "0.24"), (500, "6.00")), None),
        # (100000 - 20000) * 2.40 + 20000 * 0.48 + 500 * 12.00 per 1M
        (per_million((80000, "2.40"), (20000, "0.48"), (500, "12.00")), 32000),
        # (150000 - 40000) * 3.00 + 40000 * 0.60 + 500 * 15.00 per 1M
        (per_million((110000, "3.00"), (40000, "0.60"), (500, "15.00")), 128000),
    ]
