"""Anthropic's Messages API through the proxy, with the `anthropic` package as the client.

Anthropic counts cache reads and cache writes apart from `input_tokens`; the record's `input_tokens` is the
sum of the three, with `cached_input_tokens` and `cache_write_tokens` as its parts.
"""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest
from anthropic import Anthropic, APIStatusError
from anthropic.types import MessageParam
from conftest import MakeConfig, ProxyLauncher, RunningProxy, only, pick, price_of
from test_providers import (
    all_providers,
    assert_cost_headers,
    costs,
    events_of,
    fixture,
    split_cost_comment,
)
from upstream_stub import Reply, Stream, UpstreamStub

CLIENT_ANTHROPIC_KEY = "sk-ant-test"
PROVIDER_KEY = "sk-ant-api03-provider-canary-4e1f"
MESSAGE = fixture("anthropic_messages.json")
MESSAGE_STREAM = fixture("anthropic_messages_stream.sse")
LATE_USAGE_STREAM = fixture("anthropic_messages_stream_late_usage.sse")
COMPACTED_MESSAGE = fixture("anthropic_messages_compaction.json")
COMPACTED_STREAM = fixture("anthropic_messages_stream_compaction.sse")
ASK: list[MessageParam] = [{"role": "user", "content": "What does the liability clause cap?"}]
ANTHROPIC_JSON = (("content-type", "application/json"), ("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy"))
ANTHROPIC_SSE = (("content-type", "text/event-stream; charset=utf-8"),)


@pytest.fixture
def providers_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    return launch(make_config(providers=all_providers(stub)))


@pytest.fixture
def keyed_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """All providers, the anthropic one with its own api_key."""
    providers = all_providers(stub)
    providers["anthropic"]["api_key"] = "${ANTHROPIC_UPSTREAM_KEY}"
    return launch(make_config(providers=providers), env={"ANTHROPIC_UPSTREAM_KEY": PROVIDER_KEY})


def anthropic_client(proxy: RunningProxy, path: str = "/anthropic") -> Anthropic:
    return Anthropic(base_url=f"{proxy.url}{path}", api_key=CLIENT_ANTHROPIC_KEY, max_retries=0, timeout=30.0)


def test_message_through_the_sdk_is_priced_with_cache_reads_and_writes(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=MESSAGE, headers=ANTHROPIC_JSON))
    with anthropic_client(keyed_proxy) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=1024, messages=ASK
        )

    assert raw.http_response.content == MESSAGE
    message = raw.parse()
    assert (message.usage.cache_read_input_tokens, message.stop_reason) == (6000, "end_turn")
    record = only(keyed_proxy.wait_records(1))
    # (10000 - 6000 - 3000) * 3.00 + 6000 * 0.30 + 3000 * 3.75 + 742 * 15.00 per 1M
    expected = {
        **costs([(1000, "3.00"), (6000, "0.30"), (3000, "3.75")], [(742, "15.00")]),
        "request_id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "user_id": "key:" + hashlib.sha256(CLIENT_ANTHROPIC_KEY.encode()).hexdigest()[:12],
        "provider": "anthropic",
        "model": "claude-sonnet-4-6",
        "response_model": "claude-sonnet-4-6",
        "endpoint": "/anthropic/v1/messages",
        "is_streaming": False,
        "input_tokens": 10000,
        "cached_input_tokens": 6000,
        "cache_write_tokens": 3000,
        "output_tokens": 742,
        "total_tokens": 10742,
        "finish_reason": "end_turn",
        "priced": True,
        "currency": "USD",
        "price": {
            "input": 3.0,
            "output": 15.0,
            "cached_input": 0.3,
            "cache_write": 3.75,
            "tier": None,
            "cache_write_1h": 6.0,
        },
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.02718
    assert raw.headers.get("x-meterproxy-cost") == "0.02718"
    assert raw.headers.get("x-meterproxy-currency") == "USD"
    assert raw.headers.get("request-id") == "req_011CSHoEeqs5C35K2UUqR7Fy"


@pytest.mark.parametrize("surrogate", [b"\\ud83d", b"\xed\xa0\xbd"], ids=["escaped", "as bytes"])
def test_a_message_whose_text_holds_a_lone_surrogate_is_priced_as_the_sdk_reads_it(
    providers_proxy: RunningProxy, stub: UpstreamStub, surrogate: bytes
) -> None:
    # Half of an emoji's UTF-16 pair, as a text cut inside it leaves it: Python's json.loads, the SDK's
    # reader, takes it (escaped, or as the bytes Python's surrogatepass decodes); orjson refuses it.
    body = MESSAGE.replace(b"the claim.", b"the claim. " + surrogate)
    assert body != MESSAGE
    stub.push(Reply(body=body, headers=ANTHROPIC_JSON))
    with anthropic_client(providers_proxy) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=1024, messages=ASK
        )

    assert raw.http_response.content == body
    assert raw.parse().content[0].type == "text"
    record = only(providers_proxy.wait_records(1))
    # (10000 - 6000 - 3000) * 3.00 + 6000 * 0.30 + 3000 * 3.75 + 742 * 15.00 per 1M, as without it
    expected = {
        **costs([(1000, "3.00"), (6000, "0.30"), (3000, "3.75")], [(742, "15.00")]),
        "input_tokens": 10000,
        "output_tokens": 742,
        "finish_reason": "end_turn",
        "usage_source": "provider",
        "error": None,
    }
    assert pick(record, expected) == expected
    assert raw.headers.get("x-meterproxy-cost") == "0.02718"


