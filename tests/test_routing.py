from decimal import Decimal

import pytest

from proxy.config import Price, Provider
from proxy.routing import RouteError, Routes

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
    assert (target.rest, target.metered) == ("chat/completions", True)
    assert ROUTES.for_path("/openai/v1/completions").metered
    files = ROUTES.for_path("/openai/v1/files/file-abc/content")
    assert (files.rest, files.metered) == ("files/file-abc/content", False)


def test_model_routes() -> None:
    target = ROUTES.for_path("/v1/chat/completions")
    assert target.provider is None and target.metered
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
        ("gpt-5-unknown", 404, "'gpt-5-unknown'"),
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
