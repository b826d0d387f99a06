"""The client's request on its way upstream: its body read within the limits, parsed (a JSON object, or
a multipart form's text fields), and edited where the proxy must (usage asked for, a model renamed),
and the headers sent with it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from starlette.types import Receive

from proxy.auth import KEY_HEADERS
from proxy.config import Provider
from proxy.deadlines import Deadlines
from proxy.form import boundary_of, text_fields
from proxy.routing import RouteError
from proxy.upstream import Headers, end_to_end
from proxy.usage import Api

# Never sent upstream: Host and Content-Length are the upstream's; keys are set by policy below;
# forwarding headers from the client could be spoofed; identity encoding keeps bodies readable.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"x-goog-api-key",
        b"api-key",
        b"accept-encoding",
        b"expect",
        b"forwarded",
        b"x-real-ip",
        # A method override turns a request the proxy forwards as is (a GET) into a call the provider
        # runs and bills (Google's APIs honour it), past the meter.
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
# Every X-Forwarded-* header, not only -For, -Host and -Proto: front servers also build URLs and
# trust from -Port, -Prefix, -Server and more, and a client could spoof any of them.
_FORWARDING = b"x-forwarded-"
_NOT_FORWARDED_PASSING_KEYS = _NOT_FORWARDED - frozenset(KEY_HEADERS)
_IDENTITY = (b"accept-encoding", b"identity")
_OPENAI_SHAPED = frozenset({"chat", "responses", "embeddings", "images", "transcriptions"})
_FORM_FIELDS = frozenset({b"model", b"stream"})
_KEY_HEADER = {"openai": b"authorization", "anthropic": b"x-api-key", "gemini": b"x-goog-api-key"}
_MODEL_KEY = re.compile(rb'"model"\s*:\s*')


class ClientGone(Exception):
    """The client went away before the call reached the upstream."""


class BodyUnread(RouteError):
    """Refused before the body was read whole (too large, or too slow): the answer closes the connection,
    so the rest of the body is never read (uvicorn would otherwise read and discard all of it to keep the
    connection alive)."""


async def read_body(
    receive: Receive, length: bytes | None, limit: int, deadlines: Deadlines, task: asyncio.Task[Any]
) -> bytes:
    """The whole body, at most `limit` bytes, arrived within the deadlines' time."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    try:
        # A slow-loris body, or a Content-Length larger than the body sent, must not hold its
        # connection for ever (issue 6, case 11).
        with deadlines.watch(task):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                part: bytes = message.get("body", b"")
                size += len(part)
                if size > limit:
                    raise _too_large(limit)
                parts.append(part)
                if not message.get("more_body", False):
                    return parts[0] if len(parts) == 1 else b"".join(parts)
    except TimeoutError:
        raise BodyUnread(
            408,
            "body_timeout",
            f"the body did not arrive whole within server.body_timeout_seconds ({deadlines.seconds:g} s)",
        ) from None


def _too_large(limit: int) -> BodyUnread:
    return BodyUnread(413, "request_too_large", f"the body is over server.max_body_mb ({limit >> 20} MB)")


def parse_request(body: bytes, required: bool, content_type: bytes | None = None) -> dict[str, Any]:
    """The body's JSON object, or when required the model and stream fields of a multipart form (the
    audio and image-edit endpoints' bodies); when not required, {} for a body that is not JSON."""
    if required and (boundary := boundary_of(content_type)) is not None:
        fields = text_fields(body, boundary, _FORM_FIELDS)
        form: dict[str, Any] = {}
        if b"model" in fields:
            form["model"] = fields[b"model"].value.decode("utf-8", "replace")
        if b"stream" in fields:
            form["stream"] = fields[b"stream"].value.strip().lower() == b"true"
        return form
    if not required and body[:1] != b"{":
        return {}
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        if not required:
            return {}
        raise RouteError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(request, dict):
        if not required:
            return {}
        raise RouteError(400, "invalid_json", "the request body must be a JSON object")
    return request


def forwards_client_keys(provider: Provider, *, passing: bool) -> bool:
    """Whether the client's own keys go on to the provider: in pass-through (`passing`, no auth.keys) to
    a provider without its own api_key."""
    return passing and provider.api_key is None


def upstream_headers(headers: Headers, provider: Provider, api: Api | None, *, passing: bool) -> Headers:
    """The client's end-to-end headers with the key the provider is to get: the provider's own, or in
    pass-through (`passing`, no auth.keys) the client's."""
    if forwards_client_keys(provider, passing=passing):
        # Pass-through: the client's key goes on like its other end-to-end headers, so not when
        # the client's Connection header names it hop-by-hop (RFC 9110 section 7.6.1).
        forwarded = end_to_end(headers, _NOT_FORWARDED_PASSING_KEYS, _FORWARDING)
    else:
        forwarded = end_to_end(headers, _NOT_FORWARDED, _FORWARDING)
    if provider.api_key is not None:
        key = provider.api_key.reveal().encode("latin-1")
        # OpenAI-shaped endpoints (Gemini's and Anthropic's compatible ones too) take a bearer token.
        name = _KEY_HEADER["openai" if api in _OPENAI_SHAPED else provider.kind]
        forwarded.append((name, b"Bearer " + key if name == b"authorization" else key))
    forwarded.append(_IDENTITY)
    return forwarded


def ask_for_usage(body: bytes, request: dict[str, Any]) -> bytes:
    """Add stream_options.include_usage; the bytes stay as sent unless stream_options was already there.
    A client's continuous_usage_stats is turned off with it: vLLM (and servers built like it) sends usage
    on every chunk only when include_usage is asked for too, so without the proxy the client asking for it
    alone gets no usage at all, and through it would get usage on every chunk."""
    if "stream_options" not in request:
        brace = body.index(b"{")
        return body[: brace + 1] + b'"stream_options":{"include_usage":true},' + body[brace + 1 :]
    options = request["stream_options"]
    merged = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    if merged.get("continuous_usage_stats"):
        merged["continuous_usage_stats"] = False
    return orjson.dumps({**request, "stream_options": merged})


def rename_model(
    body: bytes, renamed: dict[str, Any], model: str, content_type: bytes | None = None
) -> bytes:
    """The body of `renamed` (the request with its plain model) where `body` says `model`: only those
    bytes changed where they can be found (in a form, the model field's value)."""
    if (boundary := boundary_of(content_type)) is not None:
        field = text_fields(body, boundary, _FORM_FIELDS)[b"model"]
        plain: str = renamed["model"]
        return body[: field.start] + plain.encode() + body[field.end :]
    # The model's bytes are compared after each "model" key, never compiled into a pattern: the name is
    # the client's, and compiling a long one held the event loop for seconds (10 s for 4 MB), its
    # pattern then kept in re's cache.
    named = orjson.dumps(model)
    found = [key.end() for key in _MODEL_KEY.finditer(body) if body.startswith(named, key.end())]
    if len(found) == 1:
        return body[: found[0]] + orjson.dumps(renamed["model"]) + body[found[0] + len(named) :]
    return orjson.dumps(renamed)


def header_text(value: bytes | None) -> str | None:
    """A request header's value as text for the record, or None when absent or empty."""
    return value.decode("utf-8", "replace") if value else None
