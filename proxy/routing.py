"""Which provider serves a call, and where upstream it goes: from the path, else from the model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config import Provider

# Paths whose responses carry token usage; every other path is forwarded and recorded without it.
METERED_PATHS = frozenset({"chat/completions", "completions"})
# Encoded dots, slashes, backslashes and percent signs could smuggle a "../" past the check below.
_SUSPICIOUS = re.compile(r"%(?:2e|2f|5c|25)|\\", re.IGNORECASE)


class RouteError(Exception):
    """A request that no provider can take; status and code say why, for an OpenAI-shaped error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class PathTarget:
    provider: Provider | None  # None: choose it from the body's model
    rest: str  # the path after /v1/, as the client encoded it
    metered: bool


class Routes:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = providers
        self._serving: dict[str, list[Provider]] = {}
        for provider in providers.values():
            for model in provider.models:
                self._serving.setdefault(model, []).append(provider)

    def for_path(self, raw_path: str) -> PathTarget:
        """Resolve /v1/{rest} or /{provider}/v1/{rest}; refuse paths that could leave base_url."""
        if _SUSPICIOUS.search(raw_path):
            raise RouteError(
                400, "invalid_path", f"path {raw_path!r} has encoded dots, slashes or backslashes"
            )
        segments = raw_path.split("/")
        if any(segment in ("", ".", "..") for segment in segments[1:-1]) or segments[-1] in (".", ".."):
            raise RouteError(400, "invalid_path", f"path {raw_path!r} has empty, '.' or '..' segments")
        if len(segments) >= 3 and segments[1] == "v1":
            rest = "/".join(segments[2:])
            return PathTarget(None, rest, rest in METERED_PATHS)
        if len(segments) >= 4 and segments[2] == "v1":
            provider = self.providers.get(segments[1])
            if provider is None:
                known = ", ".join(self.providers)
                raise RouteError(
                    404, "unknown_provider", f"no provider {segments[1]!r} is configured; known: {known}"
                )
            rest = "/".join(segments[3:])
            return PathTarget(provider, rest, rest in METERED_PATHS)
        raise RouteError(404, "not_found", f"no route for {raw_path!r}; call /v1/... or /{{provider}}/v1/...")

    def for_model(self, model: str) -> tuple[Provider, str]:
        """The provider of `provider/model` or of a model name configured under exactly one provider."""
        prefix, slash, name = model.partition("/")
        if slash and prefix in self.providers and name:
            return self.providers[prefix], name
        serving = self._serving.get(model, [])
        if len(serving) == 1:
            return serving[0], model
        if serving:
            names = ", ".join(f"{provider.name}/{model}" for provider in serving)
            raise RouteError(
                400, "ambiguous_model", f"model {model!r} is served by several providers; use one of: {names}"
            )
        raise RouteError(404, "model_not_found", f"model {model!r} is not configured under any provider")

    def models(self, provider: Provider, shared_prefix: bool) -> list[str]:
        """A provider's model ids; with shared_prefix, a name other providers serve too is provider/model."""
        return [
            f"{provider.name}/{model}" if shared_prefix and len(self._serving[model]) > 1 else model
            for model in provider.models
        ]
