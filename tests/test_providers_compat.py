"""OpenAI-compatible providers and their usage quirks: DeepSeek's cache hit counts in a stream, OpenRouter's
own cost, Moonshot's top-level cached_tokens, DashScope (USD and CNY), Tencent Hunyuan (CNY) and vLLM's
usage on every chunk."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import MakeConfig, ProxyLauncher, RunningProxy, only, pick
from openai import APIError
from openai.types.chat import ChatCompletionMessageParam
from test_providers import (
    all_providers,
    assert_cost_headers,
    costs,
    events_of,
    fixture,
    split_cost_comment,
    stream_error_record,
    stub_url,
)
from upstream_stub import SSE_DONE, Reply, Stream, UpstreamStub, sse

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What notice does clause 9 require?"}]


@pytest.fixture
def providers_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    return launch(make_config(providers=all_providers(stub)))


def test_deepseek_stream_prices_cache_hits_once_and_reasoning_as_output(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stream = fixture("deepseek_stream_reasoner.sse")
    stub.push(Stream(events_of(stream)))
    response = providers_proxy.post_json(
        "/deepseek/v1/chat/completions", {"model": "deepseek-reasoner", "messages": ASK, "stream": True}
    )

    seen = only(stub.requests)
    assert seen.target == "/deepseek/v1/chat/completions"
    assert seen.json()["stream_options"] == {"include_usage": True}
    # DeepSeek's usage rides on the finish chunk, which has a choice: the client gets every byte of it.
    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (stream[: -len(SSE_DONE)], SSE_DONE)
    record = only(providers_proxy.wait_records(1))
    # Both cached_tokens and prompt_cache_hit_tokens say 2944: (3100 - 2944) * 0.55 + 2944 * 0.14 +
    # 1480 * 2.19 per 1M.
    expected = {
        **costs([(156, "0.55"), (2944, "0.14")], [(1480, "2.19")]),
        "provider": "deepseek",
        "request_id": "0a1d5e3c-7b9f-4e2a-8c61-3f5b9d2e7a14",
        "response_model": "deepseek-reasoner",
        "input_tokens": 3100,
        "cached_input_tokens": 2944,
        "output_tokens": 1480,
        "reasoning_tokens": 1230,
        "total_tokens": 4580,
        "finish_reason": "stop",
        "is_streaming": True,
        "usage_source": "provider",
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.00373916
    assert comment == {
        "total_cost": 0.00373916,
        "currency": "USD",
        "input_tokens": 3100,
        "output_tokens": 1480,
    }


def test_openrouter_cost_is_kept_beside_ours(providers_proxy: RunningProxy, stub: UpstreamStub) -> None:
    body = fixture("openrouter_chat.json")
    stub.push(Reply(body=body))
    with providers_proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="openrouter/openai/gpt-4o-mini", messages=ASK
        )

    assert raw.http_response.content == body
    seen = only(stub.requests)
    assert (seen.target, seen.json()["model"]) == (
        "/openrouter/api/v1/chat/completions",
        "openai/gpt-4o-mini",
    )
    record = only(providers_proxy.wait_records(1))
    # (2400 - 1200) * 0.15 + 1200 * 0.075 + 350 * 0.60 per 1M; OpenRouter's own figure is 0.000495.
    expected = {
        **costs([(1200, "0.15"), (1200, "0.075")], [(350, "0.60")]),
        "provider_reported_cost": 0.000495,
        "provider": "openrouter",
        "model": "openai/gpt-4o-mini",
        "request_id": "gen-1756481120-Xq3nPZ8wLk2Vt9RbYc4H",
        "input_tokens": 2400,
        "cached_input_tokens": 1200,
        "output_tokens": 350,
    }
    assert pick(record, expected) == expected
    assert raw.headers.get("x-meterproxy-cost") == "0.00048"


def test_openrouter_stream_keeps_its_comments_and_usage_chunk_and_its_cost(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stream = fixture("openrouter_chat_stream.sse")
    stub.push(Stream(events_of(stream)))
    response = providers_proxy.post_json(
        "/openrouter/v1/chat/completions",
        {"model": "anthropic/claude-sonnet-4.6", "messages": ASK, "stream": True},
    )

    # OpenRouter always sends usage, on a chunk that has a choice: nothing of the stream is removed.
    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (stream[: -len(SSE_DONE)], SSE_DONE)
    record = only(providers_proxy.wait_records(1))
    # (21400 - 16384 - 4096) * 3.00 + 16384 * 0.30 + 4096 * 3.75 + 612 * 15.00 per 1M
    expected = {
        **costs([(920, "3.00"), (16384, "0.30"), (4096, "3.75")], [(612, "15.00")]),
        "provider_reported_cost": 0.0324315,
        "input_tokens": 21400,
        "cached_input_tokens": 16384,
        "cache_write_tokens": 4096,
        "output_tokens": 612,
        "finish_reason": "stop",
    }
    assert pick(record, expected) == expected
    assert comment["total_cost"] == expected["total_cost"] == 0.0322152


# How an OpenAI-compatible server breaks off a chat stream whose 200 is sent: a chunk with an `error` at
# its top level. OpenRouter's keeps the chunk's fields and ends its choice with finish_reason "error";
# OpenAI's, vLLM's and SGLang's chunk is the error object alone. The `openai` SDK raises at either.
OPENROUTER_ERROR = {
    "id": "gen-1756481177-T7vKm2Qp9XsLw4RzNb8D",
    "object": "chat.completion.chunk",
    "created": 1756481177,
    "model": "anthropic/claude-sonnet-4.6",
    "provider": "Anthropic",
    "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
}
PLAIN_ERROR = {
    "error": {"message": "Provider disconnected unexpectedly", "type": "server_error", "code": None}
}


@pytest.mark.parametrize("failure", [OPENROUTER_ERROR, PLAIN_ERROR], ids=["openrouter", "error-only"])
def test_a_chat_stream_broken_off_by_an_error_chunk_is_recorded_as_a_stream_error_with_its_usage_so_far(
    providers_proxy: RunningProxy, stub: UpstreamStub, failure: dict[str, Any]
) -> None:
    """The provider breaks the stream off with an error chunk and keeps the body open; the SDK raises at the
    chunk and closes. The record, written when the chunk was read: the status the client got,
    `stream_error`, and the usage estimated from the request and the chunks seen, as a cut stream's is."""
    events = [event for event in events_of(fixture("openrouter_chat_stream.sse")) if b"Sixty days" in event]
    sent = [*events, sse(failure)]
    upstream = Stream(sent, hold_after=len(sent))
    stub.push(upstream)
    try:
        with (
            providers_proxy.client(path="/openrouter/v1") as client,
            pytest.raises(APIError, match="Provider disconnected unexpectedly"),
        ):
            for _ in client.chat.completions.create(
                model="anthropic/claude-sonnet-4.6", messages=ASK, stream=True
            ):
                pass
        record = only(providers_proxy.wait_records(1))
    finally:
        upstream.gate.set()
    # ~4 bytes a token of the messages as sent, one output token per chunk of the stream
    input_tokens = (len(json.dumps(ASK, separators=(",", ":"))) + 3) // 4
    expected = stream_error_record(input_tokens, "3.00", len(sent), "15.00")
    assert pick(record, expected) == expected


