"""Which provider serves a call, and where upstream it goes: from the path, else from the model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.config import Provider
from proxy.usage import Api

# Encoded dots, slashes, backslashes and percent signs could smuggle a "../" past the check below.
_SUSPICIOUS = re.compile(r"%(?:2e|2f|5c|25)|\\", re.IGNORECASE)
# A path parameter (";x", encoded or not): servers that strip it from a segment (Tomcat, Spring, Jetty)
# would read "chat/completions;x" as chat/completions, a call forwarded unmetered, and "..;" as "..".
_PARAMETER = re.compile(r";|%3b", re.IGNORECASE)


NAME_SHOWN = 200  # characters of a client's model name that a message, and so a log line, shows


def shortened(model: str) -> str:
    """A client's model name as a message shows it: its first NAME_SHOWN characters."""
    return model if len(model) <= NAME_SHOWN else model[:NAME_SHOWN] + "..."


class RouteError(Exception):
    """A request that no provider can take; status and code say why, for an OpenAI-shaped error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class PathTarget:
    provider: Provider | None  # None: choose it from the body's model
    base: str  # the upstream URL that "/" + rest is appended to ("" until the provider is known)
    rest: str  # the path after the version segment, as the client encoded it
    api: Api | None  # the API shape whose usage the response carries; None: not metered
    path_model: str | None  # the model named in the path (Gemini's models/{model}:generateContent)
    path_streams: bool  # the path asks for a stream (Gemini's :streamGenerateContent)


def api_of(rest: str) -> tuple[Api | None, str | None]:
    """The metered API a path calls, and the model it names (Gemini puts it in the path). A path the
    provider may read as a metered one calls that API, so that it is never a pass-through without usage:
    with a trailing slash, percent-encoded letters ("c%6Fmpletions") or in other case ("Chat/Completions",
    for providers whose routes ignore case)."""
    api, model, _ = _endpoint(rest)
    return api, model


def _endpoint(rest: str) -> tuple[Api | None, str | None, bool]:
    """api_of(rest), and whether the path asks for a stream (Gemini's :streamGenerateContent)."""
    rest = unquote(rest).removesuffix("/")
    lowered = rest.lower()
    if lowered == "messages":
        return "anthropic", None, False
    for suffix, api in _ENDPOINTS:
        if lowered == suffix or lowered.endswith("/" + suffix):
            return api, None, False
    head, _, model_call = rest.rpartition("models/")
    model, _, method = model_call.partition(":")
    if model and method in ("generateContent", "streamGenerateContent") and (not head or head.endswith("/")):
        return "gemini", model, method == "streamGenerateContent"
    return None, None, False


def _target(provider: Provider | None, base: str, rest: str) -> PathTarget:
    return PathTarget(provider, base, rest, *_endpoint(rest))


_KNOWN_PATHS = 1024  # resolved paths remembered: clients call the same few paths over and over

_ENDPOINTS: tuple[tuple[str, Api], ...] = (
    ("chat/completions", "chat"),
    ("completions", "chat"),
    ("responses", "responses"),
    # A compaction runs the model over a conversation and bills what its usage counts, as a response does.
    ("responses/compact", "responses"),
    ("embeddings", "embeddings"),
    ("images/generations", "images"),
    ("images/edits", "images"),
    ("audio/transcriptions", "transcriptions"),
)


class Routes:
    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = providers
        self._known: dict[str, PathTarget] = {}
        self._serving: dict[str, list[Provider]] = {}
        self._bases: dict[tuple[str, str], str] = {}
        for provider in providers.values():
            for model in provider.models:
                self._serving.setdefault(model, []).append(provider)
            # /{provider}/{version}/... goes to base_url cut after its segment named version; v1 is base_url.
            origin, _, path = provider.base_url.partition("://")
            host, _, base_path = path.partition("/")
            prefix = f"{origin}://{host}"
            for segment in base_path.split("/"):
                prefix += "/" + segment
                self._bases[(provider.name, segment)] = prefix
            self._bases[(provider.name, "v1")] = provider.base_url

    def for_path(self, raw_path: str) -> PathTarget:
        """Resolve /v1/{rest} or /{provider}/{version}/{rest}; refuse paths that could leave base_url."""
        target = self._known.get(raw_path)
        if target is None:
            target = self._resolve(raw_path)
            if len(self._known) < _KNOWN_PATHS:
                self._known[raw_path] = target
        return target

    def _resolve(self, raw_path: str) -> PathTarget:
        if _SUSPICIOUS.search(raw_path):
            raise RouteError(
                400, "invalid_path", f"path {raw_path!r} has encoded dots, slashes or backslashes"
            )
        if _PARAMETER.search(raw_path):
            raise RouteError(
                400, "invalid_path", f"path {raw_path!r} has a ';' parameter, which no provider's API takes"
            )
        segments = raw_path.split("/")
        if any(segment in ("", ".", "..") for segment in segments[1:-1]) or segments[-1] in (".", ".."):
            raise RouteError(400, "invalid_path", f"path {raw_path!r} has empty, '.' or '..' segments")
        if len(segments) >= 3 and segments[1] == "v1":
            rest = "/".join(segments[2:])
            return _target(None, "", rest)
        if len(segments) >= 4:
            provider = self.providers.get(segments[1])
            if provider is None:
                known = ", ".join(self.providers)
                raise RouteError(
                    404, "unknown_provider", f"no provider {segments[1]!r} is configured; known: {known}"
                )
            base = self._bases.get((provider.name, segments[2]))
            if base is None:
                raise RouteError(
                    404,
                    "unknown_version",
                    f"{segments[2]!r} is neither v1 nor a segment of providers.{provider.name}.base_url; "
                    f"a client's base_url for this provider ends in /{provider.name}/v1",
                )
            rest = "/".join(segments[3:])
            return _target(provider, base, rest)
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
        # The name is the client's, as long as its body allows, and this message is logged too.
        shown = shortened(model)
        raise RouteError(
            404,
            "model_not_found",
            f"model {shown!r} is not configured under any provider; call it as provider/{shown} "
            "(it is forwarded unpriced) or add it to that provider's models in the config",
        )

    def models(self, provider: Provider, shared_prefix: bool) -> list[str]:
        """A provider's model ids; with shared_prefix, the id for_model() takes to it: provider/model for a
        name other providers serve too, or one that starts like another call's `provider/`."""
        return [
            f"{provider.name}/{model}" if shared_prefix and not self._reaches(model) else model
            for model in provider.models
        ]

    def _reaches(self, model: str) -> bool:
        """Whether for_model(model) finds the one provider of this configured name, as it is."""
        # OpenRouter's `openai/gpt-4o-mini` would be read as the openai provider's gpt-4o-mini.
        prefix, slash, name = model.partition("/")
        return not (slash and prefix in self.providers and name) and len(self._serving[model]) == 1


def no_model(value: object) -> RouteError:
    """The 400 for a body whose `model` names no model: absent, empty, or not text (never echoed: a client's
    value reaches the server log through this message)."""
    if value is None:
        problem = "the body has no 'model'"
    elif value == "":
        problem = "the body's 'model' is empty"
    else:
        kind = _JSON_KINDS.get(type(value), "not text")
        problem = f"the body's 'model' is {kind}, not a model's name"
    return RouteError(400, "missing_model", f'{problem}; name the model to call, e.g. "model": "gpt-4o-mini"')


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}
