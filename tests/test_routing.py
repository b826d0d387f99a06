from decimal import Decimal

import pytest

from proxy.config import Price, Provider
from proxy.routing import RouteError, Routes, api_of

PRICE = Price(Decimal(1), Decimal(2), Decimal(1), Decimal(1))


def make(name: str, *models: str) -> Provider:
    return Provider(
        name, f"https://{name}.example/v1", None, 600, "USD", True, "openai", {m: PRICE for m in models}
    )


ROUTES = Routes(
    {
        "openai": make("openai", "gpt-4o", "shared"),
        "deepseek": make("deepseek", "deepseek-chat", "shared"),
        "openrouter": make("openrouter", "openai/gpt-4o-mini"),
    }
)


def test_provider_routes() -> None:
    target = ROUTES.for_path("/deepseek/v1/chat/completions")
    assert target.provider is not None and target.provider.name == "deepseek"
    assert (target.base, target.rest, target.api) == (
        "https://deepseek.example/v1",
        "chat/completions",
        "chat",
    )
    assert ROUTES.for_path("/openai/v1/completions").api == "chat"
    files = ROUTES.for_path("/openai/v1/files/file-abc/content")
    assert (files.rest, files.api) == ("files/file-abc/content", None)


def test_model_routes() -> None:
    target = ROUTES.for_path("/v1/chat/completions")
    assert target.provider is None and target.api == "chat"
    assert ROUTES.for_model("gpt-4o")[0].name == "openai"
    assert ROUTES.for_model("deepseek/shared") == (ROUTES.providers["deepseek"], "shared")
    assert ROUTES.for_model("openrouter/openai/gpt-4o-mini") == (
        ROUTES.providers["openrouter"],
        "openai/gpt-4o-mini",
    )
    assert ROUTES.for_model("openai/not-configured") == (ROUTES.providers["openai"], "not-configured")


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("shared", 400, "openai/shared, deepseek/shared"),
        (
            "gpt-5-unknown",
            404,
            "'gpt-5-unknown' is not configured under any provider; call it as provider/gpt-5-unknown",
        ),
        ("nowhere/gpt-4o", 404, "'nowhere/gpt-4o'"),
    ],
)
def test_model_errors_name_the_model(model: str, status: int, words: str) -> None:
    with pytest.raises(RouteError) as raised:
        ROUTES.for_model(model)
    assert raised.value.status == status
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/openai/v1/../admin", 400),
        ("/openai/v1/%2e%2e/admin", 400),
        ("/openai/v1/%252e%252e/admin", 400),
        ("/openai/v1//chat/completions", 400),
        ("/openai/v1/chat\\completions", 400),
        ("/openai/v1/%2Fetc", 400),
        ("/openai/v1/.", 400),
        ("/openai/v1/a/..;/admin", 400),
        ("/openai/v1/chat/completions%3bx", 400),
        ("/unknown/v1/chat/completions", 404),
        ("/admin", 404),
        ("/v1", 404),
    ],
)
def test_paths_that_could_leave_base_url_are_refused(path: str, status: int) -> None:
    with pytest.raises(RouteError) as raised:
        ROUTES.for_path(path)
    assert raised.value.status == status


def test_models_listing_prefixes_shared_names() -> None:
    assert ROUTES.models(ROUTES.providers["openai"], shared_prefix=True) == ["gpt-4o", "openai/shared"]
    assert ROUTES.models(ROUTES.providers["openai"], shared_prefix=False) == ["gpt-4o", "shared"]


def test_models_listing_prefixes_a_name_that_would_reach_another_provider() -> None:
    routes = Routes({**ROUTES.providers, "meta": make("meta", "llama-4"), "hub": make("hub", "meta/x")})
    assert routes.models(routes.providers["openrouter"], shared_prefix=True) == [
        "openrouter/openai/gpt-4o-mini"
    ]
    assert routes.models(routes.providers["hub"], shared_prefix=True) == ["hub/meta/x"]
    assert routes.models(routes.providers["openrouter"], shared_prefix=False) == ["openai/gpt-4o-mini"]
    for provider in routes.providers.values():
        for model in routes.models(provider, shared_prefix=True):
            assert routes.for_model(model)[0] is provider, model


