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
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from proxy import sse
from proxy.auth import (
    KEY_HEADERS,
    Gate,
    KeyConflict,
    client_token,
    key_id,
    query_key,
    repeated_key_header,
    without_query_key,
)
from proxy.calls import Call
from proxy.config import Config, Provider
from proxy.deadlines import Deadlines, Later
from proxy.errors import error_body
from proxy.records import RecordWriter
from proxy.relay import head, relay_body, relay_stream, relay_whole_body
from proxy.routing import RouteError, Routes
from proxy.upstream import Headers, Upstream, UpstreamError, end_to_end
from proxy.usage import Api, StreamFacts

log = logging.getLogger("meterproxy")

# Never sent upstream: Host and Content-Length are the upstream's; keys are set by policy below;
# forwarding headers from the client could be spoofed; identity encoding keeps bodies readable.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"authorization",
        b"x-api-key",
        b"x-goog-api-key",
        b"accept-encoding",
        b"expect",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)
_CLIENT_KEYS = frozenset(KEY_HEADERS)
_NOT_FORWARDED_PASSING_KEYS = _NOT_FORWARDED - _CLIENT_KEYS
_NO_LENGTH = frozenset({b"content-length"})
_KEEP = frozenset[bytes]()
_IDENTITY = (b"accept-encoding", b"identity")
_WATCH_AFTER = 0.05  # seconds a call runs before its client is watched for a disconnect
_PLAIN = (b"", b"identity")
_OPENAI_SHAPED = frozenset({"chat", "responses", "embeddings"})
_KEY_HEADER = {"openai": b"authorization", "anthropic": b"x-api-key", "gemini": b"x-goog-api-key"}


class _ClientGone(Exception):
    """The client went away before the call reached the upstream."""


class _BodyUnread(RouteError):
    """Refused before the body was read whole (too large, or too slow): the answer closes the connection,
    so the rest of the body is never read (uvicorn would otherwise read and discard all of it to keep the
    connection alive)."""


