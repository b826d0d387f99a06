"""Gemini natively (generateContent, streamGenerateContent?alt=sse) and through its OpenAI-compatible path.

The model comes from the path; output is candidates plus thoughts, and cached content is part of the prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import aiohttp
import pytest
from conftest import MakeConfig, ProxyLauncher, RunningProxy, only, pick, read_until
from test_providers import (
    all_providers,
    assert_cost_headers,
    costs,
    events_of,
    fixture,
    split_cost_comment,
)
from upstream_stub import SSE_DONE, Reply, Stream, UpstreamStub, sse

PROVIDER_KEY = "AIzaSyProviderCanary-5b2e"
GENERATE = fixture("gemini_generate_content.json")
STREAM = fixture("gemini_stream_generate_content.sse")
ASK = {"contents": [{"role": "user", "parts": [{"text": "When does the contract renew?"}]}]}
JSON_TYPE = {"content-type": "application/json"}


@pytest.fixture
def providers_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    return launch(make_config(providers=all_providers(stub)))


@pytest.fixture
def keyed_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """All providers, the gemini one with its own api_key."""
    providers = all_providers(stub)
    providers["gemini"]["api_key"] = "${GEMINI_UPSTREAM_KEY}"
    return launch(make_config(providers=providers), env={"GEMINI_UPSTREAM_KEY": PROVIDER_KEY})


def test_generate_content_is_priced_with_thoughts_as_output_and_cached_content(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=GENERATE))
    response = keyed_proxy.request(
        "POST",
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        json.dumps(ASK).encode(),
        {**JSON_TYPE, "x-goog-api-key": "AIzaSyClientCanary-0c9d"},
    )

    assert (response.status, response.body) == (200, GENERATE)
    seen = only(stub.requests)
    assert (seen.target, seen.json()) == ("/v1beta/models/gemini-2.5-flash:generateContent", ASK)
    assert [value for name, value in seen.headers if name.lower() == "x-goog-api-key"] == [PROVIDER_KEY]
    assert seen.header("authorization") is None
    record = only(keyed_proxy.wait_records(1))
    # (12800 - 8192) * 0.30 + 8192 * 0.03 + (640 + 1210) * 2.50 per 1M
    expected = {
        **costs([(4608, "0.30"), (8192, "0.03")], [(1850, "2.50")]),
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "endpoint": "/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        "is_streaming": False,
        "input_tokens": 12800,
        "cached_input_tokens": 8192,
        "cache_write_tokens": 0,
        "output_tokens": 1850,
        "reasoning_tokens": 1210,
        "total_tokens": 14650,
        "priced": True,
        "currency": "USD",
        "price": {
            "input": 0.3,
            "output": 2.5,
            "cached_input": 0.03,
            "cache_write": 0.3,
            "tier": None,
            "cache_write_1h": 0.3,
        },
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert_cost_headers(response, record, "0.00625316", "USD")
    for secret in (PROVIDER_KEY, "AIzaSyClientCanary-0c9d"):
        assert secret not in keyed_proxy.records_path.read_text()


def test_a_built_in_tools_prompt_tokens_are_priced_as_input(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # A grounded answer: the search results fed to the model are counted apart from the prompt, and
    # inside the total (12 + 65 + 71 + 89 = 237).
    usage = {
        "promptTokenCount": 12,
        "cachedContentTokenCount": 4,
        "candidatesTokenCount": 71,
        "toolUsePromptTokenCount": 65,
        "thoughtsTokenCount": 89,
        "totalTokenCount": 237,
    }
    answer = {
        "candidates": [{"content": {"parts": [{"text": "Yes."}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "grounded-1",
    }
    stub.push(Reply(body=json.dumps(answer).encode()))
    providers_proxy.post_json("/gemini/v1beta/models/gemini-2.5-flash:generateContent", ASK)

    record = only(providers_proxy.wait_records(1))
    # (12 + 65 - 4) * 0.30 + 4 * 0.03 + (71 + 89) * 2.50 per 1M
    expected = {
        **costs([(73, "0.30"), (4, "0.03")], [(160, "2.50")]),
        "input_tokens": 77,
        "cached_input_tokens": 4,
        "output_tokens": 160,
        "reasoning_tokens": 89,
        "total_tokens": 237,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.00042202


def test_generate_content_records_gemini_response_id_model_version_and_finish_reason(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=GENERATE))
    providers_proxy.post_json("/gemini/v1beta/models/gemini-2.5-flash:generateContent", ASK)

    record = only(providers_proxy.wait_records(1))
    expected = {
        "request_id": "mKdGaOqQHo2Lz7IP7d3BsQ0",
        "response_model": "gemini-2.5-flash",
        "finish_reason": "STOP",
    }
    assert pick(record, expected) == expected


def test_a_key_in_the_query_string_reaches_gemini_but_never_the_record_or_log(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    canary = "AIzaSyQueryCanary-8f31"
    stub.push(Reply(body=GENERATE))
    response = providers_proxy.request(
        "POST",
        f"/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={canary}",
        json.dumps(ASK).encode(),
    )

    assert response.status == 200
    assert only(stub.requests).target == f"/v1beta/models/gemini-2.5-flash:generateContent?key={canary}"
    record = only(providers_proxy.wait_records(1))
    assert record["endpoint"] == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert canary not in providers_proxy.records_path.read_text()
    assert canary not in providers_proxy.log()


def test_stream_generate_content_counts_the_last_usage_metadata(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Gemini frames its events with CRLF, and every chunk carries the usage so far.
    stub.push(Stream(events_of(STREAM, b"\r\n\r\n")))
    response = providers_proxy.post_json(
        "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", ASK
    )

    seen = only(stub.requests)
    assert (seen.target, seen.json()) == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ASK,
    )
    # No [DONE] in a Gemini stream: the comment comes after the last event.
    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (STREAM, b"")
    record = only(providers_proxy.wait_records(1))
    # (12800 - 8192) * 0.30 + 8192 * 0.03 + (412 + 986) * 2.50 per 1M
    expected = {
        **costs([(4608, "0.30"), (8192, "0.03")], [(1398, "2.50")]),
        "model": "gemini-2.5-flash",
        "endpoint": "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "is_streaming": True,
        "input_tokens": 12800,
        "cached_input_tokens": 8192,
        "output_tokens": 1398,
        "reasoning_tokens": 986,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected
    assert expected["total_cost"] == 0.00512316
    assert comment == {
        "total_cost": 0.00512316,
        "currency": "USD",
        "input_tokens": 12800,
        "output_tokens": 1398,
    }


@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_a_stream_without_alt_sse_reaches_its_client_as_it_comes_and_counts_its_last_usage(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, client: str
) -> None:
    # Without alt=sse Gemini streams one JSON array, an element at a time. It was read whole for its usage
    # before any of it was sent: the client waited for the whole generation.
    providers_proxy = launch(make_config(providers=all_providers(stub), server={"upstream_client": client}))
    elements = [event.removeprefix(b"data: ").strip() for event in events_of(STREAM, b"\r\n\r\n")]
    pieces = [b"[" + elements[0], *(b",\r\n" + element for element in elements[1:]), b"]"]
    script = Stream(pieces, headers=(("content-type", "application/json; charset=UTF-8"),), hold_after=1)
    stub.push(script)

    async def call() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{providers_proxy.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                json=ASK,
                headers={"x-goog-api-key": "AIzaSyClient"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response,
        ):
            first = await read_until(response, pieces[0], 10)
            script.gate.set()
            return first + await asyncio.wait_for(response.content.read(), 10)

    body = asyncio.run(call())
    assert body == b"".join(pieces)
    assert [element["candidates"][0]["index"] for element in json.loads(body)] == [0] * len(elements)
    record = only(providers_proxy.wait_records(1))
    expected = {
        **costs([(4608, "0.30"), (8192, "0.03")], [(1398, "2.50")]),
        "is_streaming": True,
        "input_tokens": 12800,
        "output_tokens": 1398,
        "usage_source": "provider",
        "status_code": 200,
        "error": None,
    }
    assert pick(record, expected) == expected


def test_openai_compatible_gemini_path_is_priced_as_chat(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = fixture("gemini_openai_chat.json")
    stub.push(Reply(body=body))
    with providers_proxy.client(path="/gemini/v1") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gemini-2.5-flash", messages=[{"role": "user", "content": "When does it renew?"}]
        )

    assert raw.http_response.content == body
    assert only(stub.requests).target == "/v1beta/openai/chat/completions"
    record = only(providers_proxy.wait_records(1))
    # 3120 * 0.30 + 1402 * 2.50 per 1M (the reasoning tokens are inside completion_tokens)
    expected = {
        **costs([(3120, "0.30")], [(1402, "2.50")]),
        "endpoint": "/gemini/v1/chat/completions",
        "input_tokens": 3120,
        "output_tokens": 1402,
        "reasoning_tokens": 1390,
    }
    assert pick(record, expected) == expected
    assert raw.headers.get("x-meterproxy-cost") == "0.004441"


def test_thinking_left_out_of_completion_tokens_on_the_openai_compatible_path_is_priced_as_output(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Google's OpenAI-compatible endpoint streams a running usage in every chunk whose completion_tokens
    # leave the thinking out, while total_tokens counts it (9 + 1 of 103 here), and no reasoning count
    # says so: https://discuss.ai.google.dev/t/endpoint-https-generativelanguage-googleapis-com-v1beta-openai-chat-completions-is-not-compliant-with-api-specs/127400
    # Google bills thinking as output (https://ai.google.dev/gemini-api/docs/pricing: "including
    # thinking tokens").
    def chunk(delta: dict[str, Any], usage: dict[str, int], finish: str | None = None) -> bytes:
        choice: dict[str, Any] = {"delta": delta, "index": 0}
        if finish is not None:
            choice["finish_reason"] = finish
        return sse(
            {
                "choices": [choice],
                "created": 1772149571,
                "id": "Q9ugadePBtbAqtsPx5e1iAE",
                "model": "gemini-2.5-flash",
                "object": "chat.completion.chunk",
                "usage": usage,
            }
        )

    stream = [
        chunk(
            {"content": "1", "role": "assistant"},
            {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103},
        ),
        chunk(
            {"content": ", 2", "role": "assistant"},
            {"completion_tokens": 4, "prompt_tokens": 9, "total_tokens": 106},
        ),
        chunk(
            {"role": "assistant"}, {"completion_tokens": 4, "prompt_tokens": 9, "total_tokens": 106}, "stop"
        ),
        SSE_DONE,
    ]
    stub.push(Stream(stream))
    response = providers_proxy.post_json(
        "/gemini/v1/chat/completions",
        {
            "model": "gemini-2.5-flash",
            "messages": [{"role": "user", "content": "Count to 2."}],
            "stream": True,
        },
    )

    before, comment, after = split_cost_comment(response.body)
    assert (before, after) == (b"".join(stream[:-1]), SSE_DONE)
    record = only(providers_proxy.wait_records(1))
    # 9 * 0.30 + (4 + 93 thinking) * 2.50 per 1M
    expected = {
        **costs([(9, "0.30")], [(97, "2.50")]),
        "input_tokens": 9,
        "output_tokens": 97,
        "reasoning_tokens": 93,
        "total_tokens": 106,
        "usage_source": "provider",
    }
    assert pick(record, expected) == expected
    assert comment["output_tokens"] == 97


def test_pass_through_callers_are_told_apart_by_their_gemini_key_in_header_or_query(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.always(Reply(body=GENERATE))
    path = "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    body = json.dumps(ASK).encode()
    for key in ("AIzaSyCustomerA-canary", "AIzaSyCustomerB-canary"):
        response = providers_proxy.request("POST", path, body, {**JSON_TYPE, "x-goog-api-key": key})
        assert response.status == 200
    by_query = providers_proxy.request("POST", f"{path}?key=AIzaSyCustomerC%2Bcanary", body, JSON_TYPE)
    assert by_query.status == 200

    seen = stub.wait_requests(3)
    assert [request.header("x-goog-api-key") for request in seen] == [
        "AIzaSyCustomerA-canary",
        "AIzaSyCustomerB-canary",
        None,
    ]
    assert seen[2].target == "/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaSyCustomerC%2Bcanary"
    records = providers_proxy.wait_records(3)
    assert [record["user_id"] for record in records] == [
        "key:" + hashlib.sha256(key).hexdigest()[:12]
        for key in (b"AIzaSyCustomerA-canary", b"AIzaSyCustomerB-canary", b"AIzaSyCustomerC+canary")
    ]
    for where in (providers_proxy.records_path.read_text(), providers_proxy.log()):
        assert "Customer" not in where


def test_a_gemini_call_with_a_key_in_both_header_and_query_is_refused(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # Either one could be the key Google spends: the record could not say which.
    response = providers_proxy.request(
        "POST",
        "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaSyCustomerA-canary",
        json.dumps(ASK).encode(),
        {**JSON_TYPE, "x-goog-api-key": "AIzaSyCustomerB-canary"},
    )

    assert response.status == 400
    assert response.json()["error"]["code"] == "duplicate_api_key"
    assert stub.requests == [] and providers_proxy.records() == []
    assert "Customer" not in providers_proxy.log()


TEAM_KEY = "mp-team-canary-4c1d"


@pytest.fixture
def gated_proxy(launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub) -> RunningProxy:
    """All providers behind auth.keys (team-a's key is TEAM_KEY), the gemini one with its own api_key."""
    providers = all_providers(stub)
    providers["gemini"]["api_key"] = "${GEMINI_UPSTREAM_KEY}"
    config = make_config(providers=providers, auth={"keys": [{"name": "team-a", "key": "${TEAM_KEY}"}]})
    return launch(config, env={"GEMINI_UPSTREAM_KEY": PROVIDER_KEY, "TEAM_KEY": TEAM_KEY})


def assert_never_seen(proxy: RunningProxy, stub: UpstreamStub, *secrets: str) -> None:
    """None of `secrets` in any request the stub received, in a record or in the log."""
    seen = [f"{request.target} {request.headers} {request.body!r}" for request in stub.requests]
    for secret in secrets:
        assert all(secret not in request for request in seen)
        assert secret not in proxy.records_path.read_text()
        assert secret not in proxy.log()


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        (f"key={TEAM_KEY}&alt=sse", "alt=sse"),
        (f"alt=sse&key={TEAM_KEY}", "alt=sse"),
        (f"alt=sse&%6Bey={TEAM_KEY}&trace=a%2Fb&&x", "alt=sse&trace=a%2Fb&&x"),
    ],
)
def test_behind_auth_keys_a_proxy_key_in_the_query_lets_the_caller_in_and_never_reaches_google(
    gated_proxy: RunningProxy, stub: UpstreamStub, query: str, forwarded: str
) -> None:
    stub.push(Stream(events_of(STREAM, b"\r\n\r\n")))
    path = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    response = gated_proxy.request("POST", f"{path}?{query}", json.dumps(ASK).encode(), JSON_TYPE)

    assert response.status == 200
    seen = only(stub.requests)
    assert seen.target == f"/v1beta/models/gemini-2.5-flash:streamGenerateContent?{forwarded}"
    assert [value for name, value in seen.headers if name.lower() == "x-goog-api-key"] == [PROVIDER_KEY]
    record = only(gated_proxy.wait_records(1))
    assert (record["user_id"], record["endpoint"], record["is_streaming"]) == ("team-a", path, True)
    assert_never_seen(gated_proxy, stub, TEAM_KEY)


