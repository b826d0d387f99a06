"""OpenAI's Responses API and embeddings through the proxy, with the `openai` package and raw HTTP."""

from __future__ import annotations

import base64
import itertools
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import MakeConfig, ProxyLauncher, RunningProxy, only, pick
from openai import APIError, OpenAI
from test_providers import (
    PLAIN_DECIMAL,
    all_providers,
    assert_cost_headers,
    costs,
    events_of,
    fixture,
    split_cost_comment,
    stream_error_record,
)
from upstream_stub import Reply, Stream, UpstreamStub

RESPONSE = fixture("responses_create.json")
RESPONSE_STREAM = fixture("responses_stream.sse")
# A compacted response as documented at
# https://developers.openai.com/api/reference/resources/responses/methods/compact
COMPACTED = fixture("responses_compact.json")
EMBEDDINGS = fixture("embeddings_create.json")
IMAGES = fixture("images_generate.json")
IMAGES_STREAM = fixture("images_generate_stream.sse")
TRANSCRIPTION = fixture("audio_transcription.json")
TRANSCRIPTION_STREAM = fixture("audio_transcription_stream.sse")
CLIP = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\r\n\x00\xffdata"  # the start of a WAV file


@pytest.fixture
def providers_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    return launch(make_config(providers=all_providers(stub)))


