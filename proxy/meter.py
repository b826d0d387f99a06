"""The metered route, a plain ASGI callable: request -> upstream -> bytes back as they come.

Accounting happens in `finally`, so a call is recorded exactly once however it ends: answered,
failed upstream, reset mid-stream, or left by its client (a disconnect watcher cancels the call and
closes the upstream connection at once, so the provider stops generating).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
import zlib
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from proxy.auth import Gate, client_token, key_id
from proxy.config import Config, Provider
from proxy.errors import error_body
from proxy.pricing import find_price, price_call
from proxy.records import CallError, CostRecord, RecordWriter, UsageSource
from proxy.routing import RouteError, Routes
from proxy.sse import SSEScanner
from proxy.upstream import Headers, Upstream, UpstreamError, UpstreamResponse, end_to_end
from proxy.usage import ResponseFacts, StreamFacts, Usage, estimate_usage, facts_from_body

log = logging.getLogger("meterproxy")

# Never sent upstream: Host and Content-Length are the upstream's; keys are set by policy below;
# forwarding headers from the client could be spoofed; identity encoding keeps bodies readable.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"accept-encoding",
        b"expect",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)
_NO_LENGTH = frozenset({b"content-length"})
_KEEP = frozenset[bytes]()
_MAX_PARSED_BODY = 64 << 20
_IDENTITY = (b"accept-encoding", b"identity")


class _ClientGone(Exception):
    """The client went away before the call reached the upstream."""


class Meter:
    def __init__(self, config: Config, routes: Routes) -> None:
        self.config = config
        self.routes = routes
        self.gate = Gate(config.auth_keys)
        self._warned_unpriced: set[tuple[str, str]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.time()
        started = time.perf_counter()
        proxy_id = os.urandom(12).hex()
        headers: Headers = scope["headers"]
        header = {name: value for name, value in headers}
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        try:
            target = self.routes.for_path(path)
            token = client_token(header.get(b"authorization"), header.get(b"x-api-key"))
            user = self.gate.caller(token) if self.gate.closed else key_id(token)
            if user is None:
                raise RouteError(
                    401, "invalid_api_key", "a valid proxy key is required (Authorization: Bearer ...)"
                )
            body = await self._read_body(receive, header.get(b"content-length"))
            request: dict[str, Any] = {}
            if target.metered or target.provider is None or body[:1] == b"{":
                request = self._parse_request(body, target.metered or target.provider is None)
            model = request.get("model") if isinstance(request.get("model"), str) else None
            provider = target.provider
            upstream_model = model
            if provider is None:
                if model is None:
                    raise RouteError(400, "missing_model", "the body has no 'model'; name the model to call")
                provider, upstream_model = self.routes.for_model(model)
                if upstream_model != model:
                    body = _rename_model(body, request, model, upstream_model)
        except RouteError as exc:
            log.warning("refused %s %s: %d %s", scope["method"], scope["path"], exc.status, exc)
            await _send_error(send, exc.status, exc.code, str(exc), proxy_id)
            return
        except _ClientGone:
            log.info("client left before sending its whole request: %s %s", scope["method"], scope["path"])
            return

        stream = request.get("stream") is True
        strip = False
        if target.metered and stream and provider.stream_usage:
            options = request.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body = _ask_for_usage(body, request)
                strip = True

        call = _Call(proxy_id, arrived, started)
        query = scope.get("query_string")
        url = f"{provider.base_url}/{target.rest}" + (f"?{query.decode('latin-1')}" if query else "")
        watcher = asyncio.ensure_future(receive())
        task = asyncio.current_task()
        watcher.add_done_callback(lambda _: call.client_left(task))
        try:
            await self._forward(
                scope, send, call, provider, url, self._upstream_headers(headers, provider), body, strip
            )
        except asyncio.CancelledError:
            if not call.gone or task is None:
                raise
            task.uncancel()
        finally:
            call.finished = True
            watcher.cancel()
            if call.response is not None:
                call.response.close()
            if self.config.cost_tracking:
                writer: RecordWriter = scope["state"]["writer"]
                writer.append(
                    self._record(scope, call, provider, upstream_model, stream, user, target.metered, request)
                )

    async def _read_body(self, receive: Receive, length: bytes | None) -> bytes:
        limit = self.config.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise RouteError(
                413, "request_too_large", f"the body is over server.max_body_mb ({limit >> 20} MB)"
            )
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            part: bytes = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise RouteError(
                    413, "request_too_large", f"the body is over server.max_body_mb ({limit >> 20} MB)"
                )
            parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def _parse_request(body: bytes, required: bool) -> dict[str, Any]:
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

    def _upstream_headers(self, headers: Headers, provider: Provider) -> Headers:
        forwarded = end_to_end(headers, _NOT_FORWARDED)
        if provider.api_key is not None:
            key = provider.api_key.reveal().encode("latin-1")
            if provider.kind == "anthropic":
                forwarded.append((b"x-api-key", key))
            else:
                forwarded.append((b"authorization", b"Bearer " + key))
        elif not self.gate.closed:
            forwarded.extend(
                (name, value) for name, value in headers if name in (b"authorization", b"x-api-key")
            )
        forwarded.append(_IDENTITY)
        return forwarded

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        call: _Call,
        provider: Provider,
        url: str,
        headers: Headers,
        body: bytes,
        strip: bool,
    ) -> None:
        upstream: Upstream = scope["state"]["upstream"]
        try:
            response = call.response = await upstream.send(
                scope["method"], url, headers, body, provider.timeout
            )
        except UpstreamError as exc:
            log.warning("%s %s -> %s: %s", scope["method"], scope["path"], provider.name, exc)
            call.error, call.status = exc.error, exc.status
            await _send_error(send, exc.status, exc.error, str(exc), call.proxy_id)
            return
        call.status = response.status
        sent_headers = end_to_end(response.headers, _NO_LENGTH if strip else _KEEP)
        sent_headers.append((b"x-meterproxy-request-id", call.proxy_id.encode()))
        content_type = b""
        length: int | None = None
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-type":
                content_type = value
            elif lowered == b"content-length" and value.isdigit():
                length = int(value)
            elif lowered == b"content-encoding":
                call.response_encoding = value.lower()
        await send({"type": "http.response.start", "status": response.status, "headers": sent_headers})
        try:
            if content_type.startswith(b"text/event-stream"):
                await self._relay_stream(send, call, response, strip)
            else:
                await self._relay_body(send, call, response, length)
        except UpstreamError as exc:
            # The response stays incomplete: the client sees its stream cut, never a fake end.
            log.warning("%s %s -> %s: %s", scope["method"], scope["path"], provider.name, exc)
            call.error = exc.error

    async def _relay_stream(self, send: Send, call: _Call, response: UpstreamResponse, strip: bool) -> None:
        scanner = SSEScanner()
        facts = call.facts = StreamFacts()
        held = b""  # with strip: bytes of an event not yet whole, kept until we know whether to drop it
        held_at = 0  # the stream offset of held[0]
        while True:
            chunk = await response.read()
            if call.ttfb is None:
                call.ttfb = time.perf_counter()
            events = scanner.feed(chunk) if chunk else scanner.finish()
            if strip:
                held += chunk
                release = scanner.boundary if chunk else held_at + len(held)
                out = held[: release - held_at]
                dropped = [event for event in events if facts.observe(event.data)]
                for event in reversed(dropped):  # the usage-only chunk the client did not ask for
                    out = out[: event.start - held_at] + out[event.end - held_at :]
                held = held[release - held_at :]
                held_at = release
            else:
                for event in events:
                    facts.observe(event.data)
                out = chunk
            if not chunk:
                call.finished = True
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})

    async def _relay_body(
        self, send: Send, call: _Call, response: UpstreamResponse, length: int | None
    ) -> None:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await response.read()
            if call.ttfb is None:
                call.ttfb = time.perf_counter()
            size += len(chunk)
            if size <= _MAX_PARSED_BODY:
                parts.append(chunk)
            last = not chunk or size == length
            if last:
                call.body = parts if size <= _MAX_PARSED_BODY else None
                call.finished = True
                if chunk:  # the whole body is in: hand the connection back without another read
                    response.release()
                    call.response = None
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                return

    def _record(
        self,
        scope: Scope,
        call: _Call,
        provider: Provider,
        model: str | None,
        stream: bool,
        user: str,
        metered: bool,
        request: dict[str, Any],
    ) -> CostRecord:
        error: CallError | None = "client_disconnected" if call.gone else call.error
        status = 499 if call.gone else call.status
        facts = call.facts
        if facts is None and call.body is not None and metered and 200 <= status < 300:
            facts = facts_from_body(_decoded(b"".join(call.body), call.response_encoding))
            if facts is None and error is None:
                error = "upstream_bad_response"
        usage: Usage | None = facts.usage if facts is not None else None
        source: UsageSource = "provider" if usage is not None else "none"
        if isinstance(facts, StreamFacts):
            if facts.events == 0 and metered and 200 <= call.status < 300 and error is None:
                error = "upstream_bad_response"
            elif usage is None and error is not None and facts.events:
                usage, source = estimate_usage(request, facts.events), "estimated"
            if facts.malformed:
                log.warning("%d malformed data lines in the stream of %s", facts.malformed, call.proxy_id)
        response_model = facts.model if facts is not None else None
        price = find_price(provider, model, response_model) if model else None
        if price is None and model and metered and (provider.name, model) not in self._warned_unpriced:
            self._warned_unpriced.add((provider.name, model))
            log.warning(
                "no price for model %r of provider %r: its calls are recorded unpriced "
                "(add providers.%s.models.%s.pricing to the config)",
                model,
                provider.name,
                provider.name,
                model,
            )
        input_cost = output_cost = total_cost = None
        if price is not None and usage is not None:
            cost = price_call(usage, price)
            input_cost, output_cost, total_cost = cost.input_cost, cost.output_cost, cost.total_cost
        elif price is not None and call.status >= 400 and call.error is None and not call.gone:
            input_cost = output_cost = total_cost = 0.0  # the provider refused the call: nothing is billed
        usage = usage or Usage(0, 0, 0)
        client = scope.get("client")
        header = {
            name: value for name, value in scope["headers"] if name in (b"x-session-id", b"x-task-type")
        }
        now = time.perf_counter()
        return {
            "timestamp": _iso(call.arrived),
            "request_id": (facts.response_id if facts is not None else None) or call.proxy_id,
            "user_id": user,
            "ip_address": client[0] if client else None,
            "provider": provider.name,
            "model": model,
            "endpoint": scope["path"],
            "is_streaming": stream,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "input_cost": input_cost,
            "output_cost": output_cost,
            "total_cost": total_cost,
            "finish_reason": facts.finish_reason if facts is not None else None,
            "v": 1,
            "response_model": response_model,
            "cached_input_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "currency": provider.currency,
            "priced": price is not None,
            "usage_source": source,
            "status_code": status,
            "error": error,
            "duration_ms": round((now - call.started) * 1000, 3),
            "ttfb_ms": round((call.ttfb - call.started) * 1000, 3) if call.ttfb is not None else None,
            "proxy_request_id": call.proxy_id,
            "session_id": _text(header.get(b"x-session-id")),
            "task_type": _text(header.get(b"x-task-type")),
        }


class _Call:
    """What one call has seen so far; the record is built from it in `finally`."""

    __slots__ = (
        "proxy_id",
        "arrived",
        "started",
        "status",
        "error",
        "ttfb",
        "facts",
        "body",
        "response",
        "response_encoding",
        "gone",
        "finished",
    )

    def __init__(self, proxy_id: str, arrived: float, started: float) -> None:
        self.proxy_id = proxy_id
        self.arrived = arrived
        self.started = started
        self.status = 0
        self.error: CallError | None = None
        self.ttfb: float | None = None
        self.facts: ResponseFacts | None = None
        self.body: list[bytes] | None = None
        self.response: UpstreamResponse | None = None
        self.response_encoding = b""
        self.gone = False
        self.finished = False

    def client_left(self, task: asyncio.Task[Any] | None) -> None:
        if not self.finished and task is not None:
            self.gone = True
            task.cancel()


async def _send_error(send: Send, status: int, code: str, message: str, proxy_id: str) -> None:
    body = error_body(status, code, message)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-meterproxy-request-id", proxy_id.encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _ask_for_usage(body: bytes, request: dict[str, Any]) -> bytes:
    """Add stream_options.include_usage; the bytes stay as sent unless stream_options was already there."""
    if "stream_options" not in request:
        brace = body.index(b"{")
        return body[: brace + 1] + b'"stream_options":{"include_usage":true},' + body[brace + 1 :]
    options = request["stream_options"]
    merged = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return orjson.dumps({**request, "stream_options": merged})


def _rename_model(body: bytes, request: dict[str, Any], model: str, upstream_model: str) -> bytes:
    """Send `provider/model` upstream as plain `model`, changing only those bytes where they can be found."""
    pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(orjson.dumps(model)))
    if len(pattern.findall(body)) == 1:
        return pattern.sub(lambda match: match.group(1) + orjson.dumps(upstream_model), body)
    return orjson.dumps({**request, "model": upstream_model})


def _decoded(body: bytes, encoding: bytes) -> bytes:
    if encoding in (b"gzip", b"deflate"):
        try:
            return zlib.decompress(body, wbits=47)  # 47: gzip or zlib header, detected
        except zlib.error:
            return body
    return body


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _iso(moment: float) -> str:
    """UTC ISO-8601 with microseconds and Z; the formatted second is reused across its calls."""
    seconds = int(moment)
    micros = round((moment - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return f"{_second(seconds)}.{micros:06d}Z"


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None
