"""The request on its way upstream: its body parsed and edited, and the headers sent with it."""

import tracemalloc

import orjson
import pytest

from proxy.config import Provider, ProviderKind, Secret
from proxy.request import ask_for_usage, parse_request, rename_model, upstream_headers
from proxy.routing import RouteError
from proxy.usage import Api


def provider(kind: ProviderKind, api_key: str | None = None) -> Provider:
    key = Secret(api_key) if api_key else None
    return Provider(kind, f"https://{kind}.example", key, 600, "USD", True, kind, {})


CLIENT = [
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-client"),
    (b"x-api-key", b"sk-client"),
    (b"api-key", b"sk-client"),
    (b"host", b"127.0.0.1:9002"),
    (b"content-length", b"42"),
    (b"accept-encoding", b"gzip, br"),
    (b"x-forwarded-for", b"10.0.0.9"),
    (b"connection", b"keep-alive, x-trace"),
    (b"x-trace", b"hop"),
    (b"openai-beta", b"assistants=v2"),
]


def test_pass_through_forwards_the_clients_keys_and_end_to_end_headers_only() -> None:
    sent = upstream_headers(CLIENT, provider("openai"), "chat", passing=True)
    assert sent == [
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer sk-client"),
        (b"x-api-key", b"sk-client"),
        (b"api-key", b"sk-client"),
        (b"openai-beta", b"assistants=v2"),
        (b"accept-encoding", b"identity"),
    ]


def test_a_key_header_the_connection_header_names_is_not_forwarded_in_pass_through() -> None:
    headers = [(b"authorization", b"Bearer sk-client"), (b"connection", b"Authorization")]
    assert upstream_headers(headers, provider("openai"), "chat", passing=True) == [
        (b"accept-encoding", b"identity")
    ]


@pytest.mark.parametrize(
    ("kind", "api", "header"),
    [
        ("openai", "chat", (b"authorization", b"Bearer sk-provider")),
        ("anthropic", "anthropic", (b"x-api-key", b"sk-provider")),
        ("anthropic", "chat", (b"authorization", b"Bearer sk-provider")),  # its OpenAI-compatible path
        ("gemini", "gemini", (b"x-goog-api-key", b"sk-provider")),
        ("gemini", "chat", (b"authorization", b"Bearer sk-provider")),
    ],
)
@pytest.mark.parametrize("passing", [True, False])
def test_a_provider_key_replaces_every_client_key(
    kind: ProviderKind, api: Api, header: tuple[bytes, bytes], passing: bool
) -> None:
    sent = upstream_headers(CLIENT, provider(kind, "sk-provider"), api, passing=passing)
    assert sent == [
        (b"content-type", b"application/json"),
        (b"openai-beta", b"assistants=v2"),
        header,
        (b"accept-encoding", b"identity"),
    ]