class Meter:
    def __init__(self, config: Config, routes: Routes) -> None:
        self.config = config
        self.routes = routes
        self.gate = Gate(config.auth_keys)
        self._warned_unpriced: set[tuple[str, str]] = set()
        # At most server.upstream_pool_size calls are with providers at once (issue 6, case 18).
        self._slots = asyncio.Semaphore(config.upstream_pool_size)
        self._body_deadlines = Deadlines(config.body_timeout)
        self._watches: Later[_DisconnectWatch] = Later(_WATCH_AFTER, _DisconnectWatch.start)
        # With no record to write and no cost to put in the answer, nothing reads a call's usage:
        # answers pass through unread, and streams are not asked for a usage chunk.
        self._metering = config.cost_tracking or config.cost_in_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.time()
        started = time.perf_counter()
        proxy_id = os.urandom(12).hex()
        headers: Headers = scope["headers"]
        header = dict(headers)
        raw_path = scope.get("raw_path")
        query: bytes = scope.get("query_string", b"")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        task = asyncio.current_task()
        assert task is not None  # uvicorn runs each request in a task of its own
        try:
            target = self.routes.for_path(path)
            # `header` keeps a repeated header's last value, where every one is forwarded: a call with
            # two keys could be recorded under one and spend the other (a comparison when none repeats).
            if len(header) < len(headers) and (repeated := repeated_key_header(headers)) is not None:
                raise KeyConflict(f"the request has more than one {repeated} header; send one key")
            # Google's APIs also take a key as `?key=`: the client's own key, forwarded with the query,
            # or behind auth.keys its proxy key, which is taken out of the query below.
            passing = not self.gate.closed
            in_query = None
            if query and target.provider and target.provider.kind == "gemini":
                in_query = query_key(query)
            token = client_token(
                header.get(b"authorization"),
                header.get(b"x-api-key"),
                header.get(b"x-goog-api-key"),
                in_query,
                one_key=passing,
            )
            user = key_id(token) if passing else self.gate.caller(token)
            if user is None:
                raise RouteError(
                    401, "invalid_api_key", "a valid proxy key is required (Authorization: Bearer)"
                )
            body = await self._read_body(receive, header.get(b"content-length"), task)
            by_model = target.provider is None
            request = self._parse_request(body, required=target.api is not None or by_model)
            model = request.get("model") if isinstance(request.get("model"), str) else None
            provider, base, upstream_model = target.provider, target.base, target.path_model or model
            if provider is None:
                if model is None:
                    raise RouteError(400, "missing_model", "the body has no 'model'; name the model to call")
                provider, upstream_model = self.routes.for_model(model)
                base = provider.base_url
                if upstream_model != model:
                    # The request as sent from here on, so that asking for usage keeps the rename.
                    request = {**request, "model": upstream_model}
                    body = _rename_model(body, request, model)
            elif target.api is not None and target.api != "gemini" and model is None:
                raise RouteError(400, "missing_model", "the body has no 'model'; name the model to call")
            if self.config.fail_closed and not scope["state"]["writer"].accepting():
                raise RouteError(
                    503,
                    "cost_tracking_unavailable",
                    "records cannot be written and features.cost_tracking.fail_closed is set",
                )
        except RouteError as exc:
            log.warning("refused %s %s: %d %s", scope["method"], scope["path"], exc.status, exc)
            for message in _error(exc.status, exc.code, str(exc), proxy_id, isinstance(exc, _BodyUnread)):
                await send(message)
            return
        except _ClientGone:
            log.info("client left before sending its whole request: %s %s", scope["method"], scope["path"])
            return

        stream = request.get("stream") is True or target.rest.endswith(":streamGenerateContent")
        strip = False
        if self._metering and target.api == "chat" and stream and provider.stream_usage:
            options = request.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body = _ask_for_usage(body, request)
                strip = True

        call = Call(proxy_id, arrived, started, provider, upstream_model, target.api, stream, user, request)
        call.endpoint = scope["path"]
        client = scope.get("client")
        call.ip = client[0] if client else None
        call.session_id = _text(header.get(b"x-session-id"))
        call.task_type = _text(header.get(b"x-task-type"))
        if query and provider.kind == "gemini" and self.gate.closed:
            # Google reads `key` as the key to spend, and behind auth.keys a client's key is a proxy key,
            # which must never reach a provider: on /v1/ too, where the body's model chose Google.
            query = without_query_key(query)
        url = f"{base}/{target.rest}" + (f"?{query.decode('latin-1')}" if query else "")
        watch = _DisconnectWatch(call, receive, task, self._watches)
        last: list[Message] = []
        holding = False
        try:
            holding = await self._take_slot()
            if holding:
                last = await self._forward(
                    scope, send, call, url, self._upstream_headers(headers, provider, target.api), body, strip
                )
            else:
                call.error, call.status = "pool_timeout", 503
                last = _error(503, "pool_timeout", self._overloaded, call.proxy_id)
        except asyncio.CancelledError:
            task.uncancel()
            if not call.gone:
                # The server is stopping and server.drain_seconds is over: uvicorn cancels what still
                # runs. The call is recorded as cut; one not answered yet gets a 503 to retry elsewhere.
                call.error = "shutdown"
                if not call.head_sent:
                    call.status = 503
                    last = _error(503, "shutdown", "the proxy is shutting down", call.proxy_id)
        finally:
            if holding:
                self._slots.release()
            call.finished = True
            watch.stop()
            if call.response is not None:
                call.response.close()
            self._account(scope, call)
        # The answer's last bytes leave only once its record is written, so a client that has its
        # whole answer can count on the record, even if the proxy is killed right after (issue 6).
        for message in last:
            await send(message)

    async def _take_slot(self) -> bool:
        """One of the upstream slots; False when none came free within server.pool_timeout_seconds, so
        that an overloaded proxy answers the excess at once rather than letting it hang."""
        if not self._slots.locked():
            return await self._slots.acquire()
        try:
            async with asyncio.timeout(self.config.pool_timeout):
                return await self._slots.acquire()
        except TimeoutError:
            return False

    @property
    def _overloaded(self) -> str:
        return (
            f"all {self.config.upstream_pool_size} upstream connections (server.upstream_pool_size) stayed "
            f"busy for {self.config.pool_timeout:g} s (server.pool_timeout_seconds); retry later"
        )

    def _account(self, scope: Scope, call: Call) -> None:
        if not self.config.cost_tracking or call.recorded:
            return
        call.recorded = True
        bill = call.settle()
        if isinstance(bill.facts, StreamFacts) and bill.facts.malformed:
            log.warning("%d malformed data lines in the stream of %s", bill.facts.malformed, call.proxy_id)
        if isinstance(bill.facts, StreamFacts) and bill.facts.unread:
            log.warning(
                "the stream of %s had %d events with a line over %d MiB, passed on unread: usage they "
                "carried is not in its record",
                *(call.proxy_id, bill.facts.unread, sse.MAX_LINE >> 20),
            )
        model = call.model
        if (
            bill.price is None
            and model
            and call.api
            and (call.provider.name, model) not in self._warned_unpriced
        ):
            self._warned_unpriced.add((call.provider.name, model))
            log.warning(
                "no price for model %r of provider %r: its calls are recorded unpriced "
                "(add providers.%s.models.%s.pricing to the config)",
                *(model, call.provider.name, call.provider.name, model),
            )
        writer: RecordWriter = scope["state"]["writer"]
        writer.append(call.record(bill))

    async def _read_body(self, receive: Receive, length: bytes | None, task: asyncio.Task[Any]) -> bytes:
        limit = self.config.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        parts: list[bytes] = []
        size = 0
        try:
            # A slow-loris body, or a Content-Length larger than the body sent, must not hold its
            # connection for ever (issue 6, case 11).
            with self._body_deadlines.watch(task):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    part: bytes = message.get("body", b"")
                    size += len(part)
                    if size > limit:
                        raise _too_large(limit)
                    parts.append(part)
                    if not message.get("more_body", False):
                        return parts[0] if len(parts) == 1 else b"".join(parts)
        except TimeoutError:
            timeout = self._body_deadlines.seconds
            raise _BodyUnread(
                408,
                "body_timeout",
                f"the body did not arrive whole within server.body_timeout_seconds ({timeout:g} s)",
            ) from None

    @staticmethod
    def _parse_request(body: bytes, required: bool) -> dict[str, Any]:
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

    def _upstream_headers(self, headers: Headers, provider: Provider, api: Api | None) -> Headers:
        if provider.api_key is None and not self.gate.closed:
            # Pass-through: the client's key goes on like its other end-to-end headers, so not when
            # the client's Connection header names it hop-by-hop (RFC 9110 section 7.6.1).
            forwarded = end_to_end(headers, _NOT_FORWARDED_PASSING_KEYS)
        else:
            forwarded = end_to_end(headers, _NOT_FORWARDED)
        if provider.api_key is not None:
            key = provider.api_key.reveal().encode("latin-1")
            # OpenAI-shaped endpoints (Gemini's and Anthropic's compatible ones too) take a bearer token.
            name = _KEY_HEADER["openai" if api in _OPENAI_SHAPED else provider.kind]
            forwarded.append((name, b"Bearer " + key if name == b"authorization" else key))
        forwarded.append(_IDENTITY)
        return forwarded

    async def _forward(
        self, scope: Scope, send: Send, call: Call, url: str, headers: Headers, body: bytes, strip: bool
    ) -> list[Message]:
        """Send the call upstream and the answer back; return the answer's last messages, unsent."""
        upstream: Upstream = scope["state"]["upstream"]
        try:
            response = call.response = await upstream.send(
                scope["method"], url, headers, body, call.provider.timeout
            )
        except UpstreamError as exc:
            log.warning("%s %s -> %s: %s", scope["method"], scope["path"], call.provider.name, exc)
            call.error, call.status = exc.error, exc.status
            call.finished = True
            return _error(exc.status, exc.error, str(exc), call.proxy_id)
        call.status = response.status
        content_type = b""
        length: int | None = None
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-type":
                content_type = value
            elif lowered == b"content-length" and value.isdigit():
                length = int(value)
            elif lowered == b"content-encoding":
                call.encoding = value.lower()
        sse = content_type.startswith(b"text/event-stream")
        # An error may quote the provider key it was sent: it is read whole to take the key out.
        quoting = response.status >= 400 and call.provider.api_key is not None
        # Only a plain-text stream is scanned (and edited) as it passes: a compressed one, sent although
        # we asked for identity, goes on as it came, so its Content-Encoding stays true of its bytes.
        metered = self._metering and call.api is not None
        scanned = sse and metered and call.encoding in _PLAIN
        # A scanned body may change length (a chunk removed, the cost added): let the server chunk it.
        sent_headers = end_to_end(response.headers, _NO_LENGTH if scanned else _KEEP)
        sent_headers.append((b"x-meterproxy-request-id", call.proxy_id.encode()))
        try:
            if scanned:
                await send(head(call, response.status, sent_headers))
                record = functools.partial(self._account, scope, call)
                return await relay_stream(send, call, response, strip, self.config.cost_in_response, record)
            if not sse and (metered or quoting):
                return await relay_whole_body(
                    send, call, response, sent_headers, length, self.config.cost_in_response
                )
            await send(head(call, response.status, sent_headers))
            return await relay_body(send, call, response, length, b"")
        except UpstreamError as exc:
            # The response stays incomplete: the client sees its stream cut, never a fake end.
            log.warning("%s %s -> %s: %s", scope["method"], scope["path"], call.provider.name, exc)
            call.error = exc.error
            return []