def test_1_hour_cache_writes_are_priced_at_their_own_price_and_recorded(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # 2000 of the 3000 cache writes with a 1-hour TTL: 2x input (6.00) rather than 1.25x (3.75).
    body = MESSAGE.replace(
        b'"cache_creation":{"ephemeral_5m_input_tokens":3000,"ephemeral_1h_input_tokens":0}',
        b'"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000}',
    )
    assert body != MESSAGE
    stub.push(Reply(body=body, headers=ANTHROPIC_JSON))
    with anthropic_client(providers_proxy) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=1024, messages=ASK
        )

    cache_creation = raw.parse().usage.cache_creation
    assert cache_creation is not None and cache_creation.ephemeral_1h_input_tokens == 2000
    record = only(providers_proxy.wait_records(1))
    # 1000 * 3.00 + 6000 * 0.30 + 1000 * 3.75 + 2000 * 6.00 = 20550 per 1M in; 742 * 15.00 = 11130 out
    expected = {
        "input_cost": 0.02055,
        "output_cost": 0.01113,
        "total_cost": 0.03168,
        "input_tokens": 10000,
        "cached_input_tokens": 6000,
        "cache_write_tokens": 3000,
        "cache_write_1h_tokens": 2000,
    }
    assert pick(record, expected) == expected
    assert price_of(record)["cache_write_1h"] == 6.0
    assert raw.headers.get("x-meterproxy-cost") == "0.03168"


def test_streamed_1_hour_cache_writes_from_message_start_are_priced_at_their_own_price(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # message_start says 1024 of the 1536 cache writes are 1-hour ones; message_delta has no breakdown.
    stream = MESSAGE_STREAM.replace(
        b'"cache_creation":{"ephemeral_5m_input_tokens":1536,"ephemeral_1h_input_tokens":0}',
        b'"cache_creation":{"ephemeral_5m_input_tokens":512,"ephemeral_1h_input_tokens":1024}',
    )
    assert stream != MESSAGE_STREAM
    stub.push(Stream(events_of(stream), headers=ANTHROPIC_SSE))
    with (
        anthropic_client(providers_proxy) as client,
        client.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK) as events,
    ):
        final = events.get_final_message()

    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 1024
    record = only(providers_proxy.wait_records(1))
    # 25 * 3.00 + 18432 * 0.30 + 512 * 3.75 + 1024 * 6.00 = 75 + 5529.6 + 1920 + 6144 = 13668.6 per 1M in;
    # 389 * 15.00 = 5835 out
    expected = {
        "input_cost": 0.0136686,
        "output_cost": 0.005835,
        "total_cost": 0.0195036,
        "is_streaming": True,
        "input_tokens": 19993,
        "cache_write_tokens": 1536,
        "cache_write_1h_tokens": 1024,
        "output_tokens": 389,
        "usage_source": "provider",
    }
    assert pick(record, expected) == expected