def test_endpoints_name_the_api_whose_usage_they_carry() -> None:
    assert api_of("chat/completions") == ("chat", None)
    assert api_of("openai/chat/completions") == ("chat", None)
    assert api_of("responses") == ("responses", None)
    assert api_of("responses/resp_123") == (None, None)
    assert api_of("responses/compact") == ("responses", None)  # a billed run of the model
    assert api_of("responses/resp_123/cancel") == (None, None)
    assert api_of("responses/input_tokens") == (None, None)
    assert api_of("embeddings") == ("embeddings", None)
    assert api_of("images/generations") == ("images", None)
    assert api_of("images/variations") == (None, None)
    assert api_of("messages") == ("anthropic", None)
    assert api_of("threads/t1/messages") == (None, None)
    assert api_of("models/gemini-2.5-flash:generateContent") == ("gemini", "gemini-2.5-flash")
    assert api_of("models/gemini-2.5-pro:streamGenerateContent") == ("gemini", "gemini-2.5-pro")
    assert api_of("models/gemini-2.5-pro:countTokens") == (None, None)
    assert api_of("files") == (None, None)
    assert api_of("chat/completions/") == ("chat", None)
    assert api_of("messages/") == ("anthropic", None)
    assert api_of("chat/c%6Fmpletions") == ("chat", None)
    assert api_of("Chat/Completions") == ("chat", None)
    assert api_of("EMBEDDINGS/") == ("embeddings", None)
    assert api_of("Messages") == ("anthropic", None)
    assert api_of("models/gemini-2.5-flash%3AgenerateContent") == ("gemini", "gemini-2.5-flash")
    assert api_of("threads/t1/Messages") == (None, None)


def test_a_gemini_path_says_whether_it_streams() -> None:
    routes = Routes({"gemini": make("gemini", "gemini-2.5-flash")})
    streamed = routes.for_path("/gemini/v1/models/gemini-2.5-flash%3AstreamGenerateContent/")
    whole = routes.for_path("/gemini/v1/models/gemini-2.5-flash:generateContent")
    assert (streamed.api, streamed.path_model, streamed.path_streams) == ("gemini", "gemini-2.5-flash", True)
    assert (whole.api, whole.path_streams) == ("gemini", False)


def test_a_version_segment_cuts_base_url_after_it() -> None:
    gemini = Provider("gemini", "https://g.example/v1beta/openai", None, 600, "USD", True, "gemini", {})
    routes = Routes({"gemini": gemini})
    native = routes.for_path("/gemini/v1beta/models/gemini-2.5-flash:generateContent")
    assert (native.base, native.api, native.path_model) == (
        "https://g.example/v1beta",
        "gemini",
        "gemini-2.5-flash",
    )
    compatible = routes.for_path("/gemini/v1/chat/completions")
    assert (compatible.base, compatible.rest) == ("https://g.example/v1beta/openai", "chat/completions")
    with pytest.raises(RouteError) as raised:
        routes.for_path("/gemini/v2/models")
    assert raised.value.status == 404


def test_a_path_without_its_version_says_where_a_client_points() -> None:
    # OpenAI(base_url="http://127.0.0.1:9002/openai"), without /v1, calls /openai/chat/completions.
    openai = Provider("openai", "https://api.openai.com/v1", None, 600, "USD", True, "openai", {})

    with pytest.raises(RouteError) as raised:
        Routes({"openai": openai}).for_path("/openai/chat/completions")

    assert (raised.value.status, str(raised.value)) == (
        404,
        "'chat' is neither v1 nor a segment of providers.openai.base_url; "
        "a client's base_url for this provider ends in /openai/v1",
    )