def test_behind_auth_keys_a_provider_without_its_own_key_gets_no_key_at_all() -> None:
    sent = upstream_headers(CLIENT, provider("openai"), "chat", passing=False)
    assert all(
        name not in (b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key") for name, _ in sent
    )


def test_usage_is_asked_for_without_touching_the_bytes_sent() -> None:
    body = b'  {"model": "gpt-4o",\n "stream": true, "messages": [{"role": "user", "content": "{x}"}]}'
    asked = ask_for_usage(body, orjson.loads(body))
    assert asked == (
        b'  {"stream_options":{"include_usage":true},"model": "gpt-4o",\n "stream": true, '
        b'"messages": [{"role": "user", "content": "{x}"}]}'
    )
    assert orjson.loads(asked) == {**orjson.loads(body), "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    ("options", "merged"),
    [
        ({"include_usage": False}, {"include_usage": True}),
        ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
        (None, {"include_usage": True}),
        # vLLM's usage on every chunk comes only with include_usage: the client asked for none.
        ({"continuous_usage_stats": True}, {"continuous_usage_stats": False, "include_usage": True}),
        (
            {"include_usage": False, "continuous_usage_stats": True},
            {"include_usage": True, "continuous_usage_stats": False},
        ),
    ],
)
def test_stream_options_sent_by_the_client_are_kept_with_usage_asked_for(
    options: object, merged: dict[str, bool]
) -> None:
    request = {"model": "gpt-4o", "stream": True, "stream_options": options}
    asked = orjson.loads(ask_for_usage(orjson.dumps(request), request))
    assert asked == {**request, "stream_options": merged}


def test_a_model_is_renamed_in_place_when_its_bytes_are_found_once() -> None:
    # The same words inside a string are escaped there: only the body's own model matches.
    body = (
        b'{"model" :  "openai/gpt-4o", '
        b'"messages": [{"role": "user", "content": "\\"model\\": \\"openai/gpt-4o\\""}]}'
    )
    renamed = {**orjson.loads(body), "model": "gpt-4o"}
    assert rename_model(body, renamed, "openai/gpt-4o") == body.replace(
        b'"model" :  "openai/gpt-4o"', b'"model" :  "gpt-4o"'
    )


def test_a_model_named_twice_in_the_body_is_renamed_by_writing_the_request_anew() -> None:
    body = b'{"model": "openai/gpt-4o", "metadata": {"model": "openai/gpt-4o"}}'
    renamed = {**orjson.loads(body), "model": "gpt-4o"}
    assert rename_model(body, renamed, "openai/gpt-4o") == orjson.dumps(renamed)


FORM_TYPE = b"multipart/form-data; boundary=xYz"
FORM = (
    b'--xYz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\x00\xff\r\n'
    b'--xYz\r\nContent-Disposition: form-data; name="model"\r\n\r\nopenai/gpt-4o-transcribe\r\n'
    b'--xYz\r\nContent-Disposition: form-data; name="stream"\r\n\r\ntrue\r\n--xYz--\r\n'
)


def test_a_required_form_body_gives_its_model_and_stream_fields() -> None:
    assert parse_request(FORM, required=True, content_type=FORM_TYPE) == {
        "model": "openai/gpt-4o-transcribe",
        "stream": True,
    }
    assert parse_request(FORM.replace(b"true", b"false"), True, FORM_TYPE)["stream"] is False
    # A form not metered is not read; a JSON body is JSON whatever its media type says.
    assert parse_request(FORM, required=False, content_type=FORM_TYPE) == {}
    assert parse_request(b'{"model": "m"}', required=True, content_type=b"application/json") == {"model": "m"}


def test_a_model_in_a_form_is_renamed_in_place() -> None:
    renamed = {"model": "gpt-4o-transcribe", "stream": True}
    assert rename_model(FORM, renamed, "openai/gpt-4o-transcribe", FORM_TYPE) == FORM.replace(
        b"openai/gpt-4o-transcribe", b"gpt-4o-transcribe"
    )


def test_a_long_model_name_is_renamed_leaving_nothing_behind() -> None:
    # A model name is the client's, up to the body limit: nothing made from it may outlive the call.
    model = "openai/" + "x" * (64 << 10)
    body = orjson.dumps({"model": model, "messages": []})
    renamed = {"model": model.removeprefix("openai/"), "messages": []}
    tracemalloc.start()
    try:
        assert rename_model(body, renamed, model) == orjson.dumps(renamed)
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert left < len(model)


def test_a_body_is_parsed_or_refused_only_where_it_must_be_json() -> None:
    assert parse_request(b'{"model": "gpt-4o"}', required=True) == {"model": "gpt-4o"}
    for body in (b"", b"not json", b"[1]", b'{"model": '):
        assert parse_request(body, required=False) == {}
    for body, message in (
        (b"not json", "the request body is not valid JSON"),
        (b"[1]", "the request body must be a JSON object"),
    ):
        with pytest.raises(RouteError, match=message) as refused:
            parse_request(body, required=True)
        assert (refused.value.status, refused.value.code) == (400, "invalid_json")