def test_a_provider_that_reports_no_cost_records_null(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=fixture("dashscope_chat.json")))
    providers_proxy.post_json("/dashscope/v1/chat/completions", {"model": "qwen-plus", "messages": ASK})

    record = only(providers_proxy.wait_records(1))
    assert (record.get("provider_reported_cost", "<missing>"), record["priced"]) == (None, True)


def test_moonshot_top_level_cached_tokens_are_cached_input(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = fixture("moonshot_chat.json")
    stub.push(Reply(body=body))
    response = providers_proxy.post_json(
        "/moonshot/v1/chat/completions", {"model": "kimi-k2.5", "messages": ASK}
    )

    assert (response.status, response.body) == (200, body)
    assert only(stub.requests).target == "/moonshot/v1/chat/completions"
    record = only(providers_proxy.wait_records(1))
    # (5120 - 4096) * 0.60 + 4096 * 0.10 + 260 * 3.00 per 1M
    expected = {
        **costs([(1024, "0.60"), (4096, "0.10")], [(260, "3.00")]),
        "provider": "moonshot",
        "input_tokens": 5120,
        "cached_input_tokens": 4096,
        "output_tokens": 260,
    }
    assert pick(record, expected) == expected
    assert_cost_headers(response, record, "0.001804", "USD")


def test_dashscope_international_prices_cached_tokens_in_usd(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = fixture("dashscope_chat.json")
    stub.push(Reply(body=body))
    with providers_proxy.client(path="/dashscope/v1") as client:
        raw = client.chat.completions.with_raw_response.create(model="qwen-plus", messages=ASK)

    assert raw.http_response.content == body
    assert only(stub.requests).target == "/dashscope-intl/compatible-mode/v1/chat/completions"
    record = only(providers_proxy.wait_records(1))
    # (3019 - 2048) * 0.40 + 2048 * 0.08 + 104 * 1.20 per 1M
    expected = {
        **costs([(971, "0.40"), (2048, "0.08")], [(104, "1.20")]),
        "provider": "dashscope",
        "request_id": "chatcmpl-6ada9ed2-7f33-9de2-8bb0-78bd4035025a",
        "cached_input_tokens": 2048,
        "currency": "USD",
    }
    assert pick(record, expected) == expected
    assert (raw.headers.get("x-meterproxy-cost"), raw.headers.get("x-meterproxy-currency")) == (
        "0.00067704",
        "USD",
    )


def test_dashscope_explicit_cache_writes_are_priced_at_cache_write(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    providers = all_providers(stub)
    providers["dashscope"]["models"]["qwen-plus"]["pricing"]["cache_write"] = 0.50
    proxy = launch(make_config(providers=providers))
    # Model Studio's explicit cache, first call: the prompt's prefix is written to the cache.
    details = {
        "text_tokens": 29719,
        "cache_creation": {"ephemeral_5m_input_tokens": 29713},
        "cache_creation_input_tokens": 29713,
        "cache_type": "ephemeral",
        "cached_tokens": 0,
    }
    usage = {
        "prompt_tokens": 29719,
        "completion_tokens": 435,
        "total_tokens": 30154,
        "prompt_tokens_details": details,
    }
    body = json.loads(fixture("dashscope_chat.json")) | {"usage": usage}
    stub.push(Reply(body=json.dumps(body).encode()))
    with proxy.client(path="/dashscope/v1") as client:
        client.chat.completions.create(model="qwen-plus", messages=ASK)

    record = only(proxy.wait_records(1))
    # (29719 - 29713) * 0.40 + 29713 * 0.50 + 435 * 1.20 per 1M
    expected = {
        **costs([(6, "0.40"), (29713, "0.50")], [(435, "1.20")]),
        "input_tokens": 29719,
        "cache_write_tokens": 29713,
        "cached_input_tokens": 0,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.0153809


def test_dashscope_mainland_stream_is_priced_in_cny(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stream = fixture("dashscope_chat_stream.sse")
    events = events_of(stream)
    usage_chunk = events[-2]
    assert b'"choices":[]' in usage_chunk
    stub.push(Stream(events))
    response = providers_proxy.post_json(
        "/v1/chat/completions", {"model": "dashscope-cn/qwen3-max", "messages": ASK, "stream": True}
    )

    seen = only(stub.requests)
    assert (seen.target, seen.json()["model"]) == (
        "/dashscope-cn/compatible-mode/v1/chat/completions",
        "qwen3-max",
    )
    # The usage-only chunk the proxy asked for is removed; the comment takes its place before [DONE].
    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (b"".join(events[:-2]), SSE_DONE)
    record = only(providers_proxy.wait_records(1))
    # (8421 - 6144) * 2.50 + 6144 * 0.50 + 733 * 10.00 per 1M, in CNY
    expected = {
        **costs([(2277, "2.50"), (6144, "0.50")], [(733, "10.00")]),
        "provider": "dashscope-cn",
        "model": "qwen3-max",
        "currency": "CNY",
        "input_tokens": 8421,
        "cached_input_tokens": 6144,
        "output_tokens": 733,
    }
    assert pick(record, expected) == expected
    assert comment == {"total_cost": 0.0160945, "currency": "CNY", "input_tokens": 8421, "output_tokens": 733}


def test_hunyuan_is_priced_in_cny_and_its_bytes_pass_unchanged(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = fixture("hunyuan_chat.json")
    stub.push(Reply(body=body))
    response = providers_proxy.post_json(
        "/hunyuan/v1/chat/completions", {"model": "hunyuan-turbos-latest", "messages": ASK}
    )

    assert (response.status, response.body) == (200, body)
    assert only(stub.requests).target == "/hunyuan/v1/chat/completions"
    record = only(providers_proxy.wait_records(1))
    # 1862 * 0.80 + 415 * 2.00 per 1M, in CNY
    expected = {
        **costs([(1862, "0.80")], [(415, "2.00")]),
        "provider": "hunyuan",
        "request_id": "c1f1b1e3-2b0f-4c1a-9d6e-7f4d1c2b3a59",
        "currency": "CNY",
        "input_tokens": 1862,
        "output_tokens": 415,
        "total_tokens": 2277,
    }
    assert pick(record, expected) == expected
    assert_cost_headers(response, record, "0.0023196", "CNY")


VLLM_USAGE = [
    {"prompt_tokens": 9, "total_tokens": 10, "completion_tokens": 1},
    {"prompt_tokens": 9, "total_tokens": 11, "completion_tokens": 2},
    {"prompt_tokens": 9, "total_tokens": 12, "completion_tokens": 3},
]


def vllm_chunks(request: dict[str, Any]) -> list[bytes]:
    """A vLLM chat stream as its server answers `request`: with include_usage, a usage-only chunk before
    [DONE], and with continuous_usage_stats as well, the usage so far on every chunk; continuous_usage_stats
    alone sends no usage (vLLM's should_include_usage)."""
    options = request.get("stream_options") or {}
    usage = options.get("include_usage") is True
    continuous = usage and options.get("continuous_usage_stats") is True
    deltas = [({"role": "assistant", "content": ""}, None), ({"content": "Sixty"}, None), ({}, "stop")]
    chunks = []
    for (delta, finish_reason), so_far in zip(deltas, VLLM_USAGE, strict=True):
        chunk: dict[str, Any] = {
            "id": "chatcmpl-9f3c2a7e",
            "object": "chat.completion.chunk",
            "created": 1756482001,
            "model": "qwen3-8b",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if continuous:
            chunk["usage"] = so_far
        chunks.append(sse(chunk))
    if usage:
        last = {"id": "chatcmpl-9f3c2a7e", "object": "chat.completion.chunk", "created": 1756482001}
        chunks.append(sse({**last, "model": "qwen3-8b", "choices": [], "usage": VLLM_USAGE[-1]}))
    return [*chunks, SSE_DONE]


@pytest.mark.parametrize(
    "stream_options",
    [
        {"continuous_usage_stats": True},
        {"include_usage": False, "continuous_usage_stats": True},
        {"include_usage": True, "continuous_usage_stats": True},
    ],
)
def test_a_vllm_stream_asked_for_usage_on_every_chunk_reaches_the_client_as_asked_and_is_billed_once(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, stream_options: dict[str, bool]
) -> None:
    """vLLM sends usage on every chunk (continuous_usage_stats) only when include_usage is asked for too.
    The usage the proxy asks for must not turn the client's continuous_usage_stats on: the client gets
    the chunks vLLM would have sent it, and the call is billed for the last usage, not their sum."""
    vllm = {
        "base_url": stub_url(stub, "/vllm/v1"),
        "models": {"qwen3-8b": {"pricing": {"input": 0.10, "output": 0.40}}},
    }
    proxy = launch(make_config(providers={"vllm": vllm}))
    stub.always(lambda seen: Stream(vllm_chunks(seen.json())))
    payload = {"model": "qwen3-8b", "messages": ASK, "stream": True, "stream_options": stream_options}
    response = proxy.post_json("/vllm/v1/chat/completions", payload)

    before, comment, after = split_cost_comment(response.body)
    assert (before + after, after) == (b"".join(vllm_chunks(payload)), SSE_DONE)
    record = only(proxy.wait_records(1))
    expected = {
        **costs([(9, "0.10")], [(3, "0.40")]),
        "input_tokens": 9,
        "output_tokens": 3,
        "total_tokens": 12,
        "finish_reason": "stop",
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected
    assert comment["total_cost"] == expected["total_cost"]
