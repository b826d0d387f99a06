"""The metered routes, end to end: the real proxy under uvicorn between the openai SDK and a loopback stub."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from conftest import (
    CLIENT_KEY,
    GPT_4O,
    GPT_4O_MINI,
    MakeConfig,
    ProxyLauncher,
    RawResponse,
    RunningProxy,
    free_port,
    only,
    pick,
    read_until,
)
from openai import AzureOpenAI
from openai.types.chat import ChatCompletionMessageParam
from upstream_stub import SSE_DONE, Hangup, Reply, Stream, UpstreamStub, sse

from proxy.disconnect import USAGE_WAIT
from proxy.records import CostRecord
from proxy.relay import MAX_READ_BODY

RECORD_FIELDS = [
    "timestamp",
    "request_id",
    "user_id",
    "ip_address",
    "provider",
    "model",
    "endpoint",
    "is_streaming",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_cost",
    "output_cost",
    "total_cost",
    "finish_reason",
    "v",
    "response_model",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "currency",
    "priced",
    "usage_source",
    "status_code",
    "error",
    "duration_ms",
    "ttfb_ms",
    "proxy_request_id",
    "session_id",
    "task_type",
    "provider_reported_cost",
    "price",
    "cache_write_1h_tokens",
]
CLIENT_USER_ID = "key:" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:12]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def per_million(*terms: tuple[int, str]) -> float:
    """Exact cost of (tokens, price per 1M) terms, as the float the record must hold."""
    return float(sum(Decimal(tokens) * Decimal(price) for tokens, price in terms) / Decimal(1_000_000))


def chat_body(
    usage: dict[str, Any],
    *,
    model: str = "gpt-4o-2024-08-06",
    id: str = "chatcmpl-abc123",
    finish_reason: str = "stop",
) -> bytes:
    """A non-streamed chat completion as an upstream sends it."""
    return json.dumps(
        {
            "id": id,
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!"},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
    ).encode()


def chunk(
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    id: str = "chatcmpl-s1",
    model: str = "gpt-4o-mini-2024-07-18",
) -> bytes:
    """One chat stream event with a choice; `usage: null` as upstreams send it once usage is asked for."""
    return sse(
        {
            "id": id,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            "usage": usage,
        }
    )


def usage_chunk(
    usage: dict[str, Any], *, id: str = "chatcmpl-s1", model: str = "gpt-4o-mini-2024-07-18"
) -> bytes:
    """The usage-only event (no choices) that `stream_options.include_usage` adds at the end."""
    return sse(
        {
            "id": id,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )


STREAM_USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
STREAM_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({}, finish_reason="stop"),
    usage_chunk(STREAM_USAGE),
    SSE_DONE,
]
STREAM_WITHOUT_USAGE_CHUNK = b"".join(STREAM_CHUNKS[:3] + STREAM_CHUNKS[4:])


def costed(stream: bytes, record: CostRecord) -> bytes:
    """A stream as the client gets it: the cost comment, from the record's own numbers, before [DONE]."""
    total = "null" if record["total_cost"] is None else format(Decimal(repr(record["total_cost"])), "f")
    comment = (
        f': meterproxy-cost {{"total_cost": {total}, "currency": "{record["currency"]}", '
        f'"input_tokens": {record["input_tokens"]}, "output_tokens": {record["output_tokens"]}}}\n\n'
    ).encode()
    head, done, tail = stream.rpartition(SSE_DONE)
    return head + comment + done + tail if done else stream + comment


def assert_openai_error(response: RawResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.body
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_non_streamed_chat_is_returned_byte_for_byte_and_recorded_once(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 200},
    }
    body = chat_body(usage)
    stub.push(Reply(body=body))
    before = datetime.now(UTC)
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    after = datetime.now(UTC)

    assert raw.http_response.status_code == 200
    assert raw.http_response.content == body
    assert raw.parse().choices[0].message.content == "Hello!"
    record = only(proxy.wait_records(1))
    assert list(record) == RECORD_FIELDS
    assert TIMESTAMP.fullmatch(record["timestamp"]), record["timestamp"]
    arrived = datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(milliseconds=1) <= arrived <= after
    assert record["proxy_request_id"] == raw.headers["x-meterproxy-request-id"]
    assert record["input_cost"] == per_million((800, "2.50"), (200, "1.25")) == 0.00225
    assert record["output_cost"] == per_million((500, "10.00")) == 0.005
    assert record["total_cost"] == per_million((800, "2.50"), (200, "1.25"), (500, "10.00")) == 0.00725
    assert isinstance(record["duration_ms"], float | int) and record["duration_ms"] >= 0
    assert record["ttfb_ms"] is None or record["ttfb_ms"] >= 0
    expected = {
        "request_id": "chatcmpl-abc123",
        "user_id": CLIENT_USER_ID,
        "ip_address": "127.0.0.1",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "is_streaming": False,
        "input_tokens": 1000,
        "output_tokens": 500,
        "total_tokens": 1500,
        "finish_reason": "stop",
        "v": 1,
        "response_model": "gpt-4o-2024-08-06",
        "cached_input_tokens": 200,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "currency": "USD",
        "priced": True,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
        "session_id": None,
        "task_type": None,
    }
    assert pick(record, expected) == expected
    seen = only(stub.requests)
    assert (seen.method, seen.target) == ("POST", "/v1/chat/completions")
    assert seen.json() == {"model": "gpt-4o", "messages": HELLO}