def test_responses_call_through_the_sdk_is_returned_as_is_and_priced(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=RESPONSE))
    with providers_proxy.client() as client:
        raw = client.responses.with_raw_response.create(model="gpt-5", input="Tell me about Paris.")

    assert raw.http_response.content == RESPONSE
    assert raw.parse().output_text.startswith("Bonjour !")
    seen = only(stub.requests)
    assert (seen.target, seen.json()) == (
        "/v1/responses",
        {"model": "gpt-5", "input": "Tell me about Paris."},
    )
    record = only(providers_proxy.wait_records(1))
    # (12033 - 11904) * 1.25 + 11904 * 0.125 + 844 * 10.00 per 1M
    expected = {
        **costs([(129, "1.25"), (11904, "0.125")], [(844, "10.00")]),
        "request_id": "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",
        "provider": "openai",
        "model": "gpt-5",
        "response_model": "gpt-5-2025-08-07",
        "endpoint": "/v1/responses",
        "is_streaming": False,
        "input_tokens": 12033,
        "cached_input_tokens": 11904,
        "cache_write_tokens": 0,
        "output_tokens": 844,
        "reasoning_tokens": 768,
        "total_tokens": 12877,
        "usage_source": "provider",
        "priced": True,
        "currency": "USD",
        "price": {
            "input": 1.25,
            "output": 10.0,
            "cached_input": 0.125,
            "cache_write": 1.25,
            "tier": None,
            "cache_write_1h": 1.25,
        },
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.01008925
    assert raw.headers.get("x-meterproxy-cost") == "0.01008925"
    assert raw.headers.get("x-meterproxy-currency") == "USD"
    assert raw.headers.get("x-meterproxy-request-id") == record["proxy_request_id"]


def test_streamed_responses_call_through_the_sdk(providers_proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Stream(events_of(RESPONSE_STREAM)))
    with providers_proxy.client(path="/openai/v1") as client:
        events = list(
            client.responses.create(model="gpt-5", input="What is the capital of France?", stream=True)
        )

    assert [event.type for event in events][-1] == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == "The capital of France is Paris."
    seen = only(stub.requests)
    # Usage injection is for chat/completions and completions only: the body goes as the client sent it.
    assert (seen.target, seen.json()) == (
        "/v1/responses",
        {"model": "gpt-5", "input": "What is the capital of France?", "stream": True},
    )
    record = only(providers_proxy.wait_records(1))
    # (2310 - 1792) * 1.25 + 1792 * 0.125 + 1337 * 10.00 per 1M
    expected = {
        **costs([(518, "1.25"), (1792, "0.125")], [(1337, "10.00")]),
        "request_id": "resp_68b1c2d4e5f08193a1b2c3d4e5f6a7b80c1d2e3f4a5b6c7d",
        "endpoint": "/openai/v1/responses",
        "response_model": "gpt-5-2025-08-07",
        "is_streaming": True,
        "input_tokens": 2310,
        "cached_input_tokens": 1792,
        "output_tokens": 1337,
        "reasoning_tokens": 1024,
        "total_tokens": 3647,
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected


@pytest.mark.parametrize("background", [True, False])
def test_a_background_responses_stream_whose_client_leaves_is_read_to_its_end_for_its_usage(
    providers_proxy: RunningProxy, stub: UpstreamStub, background: bool
) -> None:
    # A background response goes on generating when its client leaves, which may reconnect to it
    # (https://platform.openai.com/docs/guides/background): cut at once, it was recorded with an estimate
    # although billed whole. Any other stream stops generating when cut, and is cut at once.
    script = Stream(events_of(RESPONSE_STREAM), delay=0.1, hold_after=3)
    stub.push(script)
    with providers_proxy.client(path="/openai/v1") as client:
        stream = client.responses.create(model="gpt-5", input="Hi", stream=True, background=background)
        first = [event.type for event in itertools.islice(stream, 3)]
        stream.close()
    assert first == ["response.created", "response.in_progress", "response.output_item.added"]

    seen = only(stub.requests)
    if background:
        assert not seen.closed.wait(0.5), "the proxy closed the upstream request of a background response"
        script.gate.set()
    else:
        assert seen.closed.wait(10) and seen.closed_early
    record = only(providers_proxy.wait_records(1))
    expected = {"status_code": 499, "error": "client_disconnected"}
    if background:
        # (2310 - 1792) * 1.25 + 1792 * 0.125 + 1337 * 10.00 per 1M
        expected |= {
            **costs([(518, "1.25"), (1792, "0.125")], [(1337, "10.00")]),
            "usage_source": "provider",
            "output_tokens": 1337,
        }
    else:
        expected |= {"usage_source": "estimated"}
    assert pick(record, expected) == expected


def test_a_background_responses_stream_whose_client_leaves_before_it_is_sent_is_never_sent(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    # Read to its end once the provider has it, a background response whose client left while it waited
    # for an upstream slot was sent when one came free: a response nobody would read, generated and billed.
    # One slot, and a pool timeout longer than the wait for the record: the call must be cut, not refused.
    server = {"upstream_pool_size": 1, "pool_timeout_seconds": 60}
    proxy = launch(make_config(providers=all_providers(stub), server=server))
    holding = Stream(events_of(RESPONSE_STREAM), hold_after=3)
    stub.push(holding)
    body = json.dumps({"model": "gpt-5", "input": "Hi", "stream": True, "background": True}).encode()
    with proxy.client(path="/openai/v1") as client:
        first = client.responses.create(model="gpt-5", input="Hi", stream=True)  # takes the one slot
        waiting = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        waiting.sendall(
            b"POST /openai/v1/responses HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer sk-test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(1.0)  # the proxy has read the request, which waits for the slot
        waiting.close()

        left = only(proxy.wait_records(1))
        holding.gate.set()
        assert [event.type for event in first][-1] == "response.completed"
    # Never sent, it cost nothing: 0, where a call the provider had may have been billed (null, unknown).
    expected = {"status_code": 499, "error": "client_disconnected", "usage_source": "none", "total_cost": 0.0}
    assert pick(left, expected) == expected
    assert len(proxy.wait_records(2)) == 2
    assert len(stub.requests) == 1


def test_a_responses_stream_whose_text_holds_a_lone_surrogate_is_priced_as_the_sdk_reads_it(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Half of an emoji's UTF-16 pair, as a text cut inside it leaves it: the SDK reads each event with
    # json.loads, which takes it; orjson refuses it, and the usage of response.completed was lost.
    stream = RESPONSE_STREAM.replace(b"Paris.", b"Paris. \\ud83d")
    assert stream.count(b"\\ud83d") >= 2
    stub.push(Stream(events_of(stream)))
    with providers_proxy.client(path="/openai/v1") as client:
        events = list(client.responses.create(model="gpt-5", input="Capital of France?", stream=True))

    assert [event.type for event in events][-1] == "response.completed"
    record = only(providers_proxy.wait_records(1))
    # (2310 - 1792) * 1.25 + 1792 * 0.125 + 1337 * 10.00 per 1M, as without it
    expected = {
        **costs([(518, "1.25"), (1792, "0.125")], [(1337, "10.00")]),
        "input_tokens": 2310,
        "output_tokens": 1337,
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected


def test_streamed_responses_bytes_are_the_upstreams_then_the_cost_comment(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream(events_of(RESPONSE_STREAM)))
    sent = (
        b'{"model":"gpt-5","stream":true,"input":"What is the capital of France?","max_output_tokens":4096}'
    )
    response = providers_proxy.request(
        "POST", "/v1/responses", sent, {"content-type": "application/json", "authorization": "Bearer sk-test"}
    )

    assert only(stub.requests).body == sent
    # No [DONE] in a Responses stream: response.completed ends it, and the comment comes just before it.
    before, comment, after = split_cost_comment(response.body)
    assert (before + after, after) == (RESPONSE_STREAM, events_of(RESPONSE_STREAM)[-1])
    record = only(providers_proxy.wait_records(1))
    # (2310 - 1792) * 1.25 + 1792 * 0.125 + 1337 * 10.00 per 1M = 0.0142415
    assert comment == {
        "total_cost": 0.0142415,
        "currency": "USD",
        "input_tokens": 2310,
        "output_tokens": 1337,
    }
    assert record["total_cost"] == 0.0142415


def read_until(proxy: RunningProxy, stub: UpstreamStub, sent: list[bytes], last: str) -> tuple[Any, Any]:
    """A Responses stream whose provider sends `sent` and then holds its body open; the client reads to
    the first event of type `last` and closes. That event, and the call's record."""
    upstream = Stream(sent, hold_after=len(sent))
    stub.push(upstream)
    try:
        with (
            proxy.client(path="/openai/v1") as client,
            client.responses.create(model="gpt-5", input="Summarise the contract.", stream=True) as stream,
        ):
            event = next(event for event in stream if event.type == last)
        return event, only(proxy.wait_records(1))
    finally:
        upstream.gate.set()


@pytest.mark.parametrize(
    ("name", "last", "finish_reason", "output_tokens"),
    [
        ("responses_stream.sse", "response.completed", "completed", 1337),
        ("responses_stream_incomplete.sse", "response.incomplete", "max_output_tokens", 256),
        ("responses_stream_failed.sse", "response.failed", "failed", 1090),
    ],
)
def test_a_client_that_closes_at_the_last_event_of_a_responses_stream_is_recorded_as_answered(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    name: str,
    last: str,
    finish_reason: str,
    output_tokens: int,
) -> None:
    """The provider has sent the stream's last event but not ended its body yet; the client, holding the
    whole answer, closes. Its record was written when that event was read: 200, with the whole usage."""
    event, record = read_until(providers_proxy, stub, events_of(fixture(name)), last)
    assert event.type == last
    expected = {
        "status_code": 200,
        "error": None,
        "usage_source": "provider",
        "input_tokens": 2310,
        "output_tokens": output_tokens,
        "finish_reason": finish_reason,
    }
    assert pick(record, expected) == expected


def test_a_responses_stream_broken_off_by_an_error_event_is_recorded_as_a_stream_error(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """The Responses API ends a 200 stream it cannot finish with an `error` event and may keep the body
    open; the client stops there. The record, written when the event was read: the status the client got,
    `stream_error`, and the usage estimated from the request and the events seen, as a cut stream's is."""
    events = events_of(RESPONSE_STREAM)
    first_text = next(index for index, event in enumerate(events) if b"output_text.delta" in event)
    failure = {
        "type": "error",
        "code": "server_error",
        "message": "boom",
        "param": None,
        "sequence_number": 7,
    }
    error = b"event: error\ndata: " + json.dumps(failure).encode() + b"\n\n"
    sent = [*events[: first_text + 2], error]
    event, record = read_until(providers_proxy, stub, sent, "error")
    assert (event.type, event.message) == ("error", "boom")
    # ~4 bytes a token of the input as sent, one output token per event of the stream
    input_tokens = (len(json.dumps("Summarise the contract.")) + 3) // 4
    expected = {
        **stream_error_record(input_tokens, "1.25", len(sent), "10.00"),
        "finish_reason": None,  # response.created's `in_progress` is not how it finished
    }
    assert pick(record, expected) == expected


@pytest.mark.parametrize(
    ("name", "inputs", "outputs", "tokens"),
    [
        # Cut by max_output_tokens while reasoning: (2310 - 1792) * 1.25 + 1792 * 0.125 + 256 * 10.00 per 1M
        (
            "responses_stream_incomplete.sse",
            [(518, "1.25"), (1792, "0.125")],
            [(256, "10.00")],
            (2310, 256, 256),
        ),
        # Failed after two words: (2310 - 1792) * 1.25 + 1792 * 0.125 + 1090 * 10.00 per 1M
        (
            "responses_stream_failed.sse",
            [(518, "1.25"), (1792, "0.125")],
            [(1090, "10.00")],
            (2310, 1090, 1088),
        ),
    ],
    ids=["response.incomplete", "response.failed"],
)
def test_streamed_responses_that_end_incomplete_or_failed_are_priced_from_their_last_event(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    name: str,
    inputs: list[tuple[int, str]],
    outputs: list[tuple[int, str]],
    tokens: tuple[int, int, int],
) -> None:
    stream = fixture(name)
    stub.push(Stream(events_of(stream)))
    response = providers_proxy.post_json(
        "/openai/v1/responses", {"model": "gpt-5", "input": "Summarise the contract.", "stream": True}
    )

    before, comment, after = split_cost_comment(response.body)
    assert (before + after, after) == (stream, events_of(stream)[-1])
    record = only(providers_proxy.wait_records(1))
    expected = {
        **costs(inputs, outputs),
        "input_tokens": tokens[0],
        "cached_input_tokens": 1792,
        "output_tokens": tokens[1],
        "reasoning_tokens": tokens[2],
        "usage_source": "provider",
        "status_code": 200,
    }
    assert pick(record, expected) == expected
    assert (comment["total_cost"], comment["input_tokens"], comment["output_tokens"]) == (
        expected["total_cost"],
        tokens[0],
        tokens[1],
    )


# GPT-5.6 and later bill cache writes at 1.25x input and report them beside the cache reads, both parts of
# input_tokens: the body's 12033 input tokens are 129 plain and 11904 written; the stream's 2310 are 518
# plain and 1792 written.
SOL_BODY = RESPONSE.replace(
    b'"input_tokens_details": {\n      "cached_tokens": 11904\n    }',
    b'"input_tokens_details": {\n      "cache_write_tokens": 11904,\n      "cached_tokens": 0\n    }',
)
SOL_STREAM = RESPONSE_STREAM.replace(
    b'"input_tokens_details":{"cached_tokens":1792}',
    b'"input_tokens_details":{"cache_write_tokens":1792,"cached_tokens":0}',
)


@pytest.mark.parametrize(
    ("stream", "inputs", "outputs", "tokens"),
    [
        # 129 * 2.00 + 11904 * 2.50 + 844 * 10.00 per 1M
        (False, [(129, "2.00"), (11904, "2.50")], [(844, "10.00")], (12033, 11904, 844)),
        # 518 * 2.00 + 1792 * 2.50 + 1337 * 10.00 per 1M
        (True, [(518, "2.00"), (1792, "2.50")], [(1337, "10.00")], (2310, 1792, 1337)),
    ],
    ids=["body", "stream"],
)
def test_responses_cache_writes_are_priced_at_cache_write(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    stream: bool,
    inputs: list[tuple[int, str]],
    outputs: list[tuple[int, str]],
    tokens: tuple[int, int, int],
) -> None:
    assert SOL_BODY != RESPONSE and SOL_STREAM != RESPONSE_STREAM
    stub.push(Stream(events_of(SOL_STREAM)) if stream else Reply(body=SOL_BODY))
    payload = {"model": "gpt-6.1-sol", "input": "Tell me about Paris.", "stream": stream}
    response = providers_proxy.post_json("/openai/v1/responses", payload)

    assert response.status == 200
    record = only(providers_proxy.wait_records(1))
    expected = {
        **costs(inputs, outputs),
        "input_tokens": tokens[0],
        "cached_input_tokens": 0,
        "cache_write_tokens": tokens[1],
        "output_tokens": tokens[2],
        "usage_source": "provider",
        "price": {
            "input": 2.0,
            "output": 10.0,
            "cached_input": 0.1,
            "cache_write": 2.5,
            "tier": None,
            "cache_write_1h": 2.5,
        },
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == (0.018886 if stream else 0.038458)


def test_a_compaction_through_the_sdk_is_returned_as_is_and_priced(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """POST /v1/responses/compact runs the model over the conversation and bills the tokens its usage
    counts; it was forwarded unmetered, a billed call recorded without usage or cost."""
    stub.push(Reply(body=COMPACTED))
    with providers_proxy.client() as client:
        raw = client.responses.with_raw_response.compact(
            model="gpt-5", input="Review the lease and list every clause about termination."
        )

    assert raw.http_response.content == COMPACTED
    assert raw.parse().usage.output_tokens_details.reasoning_tokens == 1536
    assert only(stub.requests).target == "/v1/responses/compact"
    record = only(providers_proxy.wait_records(1))
    # (48210 - 40960) * 1.25 + 40960 * 0.125 + 1874 * 10.00 per 1M; the reasoning is part of the output
    expected = {
        **costs([(7250, "1.25"), (40960, "0.125")], [(1874, "10.00")]),
        "request_id": "resp_0c9e7b4a2f1d83a6006914a3e2b8d481958f2c7a1e4b6d9c30",
        "model": "gpt-5",
        "endpoint": "/v1/responses/compact",
        "input_tokens": 48210,
        "cached_input_tokens": 40960,
        "output_tokens": 1874,
        "reasoning_tokens": 1536,
        "total_tokens": 50084,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.0329225
    assert raw.headers.get("x-meterproxy-cost") == "0.0329225"


def test_embeddings_through_the_sdk_price_prompt_tokens_as_input(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=EMBEDDINGS))
    with providers_proxy.client() as client:
        raw = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["the notice clause", "the renewal clause"], dimensions=8
        )

    assert raw.http_response.content == EMBEDDINGS
    vectors = [item.embedding for item in raw.parse().data]
    encoded = [item["embedding"] for item in json.loads(EMBEDDINGS)["data"]]
    assert vectors == [list(struct.unpack("<8f", base64.b64decode(text))) for text in encoded]
    seen = only(stub.requests)
    assert (seen.target, seen.json()["encoding_format"]) == ("/v1/embeddings", "base64")
    record = only(providers_proxy.wait_records(1))
    # 1537 * 0.02 per 1M; nothing is output.
    expected = {
        **costs([(1537, "0.02")], []),
        "provider": "openai",
        "model": "text-embedding-3-small",
        "response_model": "text-embedding-3-small",
        "endpoint": "/v1/embeddings",
        "input_tokens": 1537,
        "output_tokens": 0,
        "total_tokens": 1537,
        "usage_source": "provider",
        "priced": True,
    }
    assert pick(record, expected) == expected
    # An embeddings response has no id: the record's request_id is ours.
    assert record["request_id"] == record["proxy_request_id"]
    assert raw.headers.get("x-meterproxy-cost") == "0.00003074"
    assert PLAIN_DECIMAL.fullmatch(raw.headers.get("x-meterproxy-cost", ""))


def test_embeddings_on_the_provider_route_with_a_plain_client(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=EMBEDDINGS))
    response = providers_proxy.post_json(
        "/openai/v1/embeddings",
        {
            "model": "text-embedding-3-small",
            "input": ["a", "b"],
            "encoding_format": "base64",
            "dimensions": 8,
        },
    )

    assert (response.status, response.body) == (200, EMBEDDINGS)
    assert only(stub.requests).target == "/v1/embeddings"
    record = only(providers_proxy.wait_records(1))
    assert (record["endpoint"], record["input_tokens"], record["output_cost"]) == (
        "/openai/v1/embeddings",
        1537,
        0.0,
    )
    assert_cost_headers(response, record, "0.00003074", "USD")


# A GPT image model bills its prompt's text and image tokens as input and the image it draws as output:
# 50 * 5.00 + 4160 * 40.00 per 1M. The price is one per token type (README: image tokens at text prices).
IMAGE_COSTS = costs([(50, "5.00")], [(4160, "40.00")])


def test_images_through_the_sdk_are_priced_from_their_usage(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=IMAGES))
    with providers_proxy.client() as client:
        raw = client.images.with_raw_response.generate(
            model="gpt-image-2", prompt="A lighthouse at dusk", size="1024x1024", quality="high"
        )

    assert raw.http_response.content == IMAGES
    assert raw.parse().usage is not None
    seen = only(stub.requests)
    assert (seen.target, seen.json()["model"]) == ("/v1/images/generations", "gpt-image-2")
    record = only(providers_proxy.wait_records(1))
    expected = {
        **IMAGE_COSTS,
        "provider": "openai",
        "model": "gpt-image-2",
        "endpoint": "/v1/images/generations",
        "is_streaming": False,
        "input_tokens": 50,
        "output_tokens": 4160,
        "total_tokens": 4210,
        "usage_source": "provider",
        "priced": True,
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.16665
    assert raw.headers.get("x-meterproxy-cost") == "0.16665"


def test_streamed_images_are_priced_from_the_completed_event(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream(events_of(IMAGES_STREAM)))
    with providers_proxy.client(path="/openai/v1") as client:
        events = list(
            client.images.generate(
                model="gpt-image-2", prompt="A lighthouse at dusk", stream=True, partial_images=1
            )
        )

    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    record = only(providers_proxy.wait_records(1))
    expected = {
        **IMAGE_COSTS,
        "endpoint": "/openai/v1/images/generations",
        "is_streaming": True,
        "input_tokens": 50,
        "output_tokens": 4160,
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected


def test_an_images_call_without_a_model_is_forwarded_and_recorded_unpriced(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # The images API's model is optional: the provider decides what a body without one gets, not the proxy.
    stub.push(Reply(body=IMAGES))
    response = providers_proxy.post_json("/openai/v1/images/generations", {"prompt": "A lighthouse at dusk"})

    assert (response.status, response.body) == (200, IMAGES)
    record = only(providers_proxy.wait_records(1))
    assert (record["model"], record["priced"], record["total_cost"], record["input_tokens"]) == (
        None,
        False,
        None,
        50,
    )


def test_an_images_edit_form_is_priced_from_its_usage(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # An edit sends its model in a multipart form beside the image: it is read there, the file is not.
    stub.push(Reply(body=IMAGES))
    with providers_proxy.client() as client:
        client.images.edit(model="gpt-image-2", image=("lighthouse.png", b"\x89PNG\r\n"), prompt="At night")

    seen = only(stub.requests)
    assert seen.target == "/v1/images/edits" and b'filename="lighthouse.png"' in seen.body
    record = only(providers_proxy.wait_records(1))
    expected = {
        **IMAGE_COSTS,
        "model": "gpt-image-2",
        "endpoint": "/v1/images/edits",
        "usage_source": "provider",
    }
    assert pick(record, expected) == expected


# A transcription bills its audio tokens as input and its text as output: 1187 * 6.00 + 213 * 10.00 per 1M.
TRANSCRIPTION_COSTS = costs([(1187, "6.00")], [(213, "10.00")])


def test_a_transcription_through_the_sdk_is_routed_by_its_form_and_priced(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=TRANSCRIPTION))
    with providers_proxy.client() as client:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="openai/gpt-4o-transcribe", file=("clip.wav", CLIP), language="en"
        )

    assert raw.http_response.content == TRANSCRIPTION
    assert raw.parse().text.startswith("The supplier")
    seen = only(stub.requests)
    # /v1/ found the provider by the form's model, which reaches it plain; the audio is forwarded as sent.
    assert seen.target == "/v1/audio/transcriptions"
    assert b'name="model"\r\n\r\ngpt-4o-transcribe\r\n' in seen.body and CLIP in seen.body
    assert b"openai/" not in seen.body
    record = only(providers_proxy.wait_records(1))
    expected = {
        **TRANSCRIPTION_COSTS,
        "provider": "openai",
        "model": "gpt-4o-transcribe",
        "endpoint": "/v1/audio/transcriptions",
        "is_streaming": False,
        "input_tokens": 1187,
        "output_tokens": 213,
        "total_tokens": 1400,
        "usage_source": "provider",
        "priced": True,
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.009252
    assert raw.headers.get("x-meterproxy-cost") == "0.009252"


def test_a_streamed_transcription_is_priced_from_its_done_event(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream(events_of(TRANSCRIPTION_STREAM)))
    with providers_proxy.client(path="/openai/v1") as client:
        events = list(
            client.audio.transcriptions.create(
                model="gpt-4o-transcribe", file=("clip.wav", CLIP), stream=True
            )
        )

    assert events[-1].type == "transcript.text.done"
    record = only(providers_proxy.wait_records(1))
    expected = {
        **TRANSCRIPTION_COSTS,
        "endpoint": "/openai/v1/audio/transcriptions",
        "is_streaming": True,
        "input_tokens": 1187,
        "output_tokens": 213,
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected


def generate(client: OpenAI) -> Iterator[Any]:
    return client.images.generate(
        model="gpt-image-2", prompt="A lighthouse at dusk", stream=True, partial_images=1
    )


def edit(client: OpenAI) -> Iterator[Any]:
    image = ("lighthouse.png", b"\x89PNG\r\n")
    return client.images.edit(model="gpt-image-2", image=image, prompt="At night", stream=True)


def transcribe(client: OpenAI) -> Iterator[Any]:
    return client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("clip.wav", CLIP), stream=True)


@pytest.mark.parametrize(
    ("call", "stream", "last", "expected"),
    [
        (generate, IMAGES_STREAM, "image_generation.completed", IMAGE_COSTS),
        (
            edit,
            IMAGES_STREAM.replace(b"image_generation.", b"image_edit."),
            "image_edit.completed",
            IMAGE_COSTS,
        ),
        (transcribe, TRANSCRIPTION_STREAM, "transcript.text.done", TRANSCRIPTION_COSTS),
    ],
    ids=["generation", "edit", "transcription"],
)
def test_a_client_that_closes_at_the_completed_event_of_an_image_or_transcript_stream_is_answered(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    call: Callable[[OpenAI], Iterator[Any]],
    stream: bytes,
    last: str,
    expected: dict[str, float],
) -> None:
    """No [DONE] in an image or transcript stream: its completed event is its last. The provider has sent
    it but not ended its body; the client, holding the whole answer, closes. Its record was written when
    that event was read: 200, with the provider's usage."""
    events = events_of(stream)
    upstream = Stream(events, hold_after=len(events))
    stub.push(upstream)
    try:
        with providers_proxy.client(path="/openai/v1") as client:
            for event in call(client):
                if event.type == last:
                    break
        assert event.type == last
        record = only(providers_proxy.wait_records(1))
    finally:
        upstream.gate.set()
    answered = {**expected, "status_code": 200, "error": None, "usage_source": "provider"}
    assert pick(record, answered) == answered


# How OpenAI's streaming APIs break off a 200 stream they cannot finish: an `error` event carrying the
# error object, which the `openai` SDK raises at.
STREAM_FAILURE = {
    "type": "error",
    "error": {"type": "server_error", "code": "server_error", "message": "boom"},
}


def broken_off(stream: bytes) -> list[bytes]:
    """`stream`'s events up to its completed one, then the error event instead, framed as the stream's."""
    events = events_of(stream)
    named = b"event: error\n" if b"event: " in stream else b""
    return [*events[:-1], named + b"data: " + json.dumps(STREAM_FAILURE).encode() + b"\n\n"]


@pytest.mark.parametrize(
    ("call", "stream", "input_tokens", "prices"),
    [
        # ~4 bytes a token of the prompt as sent; a form's prompt is not read, so the estimate's is empty
        (generate, IMAGES_STREAM, (len(json.dumps("A lighthouse at dusk")) + 3) // 4, ("5.00", "40.00")),
        (edit, IMAGES_STREAM.replace(b"image_generation.", b"image_edit."), 1, ("5.00", "40.00")),
        (transcribe, TRANSCRIPTION_STREAM, 1, ("6.00", "10.00")),
    ],
    ids=["generation", "edit", "transcription"],
)
def test_an_image_or_transcript_stream_broken_off_by_an_error_event_is_recorded_at_it_as_a_stream_error(
    providers_proxy: RunningProxy,
    stub: UpstreamStub,
    call: Callable[[OpenAI], Iterator[Any]],
    stream: bytes,
    input_tokens: int,
    prices: tuple[str, str],
) -> None:
    """The provider sends an `error` event instead of the completed one and keeps the body open; the SDK
    raises at it and the client closes. The record, written when the event was read: the status the
    client got, `stream_error`, and the usage estimated from the request and the events seen, as a cut
    stream's is."""
    sent = broken_off(stream)
    upstream = Stream(sent, hold_after=len(sent))
    stub.push(upstream)
    seen = []
    try:
        with providers_proxy.client(path="/openai/v1") as client, pytest.raises(APIError, match="boom"):
            for event in call(client):
                seen.append(event.type)
        record = only(providers_proxy.wait_records(1))
    finally:
        upstream.gate.set()
    assert seen == [json.loads(event.partition(b"data: ")[2])["type"] for event in sent[:-1]]
    input_price, output_price = prices
    expected = stream_error_record(input_tokens, input_price, len(sent), output_price)
    assert pick(record, expected) == expected


def test_an_image_stream_broken_off_by_an_error_event_has_its_cost_comment_just_before_it(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """The error event is the stream's last, whether or not the provider ends its body after it."""
    sent = broken_off(IMAGES_STREAM)
    stub.push(Stream(sent))
    response = providers_proxy.post_json(
        "/openai/v1/images/generations",
        {"model": "gpt-image-2", "prompt": "A lighthouse at dusk", "stream": True, "partial_images": 1},
    )

    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (b"".join(sent[:-1]), sent[-1])
    record = only(providers_proxy.wait_records(1))
    assert (record["status_code"], record["error"], record["output_tokens"]) == (200, "stream_error", 2)
    assert comment == {
        "total_cost": record["total_cost"],
        "currency": "USD",
        "input_tokens": record["input_tokens"],
        "output_tokens": 2,
    }


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        # Billed by the second: its duration is no token count, and is never read as 0 tokens.
        (b'{"text": "Sixty days.", "usage": {"type": "duration", "seconds": 9}}', "application/json"),
        # A transcript asked for as text (or srt, vtt) is not JSON, and has no usage: no bad answer either.
        (b"Sixty days.\n", "text/plain; charset=utf-8"),
        # A transcript that happens to read as JSON (a number said, a quoted line) is text all the same.
        (b"1984\n", "text/plain; charset=utf-8"),
        (b'"Sixty days."\n', "text/plain; charset=utf-8"),
    ],
    ids=["duration", "text", "text-a-number", "text-a-quote"],
)
def test_a_transcription_without_token_usage_is_recorded_without_usage(
    providers_proxy: RunningProxy, stub: UpstreamStub, body: bytes, content_type: str
) -> None:
    stub.push(Reply(body=body, headers=(("content-type", content_type),)))
    with providers_proxy.client(path="/openai/v1") as client:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("clip.wav", CLIP))

    assert raw.http_response.content == body
    assert raw.headers.get("x-meterproxy-cost") is None
    record = only(providers_proxy.wait_records(1))
    expected = {
        "model": "whisper-1",
        "priced": True,
        "input_tokens": 0,
        "total_cost": None,
        "usage_source": "none",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