def test_behind_auth_keys_a_wrong_key_in_the_query_gets_401(
    gated_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    path = "/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=mp-wrong-canary&alt=json"
    response = gated_proxy.request("POST", path, json.dumps(ASK).encode(), JSON_TYPE)

    assert response.status == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert b"canary" not in response.body
    assert stub.requests == [] and gated_proxy.records() == []
    assert_never_seen(gated_proxy, stub, "mp-wrong-canary")


@pytest.mark.parametrize("header", ["x-goog-api-key", "authorization"])
def test_behind_auth_keys_a_query_key_that_differs_from_the_header_key_gets_400(
    gated_proxy: RunningProxy, stub: UpstreamStub, header: str
) -> None:
    path = f"/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={TEAM_KEY}"
    other = "mp-other-canary"
    response = gated_proxy.request(
        "POST",
        path,
        json.dumps(ASK).encode(),
        {**JSON_TYPE, header: f"Bearer {other}" if header == "authorization" else other},
    )

    assert response.status == 400
    assert response.json()["error"]["code"] == "duplicate_api_key"
    assert b"canary" not in response.body
    assert stub.requests == [] and gated_proxy.records() == []
    assert_never_seen(gated_proxy, stub, TEAM_KEY, other)


def test_behind_auth_keys_the_same_key_in_header_and_query_is_one_key(
    gated_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=GENERATE))
    path = "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    headers = {**JSON_TYPE, "x-goog-api-key": TEAM_KEY}
    response = gated_proxy.request("POST", f"{path}?key={TEAM_KEY}", json.dumps(ASK).encode(), headers)

    assert response.status == 200
    assert only(stub.requests).target == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert only(gated_proxy.wait_records(1))["user_id"] == "team-a"
    assert_never_seen(gated_proxy, stub, TEAM_KEY)