def test_an_answer_too_large_to_read_passes_whole_and_its_record_says_so(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    body = chat_body(usage).replace(b'"Hello!"', b'"' + b"x" * (MAX_READ_BODY + 1) + b'"')
    stub.push(Reply(body=body))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    assert (response.status, response.body == body) == (200, True)
    record = only(proxy.wait_records(1))
    unread = {
        key: record[key] for key in ("status_code", "usage_source", "total_cost", "priced", "input_tokens")
    }
    assert unread == {
        "status_code": 200,
        "usage_source": "none",
        "total_cost": None,
        "priced": True,
        "input_tokens": 0,
    }
    proxy.wait_log(f"the answer of {record['proxy_request_id']} was over 64 MiB, passed on unread")


def test_every_metered_response_has_its_own_request_id(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.always(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    ids = [
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}).header(
            "x-meterproxy-request-id"
        )
        for _ in range(3)
    ]
    records = proxy.wait_records(3)
    sent = [request_id for request_id in ids if request_id is not None]
    assert len(sent) == len(set(sent)) == 3, ids
    assert sorted(record["proxy_request_id"] for record in records) == sorted(sent)


def test_provider_route_forwards_to_that_provider(proxy: RunningProxy, stub: UpstreamStub) -> None:
    body = chat_body({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, model="gpt-4o-mini")
    stub.push(Reply(body=body))
    with proxy.client(path="/openai/v1") as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)

    assert raw.http_response.content == body
    assert only(stub.requests).target == "/v1/chat/completions"
    record = only(proxy.wait_records(1))
    assert (record["provider"], record["model"], record["endpoint"]) == (
        "openai",
        "gpt-4o-mini",
        "/openai/v1/chat/completions",
    )
    assert record["total_cost"] == per_million((10, "0.15"), (20, "0.60"))


def test_provider_prefixed_model_reaches_upstream_as_plain_model(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    sent = (
        b'{ "model" :  "openai/gpt-4o",\n  "messages":[{"role":"user","content":"hi"}] ,"temperature":0.50}'
    )
    response = proxy.request(
        "POST",
        "/v1/chat/completions",
        sent,
        {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
    )

    assert response.status == 200
    assert only(stub.requests).body == sent.replace(b'"openai/gpt-4o"', b'"gpt-4o"')
    record = only(proxy.wait_records(1))
    assert (record["provider"], record["model"]) == ("openai", "gpt-4o")


def test_provider_prefixed_stream_with_other_stream_options_keeps_both_edits(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # stream_options without include_usage makes the proxy write the body anew: the rename must survive.
    stub.push(Stream(STREAM_CHUNKS))
    payload = {
        "model": "openai/gpt-4o-mini",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
    }
    response = proxy.post_json("/v1/chat/completions", payload)

    assert response.status == 200
    assert only(stub.requests).json() == {
        **payload,
        "model": "gpt-4o-mini",
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    record = only(proxy.wait_records(1))
    assert response.body == costed(STREAM_WITHOUT_USAGE_CHUNK, record)
    assert (record["provider"], record["model"], record["input_tokens"], record["output_tokens"]) == (
        "openai",
        "gpt-4o-mini",
        12,
        34,
    )
    assert record["total_cost"] == per_million((12, "0.15"), (34, "0.60"))


def test_request_body_is_forwarded_byte_for_byte(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    sent = (
        b'{"messages":[{"content":"h\\u00e9llo  \\n","role":"user"}],\r\n\t"temperature":1.0,'
        b'  "model":"gpt-4o","metadata":{"z":1,"a":2},"n":1e0}\n'
    )
    response = proxy.request(
        "POST",
        "/v1/chat/completions",
        sent,
        {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
    )

    assert response.status == 200
    seen = only(stub.requests)
    assert seen.body == sent
    assert seen.header("content-length") == str(len(sent))


@pytest.mark.parametrize("model", [b"gpt-4o-mini", b"gpt-{4o}-mini"], ids=["no-brace", "a-brace"])
def test_a_streamed_chat_sent_as_a_form_is_forwarded_as_sent(
    proxy: RunningProxy, stub: UpstreamStub, model: bytes
) -> None:
    """Usage is asked for by adding stream_options to a JSON body. A form has no place for it: it goes on
    as sent, neither with stream_options written in at its first brace nor refused with a bare 500."""
    stub.push(Stream(STREAM_CHUNKS))
    form = (
        b'--xYz\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model + b"\r\n"
        b'--xYz\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n--xYz--\r\n'
    )
    headers = {"content-type": "multipart/form-data; boundary=xYz", "authorization": f"Bearer {CLIENT_KEY}"}
    response = proxy.request("POST", "/openai/v1/chat/completions", form, headers)

    assert response.status == 200
    assert only(stub.requests).body == form
    record = only(proxy.wait_records(1))
    assert (record["model"], record["is_streaming"], record["status_code"]) == (model.decode(), True, 200)


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
def test_stream_without_usage_asked_gets_usage_injected_and_its_chunk_removed(
    proxy: RunningProxy, stub: UpstreamStub, stream_options: dict[str, bool] | None
) -> None:
    stub.push(Stream(STREAM_CHUNKS))
    payload: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    if stream_options is not None:
        payload["stream_options"] = stream_options
    response = proxy.post_json("/v1/chat/completions", payload)

    assert response.status == 200
    assert (response.header("content-type") or "").startswith("text/event-stream")
    record = only(proxy.wait_records(1))
    assert response.body == costed(STREAM_WITHOUT_USAGE_CHUNK, record)
    forwarded = only(stub.requests).json()
    assert forwarded == {**payload, "stream_options": {"include_usage": True}}
    assert record["proxy_request_id"] == response.header("x-meterproxy-request-id")
    expected = {
        "request_id": "chatcmpl-s1",
        "model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "is_streaming": True,
        "input_tokens": 12,
        "output_tokens": 34,
        "total_tokens": 46,
        "input_cost": per_million((12, "0.15")),
        "output_cost": per_million((34, "0.60")),
        "total_cost": per_million((12, "0.15"), (34, "0.60")),
        "finish_reason": "stop",
        "usage_source": "provider",
        "priced": True,
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected


def test_a_stream_whose_media_type_is_not_in_lower_case_is_metered(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Media types are case-insensitive: such a stream was read whole as a JSON body and recorded bad.
    stub.push(Stream(STREAM_CHUNKS, headers=(("content-type", "Text/Event-Stream; charset=UTF-8"),)))
    payload = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    response = proxy.post_json("/v1/chat/completions", payload)
    record = only(proxy.wait_records(1))
    assert response.body == costed(STREAM_WITHOUT_USAGE_CHUNK, record)
    counted = {key: record[key] for key in ("input_tokens", "output_tokens", "usage_source", "error")}
    assert counted == {"input_tokens": 12, "output_tokens": 34, "usage_source": "provider", "error": None}


def test_a_first_chunk_with_an_empty_id_and_model_leaves_them_to_the_later_chunks(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Azure OpenAI opens a stream with its prompt filter results, their id and model empty.
    azure = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": []}
    filters = sse(azure)
    stub.push(Stream([filters, *STREAM_CHUNKS]))
    payload = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    response = proxy.post_json("/v1/chat/completions", payload)
    record = only(proxy.wait_records(1))
    assert response.body == costed(filters + STREAM_WITHOUT_USAGE_CHUNK, record)
    named = {key: record[key] for key in ("request_id", "response_model", "input_tokens", "output_tokens")}
    assert named == {
        "request_id": "chatcmpl-s1",
        "response_model": "gpt-4o-mini-2024-07-18",
        "input_tokens": 12,
        "output_tokens": 34,
    }


def test_stream_through_the_sdk_shows_no_usage_chunk(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Stream(STREAM_CHUNKS))
    with proxy.client() as client:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))

    assert [c.choices[0].delta.content for c in chunks] == ["", "Hello", None]
    assert all(c.usage is None for c in chunks)
    record = only(proxy.wait_records(1))
    assert (record["input_tokens"], record["output_tokens"]) == (12, 34)


def test_stream_with_usage_asked_is_unchanged(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Stream(STREAM_CHUNKS))
    with proxy.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 34

    stub.push(Stream(STREAM_CHUNKS))
    sent = b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
    response = proxy.request(
        "POST",
        "/v1/chat/completions",
        sent,
        {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
    )

    records = proxy.wait_records(2)
    assert response.body == costed(b"".join(STREAM_CHUNKS), records[1])
    assert stub.requests[1].body == sent
    assert [(r["input_tokens"], r["output_tokens"], r["usage_source"]) for r in records] == [
        (12, 34, "provider"),
        (12, 34, "provider"),
    ]


def test_stream_usage_false_injects_nothing(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(providers={"openai": {"stream_usage": False}}))
    chunks = [sse({"id": "chatcmpl-n", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}), SSE_DONE]
    stub.push(Stream(chunks))
    sent = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
    response = proxy.request(
        "POST",
        "/v1/chat/completions",
        sent,
        {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"},
    )

    record = only(proxy.wait_records(1))
    assert response.body == costed(b"".join(chunks), record)
    assert only(stub.requests).body == sent
    assert record["usage_source"] != "provider"
    assert (record["request_id"], record["is_streaming"], record["status_code"]) == ("chatcmpl-n", True, 200)


def test_usage_in_several_chunks_counts_the_last_not_the_sum(proxy: RunningProxy, stub: UpstreamStub) -> None:
    chunks = [
        chunk(
            {"role": "assistant", "content": "a"},
            usage={"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        ),
        chunk({"content": "b"}, usage={"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
        chunk(
            {},
            finish_reason="length",
            usage={"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        ),
        SSE_DONE,
    ]
    stub.push(Stream(chunks))
    response = proxy.post_json(
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    record = only(proxy.wait_records(1))
    assert response.body == costed(b"".join(chunks), record)
    assert (record["input_tokens"], record["output_tokens"], record["total_tokens"]) == (10, 3, 13)
    assert record["total_cost"] == per_million((10, "0.15"), (3, "0.60"))
    assert record["finish_reason"] == "length"


@pytest.fixture
def rich_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """The base config plus a reasoning model, a model with a cache-write price, and a DeepSeek provider."""
    return launch(
        make_config(
            providers={
                "openai": {
                    "models": {
                        "o3-mini": {"pricing": {"input": 1.10, "output": 4.40, "cached_input": 0.55}},
                        "claude-ish": {
                            "pricing": {"input": 3, "output": 15, "cached_input": 0.30, "cache_write": 3.75}
                        },
                    }
                },
                "deepseek": {
                    "base_url": f"http://127.0.0.1:{stub.port}/deepseek",
                    "models": {
                        "deepseek-chat": {"pricing": {"input": 0.27, "output": 1.10, "cached_input": 0.07}}
                    },
                },
            }
        )
    )


def test_reasoning_tokens_are_recorded_and_priced_as_output(
    rich_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 500,
        "total_tokens": 600,
        "completion_tokens_details": {"reasoning_tokens": 300},
    }
    stub.push(Reply(body=chat_body(usage, model="o3-mini-2025-01-31")))
    rich_proxy.post_json("/v1/chat/completions", {"model": "o3-mini", "messages": HELLO})

    record = only(rich_proxy.wait_records(1))
    assert (record["output_tokens"], record["reasoning_tokens"]) == (500, 300)
    assert record["output_cost"] == per_million((500, "4.40"))
    assert record["total_cost"] == per_million((100, "1.10"), (500, "4.40"))


def test_cache_write_tokens_are_priced_at_cache_write(rich_proxy: RunningProxy, stub: UpstreamStub) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 50,
        "total_tokens": 1050,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 200},
    }
    stub.push(Reply(body=chat_body(usage, model="claude-ish")))
    rich_proxy.post_json("/v1/chat/completions", {"model": "claude-ish", "messages": HELLO})

    record = only(rich_proxy.wait_records(1))
    assert (record["cached_input_tokens"], record["cache_write_tokens"]) == (100, 200)
    assert record["input_cost"] == per_million((700, "3"), (100, "0.30"), (200, "3.75"))
    assert record["total_cost"] == per_million((700, "3"), (100, "0.30"), (200, "3.75"), (50, "15"))


def test_deepseek_cache_hit_tokens_are_priced_as_cached(rich_proxy: RunningProxy, stub: UpstreamStub) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_cache_hit_tokens": 600,
        "prompt_cache_miss_tokens": 400,
    }
    stub.push(Reply(body=chat_body(usage, model="deepseek-chat", id="ds-1")))
    with rich_proxy.client() as client:
        client.chat.completions.create(model="deepseek-chat", messages=HELLO)

    assert only(stub.requests).target == "/deepseek/chat/completions"
    record = only(rich_proxy.wait_records(1))
    assert (record["provider"], record["request_id"], record["cached_input_tokens"]) == (
        "deepseek",
        "ds-1",
        600,
    )
    assert record["input_cost"] == per_million((400, "0.27"), (600, "0.07"))
    assert record["total_cost"] == per_million((400, "0.27"), (600, "0.07"), (100, "1.10"))


def test_unknown_requested_model_is_priced_by_the_response_model(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = chat_body(
        {"prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300}, model="gpt-4o-mini"
    )
    stub.push(Reply(body=body))
    response = proxy.post_json("/openai/v1/chat/completions", {"model": "latest-small", "messages": HELLO})

    assert (response.status, response.body) == (200, body)
    assert only(stub.requests).json()["model"] == "latest-small"
    record = only(proxy.wait_records(1))
    assert (record["model"], record["response_model"], record["priced"]) == (
        "latest-small",
        "gpt-4o-mini",
        True,
    )
    assert record["total_cost"] == per_million((200, "0.15"), (100, "0.60"))


def test_dated_model_name_is_priced_without_its_date(proxy: RunningProxy, stub: UpstreamStub) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010}
    stub.push(Reply(body=chat_body(usage, model="gpt-4o-2024-08-06")))
    proxy.post_json("/openai/v1/chat/completions", {"model": "gpt-4o-2024-08-06", "messages": HELLO})

    record = only(proxy.wait_records(1))
    assert (record["model"], record["priced"]) == ("gpt-4o-2024-08-06", True)
    assert record["total_cost"] == per_million((1000, "2.50"), (10, "10.00"))


def test_unknown_model_is_forwarded_unpriced_with_one_warning(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = chat_body({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}, model="mystery-model")
    stub.always(Reply(body=body))
    responses = [
        proxy.post_json("/openai/v1/chat/completions", {"model": "mystery-model", "messages": HELLO})
        for _ in range(2)
    ]

    assert [(r.status, r.body) for r in responses] == [(200, body), (200, body)]
    records = proxy.wait_records(2)
    for record in records:
        assert (record["input_tokens"], record["output_tokens"], record["priced"]) == (7, 3, False)
        assert (record["input_cost"], record["output_cost"], record["total_cost"]) == (None, None, None)
        assert record["usage_source"] == "provider"
    log = proxy.wait_log("mystery-model")
    assert len([line for line in log.splitlines() if "mystery-model" in line]) == 1, log


def test_completions_route_is_metered(proxy: RunningProxy, stub: UpstreamStub) -> None:
    body = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"text": " there", "index": 0, "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21},
        }
    ).encode()
    stub.push(Reply(body=body))
    with proxy.client() as client:
        raw = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="hello", max_tokens=16)

    assert raw.http_response.content == body
    assert only(stub.requests).target == "/v1/completions"
    record = only(proxy.wait_records(1))
    expected = {
        "endpoint": "/v1/completions",
        "request_id": "cmpl-1",
        "finish_reason": "length",
        "input_tokens": 5,
        "output_tokens": 16,
        "total_cost": per_million((5, "0.15"), (16, "0.60")),
    }
    assert pick(record, expected) == expected


def test_streamed_completions_get_usage_injected_and_removed(proxy: RunningProxy, stub: UpstreamStub) -> None:
    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None) -> bytes:
        return sse(
            {
                "id": "cmpl-s",
                "object": "text_completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "choices": choices,
                "usage": usage,
            }
        )

    chunks = [
        event([{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}], None),
        event([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}], None),
        event([], {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        SSE_DONE,
    ]
    stub.push(Stream(chunks))
    response = proxy.post_json(
        "/openai/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "stream": True}
    )

    record = only(proxy.wait_records(1))
    assert response.body == costed(chunks[0] + chunks[1] + chunks[3], record)
    assert only(stub.requests).json()["stream_options"] == {"include_usage": True}
    assert (record["endpoint"], record["input_tokens"], record["output_tokens"]) == (
        "/openai/v1/completions",
        3,
        2,
    )


def test_a_metered_path_with_a_trailing_slash_is_metered(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100})))
    response = proxy.post_json("/openai/v1/chat/completions/", {"model": "gpt-4o", "messages": HELLO})

    assert response.status == 200
    assert only(stub.requests).target == "/v1/chat/completions/"  # sent on as the client wrote it
    record = only(proxy.wait_records(1))
    # gpt-4o at 2.50 / 10.00 per 1M tokens: 1000 * 2.5e-6 + 100 * 1e-5 = 0.0025 + 0.001.
    assert (record["input_tokens"], record["output_tokens"], record["usage_source"]) == (
        1000,
        100,
        "provider",
    )
    assert (record["input_cost"], record["output_cost"], record["total_cost"]) == (0.0025, 0.001, 0.0035)


def test_a_body_after_a_byte_order_mark_is_read_for_its_usage(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # json.loads, and so the openai SDK, reads JSON bytes after a UTF-8 BOM: the call was answered.
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    body = b"\xef\xbb\xbf" + chat_body(usage)
    stub.push(Reply(body=body))
    response = proxy.post_json("/openai/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.body) == (200, body)
    record = only(proxy.wait_records(1))
    # gpt-4o at 2.50 / 10.00 per 1M tokens: 1000 * 2.5e-6 + 100 * 1e-5 = 0.0025 + 0.001.
    assert (record["error"], record["usage_source"], record["total_cost"]) == (None, "provider", 0.0035)


@pytest.mark.parametrize(
    "path",
    ["/openai/v1/chat/c%6Fmpletions", "/openai/v1/Chat/Completions", "/openai/v1/%63hat/COMPLETIONS/"],
)
def test_a_path_a_provider_may_read_as_a_metered_one_is_metered(
    proxy: RunningProxy, stub: UpstreamStub, path: str
) -> None:
    # Servers decode percent-encoded letters before routing, and some ignore case: such a path must not
    # be a pass-through recorded without usage.
    stub.push(Reply(body=chat_body({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100})))
    response = proxy.post_json(path, {"model": "gpt-4o", "messages": HELLO})

    assert response.status == 200
    assert only(stub.requests).target == path.removeprefix("/openai")  # sent on as the client wrote it
    record = only(proxy.wait_records(1))
    # gpt-4o at 2.50 / 10.00 per 1M tokens: 1000 * 2.5e-6 + 100 * 1e-5 = 0.0025 + 0.001.
    assert (record["model"], record["usage_source"], record["total_cost"]) == ("gpt-4o", "provider", 0.0035)


@pytest.mark.parametrize("path", ["/openai/v1/chat/completions;x", "/openai/v1/chat;a=b/completions"])
def test_a_path_with_a_parameter_is_refused_before_any_provider_is_called(
    proxy: RunningProxy, stub: UpstreamStub, path: str
) -> None:
    # Tomcat, Spring and Jetty strip ";x" from a segment: forwarded, it would be a chat call unmetered.
    response = proxy.post_json(path, {"model": "gpt-4o", "messages": HELLO})

    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_path" and "';' parameter" in error["message"]
    assert stub.requests == []


def test_other_provider_paths_are_passed_through_and_recorded_without_usage(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = b'{"object": "list", "data": [], "has_more": false}'
    stub.push(Reply(body=body))
    response = proxy.request(
        "GET", "/openai/v1/files?purpose=batch&limit=2", headers={"authorization": f"Bearer {CLIENT_KEY}"}
    )

    assert (response.status, response.body) == (200, body)
    seen = only(stub.requests)
    assert (seen.method, seen.target, seen.body) == ("GET", "/v1/files?purpose=batch&limit=2", b"")
    record = only(proxy.wait_records(1))
    assert list(record) == RECORD_FIELDS
    expected = {
        "request_id": record["proxy_request_id"],
        "user_id": CLIENT_USER_ID,
        "provider": "openai",
        "model": None,
        "endpoint": "/openai/v1/files",
        "is_streaming": False,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "input_cost": None,
        "output_cost": None,
        "total_cost": None,
        "priced": False,
        "usage_source": "none",
        "status_code": 200,
        "error": None,
        "v": 1,
    }
    assert pick(record, expected) == expected


def test_a_get_of_a_metered_path_lists_stored_completions_through_the_sdk(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    listed: dict[str, Any] = {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    stub.push(Reply(body=json.dumps(listed).encode()))
    with proxy.client(path="/openai/v1") as client:
        page = client.chat.completions.list(model="gpt-4o", limit=3)

    assert page.data == []
    seen = only(stub.requests)
    assert (seen.method, seen.target.partition("?")[0], seen.body) == ("GET", "/v1/chat/completions", b"")
    record = only(proxy.wait_records(1))
    expected = {"endpoint": "/openai/v1/chat/completions", "model": None, "status_code": 200, "error": None}
    assert pick(record, expected) == expected
    assert (record["total_cost"], record["usage_source"]) == (None, "none")


def test_hop_by_hop_request_headers_stop_at_the_proxy(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    hop_by_hop = {
        "Connection": "close, X-Hop-Secret",
        "X-Hop-Secret": "named-in-connection",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "example/1",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Proxy-Connection": "keep-alive",
    }
    proxy.post_json(
        "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, {**hop_by_hop, "X-Foo": "end-to-end"}
    )

    seen = only(stub.requests)
    names = seen.header_names()
    assert not names & {
        "x-hop-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    }
    assert seen.header("connection") in (None, "keep-alive")
    assert seen.header("host") == f"127.0.0.1:{stub.port}"
    assert seen.header("x-foo") == "end-to-end"


def test_end_to_end_headers_pass_both_ways(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(
        Reply(
            body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
            headers=(
                ("content-type", "application/json"),
                ("retry-after", "7"),
                ("x-request-id", "req-upstream-42"),
                ("connection", "x-upstream-internal"),
                ("x-upstream-internal", "hop"),
            ),
        )
    )
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, extra_headers={"x-foo": "bar"}
        )

    assert only(stub.requests).header("x-foo") == "bar"
    assert (raw.headers.get("retry-after"), raw.headers.get("x-request-id")) == ("7", "req-upstream-42")
    assert "x-upstream-internal" not in raw.headers


@pytest.mark.parametrize(("status", "stream"), [(429, False), (500, False), (500, True)])
def test_upstream_http_errors_pass_unchanged_and_are_recorded(
    proxy: RunningProxy, stub: UpstreamStub, status: int, stream: bool
) -> None:
    body = (
        b'{"error": {"message": "Rate limit reached for gpt-4o", "type": "requests", "code": "rate_limit"}}'
    )
    stub.push(
        Reply(status=status, body=body, headers=(("content-type", "application/json"), ("retry-after", "20")))
    )
    response = proxy.post_json(
        "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "stream": stream}
    )

    assert (response.status, response.body, response.header("retry-after")) == (status, body, "20")
    record = only(proxy.wait_records(1))
    assert (record["status_code"], record["error"], record["is_streaming"]) == (status, None, stream)
    assert record["proxy_request_id"] == response.header("x-meterproxy-request-id")


def test_an_answer_with_an_empty_body_has_the_time_to_its_first_byte_recorded(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # A 401 or 429 with Content-Length: 0 is an answer: its head is the provider's first byte.
    stub.push(Reply(status=429, body=b"", headers=(("retry-after", "1"),)))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.body, response.header("content-length")) == (429, b"", "0")
    record = only(proxy.wait_records(1))
    assert (record["status_code"], record["error"], record["total_cost"]) == (429, None, 0.0)
    assert record["ttfb_ms"] is not None and 0 <= record["ttfb_ms"] <= record["duration_ms"]


def test_upstream_unreachable_is_502_and_recorded(launch: ProxyLauncher, make_config: MakeConfig) -> None:
    proxy = launch(make_config(providers={"openai": {"base_url": f"http://127.0.0.1:{free_port()}/v1"}}))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    error = assert_openai_error(response, 502)
    assert error["message"].startswith("openai: cannot connect to the provider: ")
    record = only(proxy.wait_records(1))
    assert (record["status_code"], record["error"]) == (502, "upstream_unreachable")
    assert record["proxy_request_id"] == response.header("x-meterproxy-request-id")
    assert (record["input_tokens"], record["usage_source"]) == (0, "none")
    assert record["total_cost"] == 0.0  # no connection, nothing sent: nothing billed (it was null, unknown)


def test_upstream_timeout_is_504_and_recorded(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(providers={"openai": {"timeout": 1}}))
    stub.push(Reply(stall=60, body=b"{}"))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    error = assert_openai_error(response, 504)
    assert error["message"] == "openai: the provider did not answer in 1 s (providers.openai.timeout)"
    seen = only(stub.requests)
    assert seen.closed.wait(10) and seen.closed_early
    record = only(proxy.wait_records(1))
    assert (record["status_code"], record["error"]) == (504, "upstream_timeout")


def test_upstream_that_hangs_up_without_answering_is_502(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Hangup())
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert_openai_error(response, 502)
    assert len(stub.requests) == 1
    record = only(proxy.wait_records(1))
    assert record["status_code"] == 502 and record["error"] in ("upstream_unreachable", "upstream_reset")


def test_a_non_streamed_body_the_upstream_breaks_off_is_a_502_to_the_client_and_in_the_record(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(providers={"openai": {"timeout": 1}}))
    json_type = (("content-type", "application/json"),)
    half = [b'{"id": "chatcmpl-1", "usage": ', b'{"prompt_tokens": 10}}']
    stub.push(Stream(half, headers=json_type, cut_after=1), Stream(half, headers=json_type, hold_after=1))
    reset, stalled = (
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}) for _ in range(2)
    )

    reset_error, stalled_error = assert_openai_error(reset, 502), assert_openai_error(stalled, 504)
    assert (reset_error["code"], stalled_error["code"]) == ("upstream_reset", "upstream_timeout")
    # Named as when the provider fails before its headers: a /v1/ caller chose a model, not a provider.
    assert reset_error["message"].startswith("openai: ")
    assert (
        stalled_error["message"].startswith("openai: ")
        and "(providers.openai.timeout)" in stalled_error["message"]
    )
    one, two = proxy.wait_records(2)
    assert (one["status_code"], one["error"], one["total_cost"]) == (502, "upstream_reset", None)
    assert (two["status_code"], two["error"], two["total_cost"]) == (504, "upstream_timeout", None)
    assert "ASGI callable returned without starting response" not in proxy.log()


@pytest.mark.parametrize(
    "interim", [(100, ()), (103, (("link", "</style.css>; rel=preload"),))], ids=["100", "103"]
)
def test_an_interim_1xx_is_skipped_and_each_call_gets_and_is_billed_for_its_own_answer(
    proxy: RunningProxy, stub: UpstreamStub, interim: tuple[int, tuple[tuple[str, str], ...]]
) -> None:
    # The final answer comes a moment after the interim one, as from a provider that sends 103 at once.
    first_usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    second_usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    stub.push(
        Reply(body=chat_body(first_usage, id="chatcmpl-1"), interim=[interim], stall=0.3),
        Reply(body=chat_body(second_usage, id="chatcmpl-2")),
    )
    first, second = (
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}) for _ in range(2)
    )

    assert (first.status, first.json()["id"], first.header("link")) == (200, "chatcmpl-1", None)
    assert (second.status, second.json()["id"]) == (200, "chatcmpl-2")
    assert len(stub.requests) == 2
    one, two = proxy.wait_records(2)
    assert (one["status_code"], one["request_id"], one["total_cost"]) == (
        200,
        "chatcmpl-1",
        per_million((1000, "2.50"), (500, "10.00")),
    )
    assert (two["status_code"], two["request_id"], two["total_cost"]) == (
        200,
        "chatcmpl-2",
        per_million((10, "2.50"), (5, "10.00")),
    )


RUNNING_USAGE = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}, usage={"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}),
    chunk({"content": "lo"}, usage={"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}),
    chunk({}, finish_reason="stop"),
    SSE_DONE,
]


def test_upstream_reset_mid_stream_errors_the_client_stream_and_records_usage_so_far(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    script = Stream(RUNNING_USAGE, hold_after=2, cut_after=2)
    stub.push(script)

    async def call() -> tuple[bytes, BaseException | None]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{proxy.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            ) as response,
        ):
            received = await read_until(response, RUNNING_USAGE[0] + RUNNING_USAGE[1], 10)
            script.gate.set()
            try:
                while data := await asyncio.wait_for(response.content.readany(), 10):
                    received += data
            except aiohttp.ClientPayloadError as exc:
                return received, exc
            return received, None

    received, error = asyncio.run(call())
    assert b"[DONE]" not in received
    assert received == RUNNING_USAGE[0] + RUNNING_USAGE[1]
    assert error is not None, "the client's stream ended cleanly after an upstream reset"
    record = only(proxy.wait_records(1))
    expected = {
        "error": "upstream_reset",
        "is_streaming": True,
        "input_tokens": 10,
        "output_tokens": 1,
        "usage_source": "provider",
        "total_cost": per_million((10, "0.15"), (1, "0.60")),
    }
    assert pick(record, expected) == expected


def test_a_cut_stream_whose_prompt_nests_deeper_than_orjson_writes_is_still_recorded_estimated(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # orjson reads JSON nested up to 1,024 levels but writes only 254: the estimate of a cut stream's
    # prompt measured it with orjson, raised, and the call was never recorded.
    nested: Any = "Say hello"
    for _ in range(300):
        nested = [nested]
    messages = [{"role": "user", "content": nested}]
    stub.push(Stream(RUNNING_USAGE[:1] + [chunk({"content": "Hel"})], cut_after=2))

    async def call() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{proxy.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": messages, "stream": True},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            ) as response,
        ):
            received = b""
            with contextlib.suppress(aiohttp.ClientPayloadError):
                while data := await asyncio.wait_for(response.content.readany(), 10):
                    received += data
            return received

    assert asyncio.run(call()) == RUNNING_USAGE[0] + chunk({"content": "Hel"})
    record = only(proxy.wait_records(1))
    prompt = (len(json.dumps(messages, separators=(",", ":"))) + 3) // 4
    expected = {
        "status_code": 200,
        "error": "upstream_reset",
        "usage_source": "estimated",
        "input_tokens": prompt,
        "output_tokens": 2,
        "total_cost": per_million((prompt, "0.15"), (2, "0.60")),
    }
    assert pick(record, expected) == expected


def test_client_disconnect_mid_stream_closes_upstream_and_records_499(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream(RUNNING_USAGE, hold_after=2))

    async def call() -> None:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{proxy.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            )
            await read_until(response, RUNNING_USAGE[0] + RUNNING_USAGE[1], 10)
            response.close()

    asyncio.run(call())
    seen = only(stub.requests)
    assert seen.closed.wait(10), "the proxy kept the upstream request open after the client left"
    assert seen.closed_early
    record = only(proxy.wait_records(1))
    expected = {
        "status_code": 499,
        "error": "client_disconnected",
        "is_streaming": True,
        "input_tokens": 10,
        "output_tokens": 1,
        "usage_source": "provider",
        "request_id": "chatcmpl-s1",
    }
    assert pick(record, expected) == expected


def test_a_stream_its_provider_answers_with_one_json_body_gets_its_cost_in_the_headers(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # A server without streaming may answer `"stream": true` with a plain JSON body: it is read whole
    # for its usage, and its cost goes back in the headers as for any answer that is not a stream.
    body = chat_body({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    stub.push(Reply(body=body))
    payload = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    response = proxy.post_json("/v1/chat/completions", payload)

    assert (response.status, response.body) == (200, body)
    assert response.header("x-meterproxy-cost") == "0.000075"  # 10 * 2.50 + 5 * 10.00 per 1M
    record = only(proxy.wait_records(1))
    assert (record["is_streaming"], record["total_cost"]) == (True, per_million((10, "2.50"), (5, "10.00")))


def _leave_at_the_finish_chunk(proxy: RunningProxy, n: int = 1) -> str | None:
    """Stream a chat call with the openai package and stop reading at its finish chunk, as a client
    that has its answer may; the finish reason it saw."""
    with proxy.client() as client:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True, n=n)
        for event in stream:
            if event.choices and event.choices[0].finish_reason is not None:
                stream.close()
                return event.choices[0].finish_reason
    return None


def test_a_client_that_leaves_at_the_finish_chunk_has_its_call_billed_by_the_usage_that_follows(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # The provider has generated and billed the whole answer; its usage chunk comes next. The call was
    # cut at the client's leaving, and recorded with a usage estimated from the chunks it had.
    script = Stream(STREAM_CHUNKS, delay=0.1, hold_after=3)
    stub.push(script)

    assert _leave_at_the_finish_chunk(proxy) == "stop"
    seen = only(stub.requests)
    assert not seen.closed.wait(0.5), "the proxy closed the upstream request before its usage came"
    script.gate.set()
    record = only(proxy.wait_records(1))
    expected = {
        "status_code": 499,
        "error": "client_disconnected",
        "finish_reason": "stop",
        "input_tokens": 12,
        "output_tokens": 34,
        "usage_source": "provider",
        "total_cost": per_million((12, "0.15"), (34, "0.60")),
    }
    assert pick(record, expected) == expected
    assert seen.answered.is_set() and not seen.closed_early


@pytest.mark.parametrize(("n", "within"), [(1, 10.0), (2, USAGE_WAIT / 2)])
def test_a_stream_left_at_a_finish_chunk_is_cut_and_estimated_when_no_usage_follows(
    proxy: RunningProxy, stub: UpstreamStub, n: int, within: float
) -> None:
    # One choice: read on for its usage, but not for ever (USAGE_WAIT). Several: another choice may still
    # be generating, and reading on would let the provider bill for more of it: cut at once.
    stub.push(Stream(STREAM_CHUNKS, delay=0.1, hold_after=3))

    assert _leave_at_the_finish_chunk(proxy, n) == "stop"
    seen = only(stub.requests)
    assert seen.closed.wait(within), "the proxy kept the upstream request open after the client left"
    assert seen.closed_early
    record = only(proxy.wait_records(1))
    expected = {"status_code": 499, "error": "client_disconnected", "usage_source": "estimated"}
    assert pick(record, expected) == expected


NO_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "input_cost": None,
    "output_cost": None,
    "total_cost": None,
    "price": None,
    "priced": True,
    "usage_source": "none",
    "status_code": 200,
    "error": None,
}


def test_a_token_count_no_call_could_have_leaves_the_call_recorded_without_usage(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # 2**64 does not even fit a JSON record: it once lost the call's record and gave the client a 500.
    body = chat_body({"prompt_tokens": 2**64, "completion_tokens": 5})
    stub.push(Reply(body=body))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.body) == (200, body)
    record = only(proxy.wait_records(1))
    assert pick(record, NO_USAGE) == NO_USAGE


def test_a_token_count_that_is_not_a_count_is_never_billed_as_0(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Read as 0, "57" once gave the call's output a cost of $0 with usage_source provider.
    body = chat_body({"prompt_tokens": 10, "completion_tokens": "57", "total_tokens": 67})
    stub.push(Reply(body=body))
    with proxy.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)

    assert (raw.http_response.status_code, raw.http_response.content) == (200, body)
    assert "x-meterproxy-cost" not in raw.headers
    record = only(proxy.wait_records(1))
    assert pick(record, NO_USAGE) == NO_USAGE
    assert (record["request_id"], record["finish_reason"]) == ("chatcmpl-abc123", "stop")
    call = record["proxy_request_id"]
    log = proxy.wait_log(
        f"provider 'openai', model 'gpt-4o', call {call}: completion_tokens is '57', not a token count; "
        "the usage it came in is not trusted"
    )
    assert CLIENT_KEY not in log


def test_upstream_200_that_is_not_json_passes_as_is_and_is_recorded_bad(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = b"<html><body>502 Bad Gateway (but sent as 200)</body></html>"
    stub.push(Reply(body=body, headers=(("content-type", "text/html"),)))
    response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.body) == (200, body)
    record = only(proxy.wait_records(1))
    expected = {
        "status_code": 200,
        "error": "upstream_bad_response",
        "usage_source": "none",
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "input_cost": None,
        "output_cost": None,
        "total_cost": None,
    }
    assert pick(record, expected) == expected


def post_with_repeated_headers(
    proxy: RunningProxy, body: bytes, headers: list[tuple[str, str]]
) -> RawResponse:
    """A POST that may carry a header more than once (a dict of headers cannot)."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        for name, value in [("content-type", "application/json"), *headers]:
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return RawResponse(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("authorization", "Bearer sk-customer-a-canary", "Bearer sk-customer-b-canary"),
        ("x-api-key", "sk-customer-a-canary", "sk-customer-b-canary"),
        ("x-goog-api-key", "sk-customer-a-canary", "sk-customer-a-canary"),
    ],
)
def test_a_key_header_sent_twice_gets_400_naming_it_and_no_upstream_call(
    proxy: RunningProxy, stub: UpstreamStub, name: str, first: str, second: str
) -> None:
    # Both would be forwarded; the provider might spend either key while the record names one.
    body = json.dumps({"model": "gpt-4o", "messages": HELLO}).encode()
    response = post_with_repeated_headers(
        proxy, body, [(name, first), ("x-session-id", "s1"), (name, second)]
    )

    error = assert_openai_error(response, 400)
    assert error["code"] == "duplicate_api_key"
    assert error["message"] == f"the request has more than one {name} header; send one key"
    assert stub.requests == []
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    good = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    assert good.status == 200
    assert only(proxy.wait_records(1))["proxy_request_id"] == good.header("x-meterproxy-request-id")
    assert "customer-a-canary" not in proxy.log() and "customer-b-canary" not in proxy.log()


def test_other_repeated_headers_are_forwarded_and_the_call_recorded_under_its_one_key(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    body = json.dumps({"model": "gpt-4o", "messages": HELLO}).encode()
    headers = [("authorization", f"Bearer {CLIENT_KEY}"), ("x-trace", "one"), ("x-trace", "two")]
    assert post_with_repeated_headers(proxy, body, headers).status == 200

    seen = only(stub.requests)
    assert [value for key, value in seen.headers if key.lower() == "x-trace"] == ["one", "two"]
    assert only(proxy.wait_records(1))["user_id"] == CLIENT_USER_ID


@pytest.fixture
def two_provider_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """`shared-model` is configured under both `openai` and `azure`; bodies over 1 MB are refused."""
    return launch(
        make_config(
            server={"max_body_mb": 1},
            providers={
                "openai": {"models": {"shared-model": {"pricing": GPT_4O_MINI}}},
                "azure": {
                    "base_url": f"http://127.0.0.1:{stub.port}/azure",
                    "models": {"shared-model": {"pricing": GPT_4O_MINI}},
                },
            },
        )
    )


BAD_REQUESTS = {
    "body not json": ("/v1/chat/completions", b'{"model": "gpt-4o", ', 400, []),
    "no model": ("/v1/chat/completions", b'{"messages": []}', 400, ["has no 'model'"]),
    "model not a name": ("/v1/chat/completions", b'{"model": 4}', 400, ["'model' is a number"]),
    "model a list": ("/openai/v1/chat/completions", b'{"model": ["gpt-4o"]}', 400, ["'model' is a list"]),
    "empty model": ("/v1/chat/completions", b'{"model": ""}', 400, ["'model' is empty"]),
    "model nobody serves": (
        "/v1/chat/completions",
        b'{"model": "nonexistent-model-9"}',
        404,
        ["nonexistent-model-9"],
    ),
    "model under two providers": (
        "/v1/chat/completions",
        b'{"model": "shared-model"}',
        400,
        ["openai", "azure"],
    ),
    "unknown provider path": ("/nope/v1/chat/completions", b'{"model": "gpt-4o"}', 404, []),
    "unknown provider prefix": ("/v1/chat/completions", b'{"model": "nope/gpt-4o"}', 404, []),
    "body over max_body_mb": (
        "/v1/chat/completions",
        b'{"model": "gpt-4o", "pad": "' + b"x" * (1024 * 1024) + b'"}',
        413,
        [],
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_openai_errors_and_no_record(
    two_provider_proxy: RunningProxy, stub: UpstreamStub, case: str
) -> None:
    path, body, status, named = BAD_REQUESTS[case]
    response = two_provider_proxy.request(
        "POST", path, body, {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
    )

    error = assert_openai_error(response, status)
    for name in named:
        assert name in error["message"]
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    good = two_provider_proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    assert good.status == 200
    assert only(stub.requests).body == json.dumps({"model": "gpt-4o", "messages": HELLO}).encode()
    assert only(two_provider_proxy.wait_records(1))["proxy_request_id"] == good.header(
        "x-meterproxy-request-id"
    )


def test_a_v1_call_without_a_body_is_told_to_name_its_provider_in_the_path(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    response = proxy.request("GET", "/v1/models/gpt-4o", b"", {"authorization": f"Bearer {CLIENT_KEY}"})

    error = assert_openai_error(response, 400)
    assert error["code"] == "missing_model"
    assert "/{provider}/v1/models/gpt-4o" in error["message"]
    assert stub.requests == []


TEAM_KEY = "mp-team-a-canary-7f3e"
UPSTREAM_KEY = "sk-upstream-canary-91c2"


def test_auth_keys_gate_calls_and_replace_the_clients_key(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    config = make_config(
        auth={"keys": [{"name": "team-a", "key": "${TEAM_A_KEY}"}]},
        providers={"openai": {"api_key": "${UPSTREAM_KEY}"}},
    )
    proxy = launch(config, env={"TEAM_A_KEY": TEAM_KEY, "UPSTREAM_KEY": UPSTREAM_KEY})
    payload = {"model": "gpt-4o", "messages": HELLO}
    json_type = {"content-type": "application/json"}

    refused = proxy.request("POST", "/v1/chat/completions", json.dumps(payload).encode(), json_type)
    # Anthropic's and Google's clients send their key in their own headers: the message names them all.
    assert assert_openai_error(refused, 401)["message"] == (
        "a valid proxy key is required: send it as Authorization: Bearer, x-api-key, x-goog-api-key or "
        "api-key"
    )
    assert_openai_error(
        proxy.post_json("/v1/chat/completions", payload, {"authorization": "Bearer wrong-key-canary"}), 401
    )
    assert_openai_error(
        proxy.post_json("/v1/chat/completions", payload, {"x-api-key": "wrong-key-canary"}), 401
    )
    assert stub.requests == []

    stub.always(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    with proxy.client(api_key=TEAM_KEY) as client:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    by_header = proxy.request(
        "POST", "/v1/chat/completions", json.dumps(payload).encode(), {**json_type, "x-api-key": TEAM_KEY}
    )
    assert by_header.status == 200

    for seen in stub.wait_requests(2):
        assert seen.header("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert all(TEAM_KEY not in value for _, value in seen.headers)
    records = proxy.wait_records(2)
    assert [record["user_id"] for record in records] == ["team-a", "team-a"]
    for canary in (TEAM_KEY, UPSTREAM_KEY, "wrong-key-canary"):
        assert canary not in proxy.records_path.read_text()
        assert canary not in proxy.log()


def test_without_auth_keys_the_clients_key_reaches_the_provider(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.always(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    canary = "sk-client-canary-5d1a"
    with proxy.client(api_key=canary) as client:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    proxy.request(
        "POST", "/v1/chat/completions", b'{"model": "gpt-4o"}', {"content-type": "application/json"}
    )

    seen = stub.wait_requests(2)
    assert seen[0].header("authorization") == f"Bearer {canary}"
    assert seen[1].header("authorization") is None
    records = proxy.wait_records(2)
    assert [record["user_id"] for record in records] == [
        "key:" + hashlib.sha256(canary.encode()).hexdigest()[:12],
        "anonymous",
    ]
    assert canary not in proxy.records_path.read_text()
    assert canary not in proxy.log()


@pytest.mark.parametrize("behind_auth_keys", [False, True])
def test_azure_openai_s_client_is_known_by_its_api_key_header_forwarded_only_in_pass_through(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, behind_auth_keys: bool
) -> None:
    # The AzureOpenAI client sends its key as `api-key`, to {endpoint}/openai/deployments/{model}/...: its
    # calls were all "anonymous", behind auth.keys refused, and the header went to any provider.
    key = "azure-key-canary-7c4e"
    azure = {
        "base_url": stub.base_url.removesuffix("/v1") + "/openai",
        "models": {"gpt-4o": {"pricing": GPT_4O}},
    }
    gate = {"auth": {"keys": [{"name": "team-a", "key": "${TEAM_A_KEY}"}]}} if behind_auth_keys else {}
    proxy = launch(make_config(providers={"azure": azure}, **gate), env={"TEAM_A_KEY": key})
    stub.push(Reply(body=chat_body({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})))
    with AzureOpenAI(azure_endpoint=f"{proxy.url}/azure", api_key=key, api_version="2024-10-21") as client:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)

    seen = only(stub.requests)
    assert seen.target == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    assert seen.header("api-key") == (None if behind_auth_keys else key)
    record = only(proxy.wait_records(1))
    user = "team-a" if behind_auth_keys else "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    expected = {"user_id": user, "provider": "azure", "total_cost": per_million((10, "2.50"), (5, "10.00"))}
    assert pick(record, expected) == expected
    assert key not in proxy.records_path.read_text() and key not in proxy.log()


def test_provider_api_key_replaces_the_clients_key(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(
        make_config(providers={"openai": {"api_key": "${UPSTREAM_KEY}"}}), env={"UPSTREAM_KEY": UPSTREAM_KEY}
    )
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    with proxy.client() as client:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)

    assert only(stub.requests).header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert only(proxy.wait_records(1))["user_id"] == CLIENT_USER_ID
    assert UPSTREAM_KEY not in proxy.records_path.read_text()
    assert UPSTREAM_KEY not in proxy.log()


def test_cost_tracking_disabled_writes_nothing(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    proxy = launch(make_config(features={"cost_tracking": {"enabled": False}}))
    stub.always(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    for _ in range(2):
        assert proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}).status == 200

    assert len(stub.wait_requests(2)) == 2
    assert proxy.health()["features"] == {"cost_tracking": False}
    assert not proxy.records_path.exists() or proxy.records_path.read_bytes() == b""


def test_with_no_records_and_no_cost_in_answers_calls_pass_through_unread(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    off = {"cost_tracking": {"enabled": False}, "cost_in_response": {"enabled": False}}
    proxy = launch(make_config(features=off))
    stub.push(Stream(STREAM_CHUNKS))
    sent = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
    headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
    streamed = proxy.request("POST", "/v1/chat/completions", sent, headers)
    completion = chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    stub.push(Reply(body=completion))
    whole = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    # Nothing reads the usage, so nothing asks for it or takes it out: the bytes are the upstream's.
    assert streamed.status == 200 and streamed.body == b"".join(STREAM_CHUNKS)
    assert stub.wait_requests(2)[0].body == sent
    assert whole.status == 200 and whole.body == completion
    assert whole.header("x-meterproxy-cost") is None
    assert whole.header("content-length") == str(len(completion))
    assert not proxy.records_path.exists() or proxy.records_path.read_bytes() == b""


def test_session_and_task_headers_are_recorded(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=chat_body({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})))
    with proxy.client() as client:
        client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            extra_headers={"X-Session-Id": "sess-42", "X-Task-Type": "summarise"},
        )

    record = only(proxy.wait_records(1))
    assert (record["session_id"], record["task_type"]) == ("sess-42", "summarise")