class _DisconnectWatch:
    """Cancels a call whose client went away, so the upstream connection is closed at once.

    ASGI tells of a disconnect only through receive(), which needs a task of its own to wait on. That
    task cost a third of the proxy's own CPU per call (docs/performance.md), so it starts only once a
    call has lasted _WATCH_AFTER (at most a quarter more; one timer for all calls, `Later`): a quick
    call never needs it, and a slow one, where a client may give up, is watched from then on.
    """

    __slots__ = ("call", "receive", "task", "_later", "_watcher")

    def __init__(
        self, call: Call, receive: Receive, task: asyncio.Task[Any], later: Later[_DisconnectWatch]
    ) -> None:
        self.call = call
        self.receive = receive
        self.task = task
        self._later = later
        self._watcher: asyncio.Future[Message] | None = None
        later.add(self, task.get_loop())

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self.receive())
        self._watcher.add_done_callback(self._left)

    def _left(self, _: asyncio.Future[Message]) -> None:
        if not self.call.finished:
            self.call.gone = True
            self.task.cancel()

    def stop(self) -> None:
        self._later.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()


def _too_large(limit: int) -> _BodyUnread:
    return _BodyUnread(413, "request_too_large", f"the body is over server.max_body_mb ({limit >> 20} MB)")


def _error(status: int, code: str, message: str, proxy_id: str, close: bool = False) -> list[Message]:
    """An OpenAI-shaped error answer, as its two ASGI messages."""
    body = error_body(status, code, message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-meterproxy-request-id", proxy_id.encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


def _ask_for_usage(body: bytes, request: dict[str, Any]) -> bytes:
    """Add stream_options.include_usage; the bytes stay as sent unless stream_options was already there."""
    if "stream_options" not in request:
        brace = body.index(b"{")
        return body[: brace + 1] + b'"stream_options":{"include_usage":true},' + body[brace + 1 :]
    options = request["stream_options"]
    merged = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    return orjson.dumps({**request, "stream_options": merged})


def _rename_model(body: bytes, renamed: dict[str, Any], model: str) -> bytes:
    """The body of `renamed` (the request with its plain model) where `body` says `model`: only those
    bytes changed where they can be found."""
    pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(orjson.dumps(model)))
    if len(pattern.findall(body)) == 1:
        return pattern.sub(lambda match: match.group(1) + orjson.dumps(renamed["model"]), body)
    return orjson.dumps(renamed)


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None