def test_thinking_tokens_are_recorded_as_reasoning_and_priced_once_as_output(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # output_tokens (742) holds the thinking (512): the record names that part, the cost is unchanged.
    body = MESSAGE.replace(
        b'"output_tokens":742,', b'"output_tokens":742,"output_tokens_details":{"thinking_tokens":512},'
    )
    assert body != MESSAGE
    stub.push(Reply(body=body, headers=ANTHROPIC_JSON))
    with anthropic_client(providers_proxy) as client:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK)

    record = only(providers_proxy.wait_records(1))
    # (10000 - 6000 - 3000) * 3.00 + 6000 * 0.30 + 3000 * 3.75 + 742 * 15.00 per 1M, as without the details
    expected = {
        **costs([(1000, "3.00"), (6000, "0.30"), (3000, "3.75")], [(742, "15.00")]),
        "output_tokens": 742,
        "reasoning_tokens": 512,
        "total_tokens": 10742,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.02718


def test_provider_key_replaces_the_clients_x_api_key(keyed_proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=MESSAGE, headers=ANTHROPIC_JSON))
    with anthropic_client(keyed_proxy) as client:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK)

    seen = only(stub.requests)
    assert seen.target == "/anthropic/v1/messages"
    assert [value for name, value in seen.headers if name.lower() == "x-api-key"] == [PROVIDER_KEY]
    assert seen.header("authorization") is None
    assert all(CLIENT_ANTHROPIC_KEY not in value for _, value in seen.headers)
    keyed_proxy.wait_records(1)
    for secret in (PROVIDER_KEY, CLIENT_ANTHROPIC_KEY):
        assert secret not in keyed_proxy.records_path.read_text()
        assert secret not in keyed_proxy.log()


def test_without_a_provider_key_the_clients_key_is_forwarded(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.always(Reply(body=MESSAGE, headers=ANTHROPIC_JSON))
    with anthropic_client(providers_proxy) as client:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK)
    canary = "sk-ant-api03-client-canary-77d0"
    providers_proxy.request(
        "POST",
        "/anthropic/v1/messages",
        json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": ASK}).encode(),
        {"content-type": "application/json", "x-api-key": canary, "anthropic-version": "2023-06-01"},
    )

    by_sdk, by_header = stub.wait_requests(2)
    # The SDK's own key header, whichever it uses, reaches the provider as the client sent it.
    assert any(value.endswith(CLIENT_ANTHROPIC_KEY) for _, value in by_sdk.headers)
    assert [value for name, value in by_header.headers if name.lower() == "x-api-key"] == [canary]
    assert by_header.header("anthropic-version") == "2023-06-01"
    records = providers_proxy.wait_records(2)
    assert records[1]["user_id"] == "key:" + hashlib.sha256(canary.encode()).hexdigest()[:12]
    for secret in (CLIENT_ANTHROPIC_KEY, canary):
        assert secret not in providers_proxy.records_path.read_text()