def test_behind_auth_keys_a_key_parameter_never_reaches_google_and_is_left_to_other_providers(
    gated_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # On /v1/ the provider is known only from the body: `key` is no proxy key there (the header is),
    # but one bound for Google would be read by Google as a key to spend.
    stub.always(Reply(body=fixture("gemini_openai_chat.json")))
    headers = {"authorization": f"Bearer {TEAM_KEY}"}
    for model in ("gemini-2.5-flash", "gpt-5"):
        chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        response = gated_proxy.post_json("/v1/chat/completions?key=sk-query-canary&n=1", chat, headers)
        assert response.status == 200

    assert [request.target for request in stub.wait_requests(2)] == [
        "/v1beta/openai/chat/completions?n=1",
        "/v1/chat/completions?key=sk-query-canary&n=1",
    ]
    assert [record["user_id"] for record in gated_proxy.wait_records(2)] == ["team-a", "team-a"]
    assert_never_seen(gated_proxy, stub, TEAM_KEY)


def test_the_openai_compatible_path_gets_the_provider_key_as_a_bearer_token(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=fixture("gemini_openai_chat.json")))
    with keyed_proxy.client(path="/gemini/v1") as client:
        client.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "Hi"}])

    seen = only(stub.requests)
    assert seen.header("authorization") == f"Bearer {PROVIDER_KEY}"
    assert seen.header("x-goog-api-key") is None