def test_streamed_message_through_the_sdk(providers_proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Stream(events_of(MESSAGE_STREAM), headers=ANTHROPIC_SSE))
    with (
        anthropic_client(providers_proxy) as client,
        client.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "Indemnity survives termination for three years."
    assert (final.usage.cache_read_input_tokens, final.usage.output_tokens) == (18432, 389)
    sent = only(stub.requests).json()
    # Usage injection is for chat/completions and completions only.
    assert "stream_options" not in sent and sent["stream"] is True
    record = only(providers_proxy.wait_records(1))
    assert pick(record, MESSAGE_STREAM_RECORD) == MESSAGE_STREAM_RECORD


# (19993 - 18432 - 1536) * 3.00 + 18432 * 0.30 + 1536 * 3.75 + 389 * 15.00 per 1M
MESSAGE_STREAM_RECORD = {
    **costs([(25, "3.00"), (18432, "0.30"), (1536, "3.75")], [(389, "15.00")]),
    "request_id": "msg_014p7gG3wDgGV9EUtLvnow3U",
    "response_model": "claude-sonnet-4-6",
    "is_streaming": True,
    "input_tokens": 19993,
    "cached_input_tokens": 18432,
    "cache_write_tokens": 1536,
    "output_tokens": 389,
    "finish_reason": "end_turn",
    "usage_source": "provider",
    "status_code": 200,
    "error": None,
}


def test_a_client_that_closes_at_message_stop_is_recorded_as_answered(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """The provider has sent message_stop but not ended its body yet; the client, holding the whole
    answer, closes. Its record was written when message_stop was read: 200, with the whole usage."""
    events = events_of(MESSAGE_STREAM)
    upstream = Stream(events, headers=ANTHROPIC_SSE, hold_after=len(events))
    stub.push(upstream)
    try:
        with anthropic_client(providers_proxy) as client:
            stream = client.messages.create(
                model="claude-sonnet-4-6", max_tokens=1024, messages=ASK, stream=True
            )
            with stream:
                for event in stream:
                    if event.type == "message_stop":
                        break
        assert event.type == "message_stop"
        record = only(providers_proxy.wait_records(1))
    finally:
        upstream.gate.set()
    assert pick(record, MESSAGE_STREAM_RECORD) == MESSAGE_STREAM_RECORD


OVERLOADED = (
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)


def test_a_stream_broken_off_by_an_error_event_is_recorded_as_a_stream_error_with_its_usage_so_far(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Anthropic ends a 200 stream it cannot finish with `event: error` (overloaded_error) and may keep the
    body open; the SDK raises at the event and closes. The record, written when the event was read: the
    status the client got, `stream_error`, message_start's exact input and cache counts and the output
    estimated from the events seen (estimated)."""
    events = events_of(MESSAGE_STREAM)
    first_text = next(index for index, event in enumerate(events) if b"text_delta" in event)
    sent = [*events[: first_text + 2], OVERLOADED]
    upstream = Stream(sent, headers=ANTHROPIC_SSE, hold_after=len(sent))
    stub.push(upstream)
    try:
        with (
            anthropic_client(providers_proxy) as client,
            pytest.raises(APIStatusError, match="overloaded_error"),
            client.messages.create(
                model="claude-sonnet-4-6", max_tokens=1024, messages=ASK, stream=True
            ) as stream,
        ):
            for _ in stream:
                pass
        record = only(providers_proxy.wait_records(1))
    finally:
        upstream.gate.set()
    # 25 * 3.00 + 18432 * 0.30 + 1536 * 3.75 + 6 * 15.00 per 1M: one output token per event of the stream
    expected = {
        **costs([(25, "3.00"), (18432, "0.30"), (1536, "3.75")], [(len(sent), "15.00")]),
        "status_code": 200,
        "error": "stream_error",
        "usage_source": "estimated",
        "input_tokens": 19993,
        "cached_input_tokens": 18432,
        "cache_write_tokens": 1536,
        "output_tokens": len(sent),
    }
    assert pick(record, expected) == expected


def test_streamed_message_bytes_are_the_upstreams_then_the_cost_comment(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Stream(events_of(MESSAGE_STREAM), headers=ANTHROPIC_SSE))
    sent = b'{"model": "claude-sonnet-4-6", "max_tokens": 1024, "stream": true, "messages": []}'
    response = providers_proxy.request(
        "POST",
        "/anthropic/v1/messages",
        sent,
        {
            "content-type": "application/json",
            "x-api-key": CLIENT_ANTHROPIC_KEY,
            "anthropic-version": "2023-06-01",
        },
    )

    assert only(stub.requests).body == sent
    # Anthropic streams have no [DONE]: message_stop ends them, and the comment comes just before it.
    before, comment, after = split_cost_comment(response.body)
    assert before + after == MESSAGE_STREAM
    assert after == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    # 25 * 3.00 + 18432 * 0.30 + 1536 * 3.75 + 389 * 15.00 per 1M = 0.0171996
    assert comment == {
        "total_cost": 0.0171996,
        "currency": "USD",
        "input_tokens": 19993,
        "output_tokens": 389,
    }
    assert only(providers_proxy.wait_records(1))["total_cost"] == 0.0171996


def test_input_and_cache_counts_in_message_delta_override_message_start(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # message_start says 25 input and no cache; message_delta brings the cache read and write (and thinking).
    stub.push(Stream(events_of(LATE_USAGE_STREAM), headers=ANTHROPIC_SSE))
    with anthropic_client(providers_proxy) as client:
        events = list(
            client.messages.create(model="claude-sonnet-4-6", max_tokens=4096, messages=ASK, stream=True)
        )

    assert [event.type for event in events][-1] == "message_stop"
    record = only(providers_proxy.wait_records(1))
    # 25 * 3.00 + 18432 * 0.30 + 1536 * 3.75 + 1207 * 15.00 per 1M
    expected = {
        **costs([(25, "3.00"), (18432, "0.30"), (1536, "3.75")], [(1207, "15.00")]),
        "request_id": "msg_01Aq9w938a90dw8q8jRCd8Xy",
        "input_tokens": 19993,
        "cached_input_tokens": 18432,
        "cache_write_tokens": 1536,
        "output_tokens": 1207,
        "finish_reason": "end_turn",
    }
    assert pick(record, expected) == expected


def test_the_last_message_delta_gives_the_output_count(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    events = events_of(MESSAGE_STREAM)
    last_delta = next(
        index for index, event in enumerate(events) if event.startswith(b"event: message_delta")
    )
    earlier = events[last_delta].replace(b'"usage":{"output_tokens":389}', b'"usage":{"output_tokens":120}')
    assert earlier != events[last_delta]
    stream = [*events[:last_delta], earlier, *events[last_delta:]]
    stub.push(Stream(stream, headers=ANTHROPIC_SSE))
    response = providers_proxy.post_json(
        "/anthropic/v1/messages",
        {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": ASK, "stream": True},
    )

    before, comment, after = split_cost_comment(response.body)
    assert before + after == b"".join(stream)
    record = only(providers_proxy.wait_records(1))
    # 25 * 3.00 + 18432 * 0.30 + 1536 * 3.75 + 389 * 15.00 per 1M
    expected = {
        **costs([(25, "3.00"), (18432, "0.30"), (1536, "3.75")], [(389, "15.00")]),
        "output_tokens": 389,
    }
    assert pick(record, expected) == expected
    assert comment["output_tokens"] == 389


def test_stream_cut_before_message_delta_still_bills_the_input_and_cache_it_reported(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    events = events_of(MESSAGE_STREAM)
    cut = next(index for index, event in enumerate(events) if event.startswith(b"event: message_delta"))
    stub.push(Stream(events, headers=ANTHROPIC_SSE, cut_after=cut))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": ASK, "stream": True}
    connection = http.client.HTTPConnection("127.0.0.1", providers_proxy.port, timeout=30)
    try:
        connection.request(
            "POST", "/anthropic/v1/messages", json.dumps(body).encode(), {"x-api-key": CLIENT_ANTHROPIC_KEY}
        )
        response = connection.getresponse()
        # The client's stream is cut where the provider's was: no cost comment, no clean end.
        with pytest.raises(http.client.IncompleteRead) as received:
            response.read()
    finally:
        connection.close()

    assert received.value.partial == b"".join(events[:cut])
    record = only(providers_proxy.wait_records(1))
    # message_start reported 25 input, 18432 cache reads, 1536 cache writes: 25 * 3.00 + 18432 * 0.30 +
    # 1536 * 3.75 per 1M is owed whatever the output was. Its output count (1) is a placeholder: the
    # output is estimated as for any cut stream, a token per event: message_start, content_block_start,
    # ping, 7 deltas and content_block_stop are 11, at 15.00 per 1M.
    assert cut == 11
    expected = {
        **costs([(25, "3.00"), (18432, "0.30"), (1536, "3.75")], [(11, "15.00")]),
        "error": "upstream_reset",
        "usage_source": "estimated",
        "input_tokens": 19993,
        "cached_input_tokens": 18432,
        "cache_write_tokens": 1536,
        "output_tokens": 11,
        "total_tokens": 20004,
    }
    assert pick(record, expected) == expected


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_a_compaction_is_billed_beside_the_answer_it_made_room_for(
    providers_proxy: RunningProxy, stub: UpstreamStub, stream: bool
) -> None:
    # A conversation past its compaction threshold: the API summarised it (3000 in, 150000 cache reads,
    # 7000 cache writes, 3500 out), then answered from the summary (2000 in, 21000 cache reads, 1000
    # out). The top-level usage holds the answer only; the compaction is in usage.iterations alone.
    stub.push(
        Stream(events_of(COMPACTED_STREAM), headers=ANTHROPIC_SSE)
        if stream
        else Reply(body=COMPACTED_MESSAGE, headers=ANTHROPIC_JSON)
    )
    response = providers_proxy.post_json(
        "/anthropic/v1/messages",
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 4096,
            "messages": ASK,
            "context_management": {"edits": [{"type": "compact_20260112"}]},
            "stream": stream,
        },
    )

    assert response.status == 200
    record = only(providers_proxy.wait_records(1))
    # (2000 + 3000) * 3.00 + (21000 + 150000) * 0.30 + 7000 * 3.75 + (1000 + 3500) * 15.00 per 1M
    expected = {
        **costs([(5000, "3.00"), (171000, "0.30"), (7000, "3.75")], [(4500, "15.00")]),
        "input_tokens": 183000,
        "cached_input_tokens": 171000,
        "cache_write_tokens": 7000,
        "output_tokens": 4500,
        "total_tokens": 187500,
        "finish_reason": "end_turn",
        "usage_source": "provider",
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.16005


def test_plain_v1_messages_route_serves_the_sdk_by_model(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=MESSAGE, headers=ANTHROPIC_JSON))
    with anthropic_client(providers_proxy, path="") as client:
        message = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ASK)

    assert message.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert only(stub.requests).target == "/anthropic/v1/messages"
    record = only(providers_proxy.wait_records(1))
    assert (record["provider"], record["endpoint"], record["input_tokens"]) == (
        "anthropic",
        "/v1/messages",
        10000,
    )
    assert record["total_cost"] == 0.02718


def test_raw_message_gets_the_cost_headers(providers_proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.push(Reply(body=MESSAGE, headers=ANTHROPIC_JSON))
    response = providers_proxy.request(
        "POST",
        "/anthropic/v1/messages",
        json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": ASK}).encode(),
        {
            "content-type": "application/json",
            "x-api-key": CLIENT_ANTHROPIC_KEY,
            "anthropic-version": "2023-06-01",
        },
    )

    assert (response.status, response.body) == (200, MESSAGE)
    assert_cost_headers(response, only(providers_proxy.wait_records(1)), "0.02718", "USD")