def test_a_client_key_in_the_query_gives_way_to_the_providers_own_key(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    canary = "AIzaSyClientCanary-51c0"
    stub.push(Reply(body=GENERATE))
    path = "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    response = keyed_proxy.request(
        "POST", f"{path}?key={canary}&alt=json", json.dumps(ASK).encode(), JSON_TYPE
    )

    assert response.status == 200
    seen = only(stub.requests)
    assert seen.target == "/v1beta/models/gemini-2.5-flash:generateContent?alt=json"
    assert [value for name, value in seen.headers if name.lower() == "x-goog-api-key"] == [PROVIDER_KEY]
    only(keyed_proxy.wait_records(1))
    assert_never_seen(keyed_proxy, stub, canary)


def test_in_pass_through_a_key_parameter_bound_for_google_on_v1_is_the_callers_key(
    providers_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    # On /v1/ the body's model chooses Google, which reads `key` as a key to spend beside the header's.
    stub.always(Reply(body=fixture("gemini_openai_chat.json")))
    chat = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}
    path = "/v1/chat/completions?key=AIzaSyQuery-canary"
    refused = providers_proxy.post_json(path, chat, {"authorization": "Bearer AIzaSyHeader-canary"})
    assert refused.status == 400
    assert refused.json()["error"]["code"] == "duplicate_api_key"
    assert stub.requests == []

    body = json.dumps(chat).encode()
    for headers in (JSON_TYPE, {**JSON_TYPE, "authorization": "Bearer AIzaSyQuery-canary"}):
        assert providers_proxy.request("POST", path, body, headers).status == 200
    assert [request.target for request in stub.wait_requests(2)] == [
        "/v1beta/openai/chat/completions?key=AIzaSyQuery-canary"
    ] * 2
    caller = "key:" + hashlib.sha256(b"AIzaSyQuery-canary").hexdigest()[:12]
    assert [record["user_id"] for record in providers_proxy.wait_records(2)] == [caller, caller]
    for where in (providers_proxy.records_path.read_text(), providers_proxy.log()):
        assert "canary" not in where
