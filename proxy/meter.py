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
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from proxy.auth import Gate, gemini_query
from proxy.calls import Call
from proxy.codings import IDENTITY
from proxy.config import Config
from proxy.deadlines import Deadlines, Later
from proxy.disconnect import WATCH_AFTER, DisconnectWatch
from proxy.errors import error_answer
from proxy.form import boundary_of
from proxy.ledger import Ledger
from proxy.redaction import RedactedResponse, hidden_key, redact_headers, without_key, without_length
from proxy.relay import head, relay_body, relay_kept_body, relay_stream, relay_whole_body
from proxy.request import (
    BodyUnread,
    ClientGone,
    ask_for_usage,
    forwards_client_keys,
    header_text,
    parse_request,
    read_body,
    rename_model,
    upstream_headers,
)
from proxy.routing import RouteError, Routes, no_model
from proxy.serverlog import as_sent, log_cut
from proxy.slots import UpstreamSlots
from proxy.upstream import Headers, Upstream, UpstreamError, body_headers, end_to_end

log = logging.getLogger("meterproxy")

_NO_LENGTH = frozenset({b"content-length"})
_KEEP = frozenset[bytes]()
# Gemini names the model in the path; the model of OpenAI's images API is optional: the provider decides.
_MODEL_OPTIONAL = frozenset({"gemini", "images"})


class Meter:
    def __init__(self, config: Config, routes: Routes) -> None:
        self.config = config
        self.routes = routes
        self.gate = Gate(config.auth_keys)
        self._ledger = Ledger(config.cost_tracking)
        self._slots = UpstreamSlots(config.upstream_pool_size, config.pool_timeout)
        self._body_deadlines = Deadlines(config.body_timeout)
        self._watches: Later[DisconnectWatch] = Later(WATCH_AFTER, DisconnectWatch.start)
        self._running: set[asyncio.Task[Any]] = set()  # the calls that reach a provider, until recorded
        # With no record to write and no cost to put in the answer, nothing reads a call's usage:
        # answers pass through unread, and streams are not asked for a usage chunk.
        self._metering = config.cost_tracking or config.cost_in_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.time()
        started = time.perf_counter()
        proxy_id = os.urandom(12).hex()
        headers: Headers = scope["headers"]
        header = dict(headers)
        query: bytes = scope.get("query_string", b"")
        path = as_sent(scope)
        task = asyncio.current_task()
        assert task is not None  # uvicorn runs each request in a task of its own
        try:
            target = self.routes.for_path(path)
            # Only a POST to a metered path is a call to meter: a GET of /{provider}/v1/chat/completions
            # lists stored completions, and goes on as any other path does.
            api = target.api if scope["method"] == "POST" else None
            user = self.gate.admit(headers, header, query, target.provider)
            body = await read_body(
                receive, header.get(b"content-length"), self.config.max_body_bytes, self._body_deadlines, task
            )
            by_model = target.provider is None
            if by_model and (not body or body.isspace()):  # not strip(): it would copy every body
                # A GET such as the SDKs' models.retrieve(): nothing to read a model from.
                raise RouteError(
                    400,
                    "missing_model",
                    f"{scope['method']} {path} has no body with a 'model' to find the provider by; "
                    f"call it as /{{provider}}{path}",
                )
            content_type = header.get(b"content-type")
            request = parse_request(body, api is not None or by_model, content_type)
            model = request.get("model") if isinstance(request.get("model"), str) else None
            provider, base, upstream_model = target.provider, target.base, target.path_model or model
            if provider is None:
                if not model:
                    raise no_model(request.get("model"))
                provider, upstream_model = self.routes.for_model(model)
                base = provider.base_url
                if upstream_model != model:
                    # The request as sent from here on, so that asking for usage keeps the rename.
                    request = {**request, "model": upstream_model}
                    body = rename_model(body, request, model, content_type)
            elif api is not None and api not in _MODEL_OPTIONAL and model is None:
                raise no_model(request.get("model"))
            if query and provider.kind == "gemini":
                forwarding = forwards_client_keys(provider, passing=not self.gate.closed)
                user, query = gemini_query(user, query, forwarding, checked=target.provider is not None)
            if self.config.fail_closed and not scope["state"]["writer"].accepting():
                raise RouteError(
                    503,
                    "cost_tracking_unavailable",
                    "records cannot be written and features.cost_tracking.fail_closed is set",
                )
        except RouteError as exc:
            log.warning("refused %s %s: %d %s", scope["method"], path, exc.status, exc)
            close = isinstance(exc, BodyUnread)
            for message in error_answer(exc.status, exc.code, str(exc), proxy_id, close):
                await send(message)
            return
        except ClientGone:
            log.info("client left before sending its whole request: %s %s", scope["method"], path)
            return

        stream = request.get("stream") is True or target.path_streams
        strip = False
        # Usage is asked for in a JSON body: a form, which a chat call's never is, has no place for it.
        if (
            self._metering
            and api == "chat"
            and stream
            and provider.stream_usage
            and boundary_of(content_type) is None
        ):
            options = request.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body = ask_for_usage(body, request)
                strip = True

        call = Call(proxy_id, arrived, started, provider, upstream_model, api, stream, user, request)
        call.endpoint = scope["path"]
        client = scope.get("client")
        call.ip = client[0] if client else None
        call.session_id = header_text(header.get(b"x-session-id"))
        call.task_type = header_text(header.get(b"x-task-type"))
        url = f"{base}/{target.rest}" + (f"?{query.decode('latin-1')}" if query else "")
        watch = DisconnectWatch(call, receive, task, self._watches)
        last: list[Message] = []
        holding = False
        self._running.add(task)
        try:
            holding = await self._slots.take()
            if holding:
                forwarded = upstream_headers(headers, provider, target.api, passing=not self.gate.closed)
                last = await self._forward(scope, send, call, url, forwarded, body, strip)
            else:
                call.error, call.status = "pool_timeout", 503
                last = error_answer(503, "pool_timeout", self._slots.overloaded, call.proxy_id)
        except asyncio.CancelledError:
            task.uncancel()
            if call.gone:
                log_cut(scope, call, "the client went away", logging.INFO)
            else:
                # The server is stopping and server.drain_seconds is over (uvicorn cancels what still
                # runs), or a force quit cut it (`cut`). The call is recorded as cut; one not answered
                # yet gets a 503 to retry elsewhere.
                call.error = "shutdown"
                if call.head_sent:
                    log_cut(scope, call, "the proxy is stopping")
                else:
                    call.status = 503
                    last = error_answer(503, "shutdown", "the proxy is shutting down", call.proxy_id)
        finally:
            self._running.discard(task)
            if holding:
                self._slots.give_back()
            call.finished = True
            watch.stop()
            if call.response is not None:
                call.response.close()
            self._ledger.account(scope["state"]["writer"], call)
        # The answer's last bytes leave only once its record is written, so a client that has its
        # whole answer can count on the record, even if the proxy is killed right after (issue 6).
        for message in last:
            await send(message)

    def cut(self) -> list[asyncio.Task[Any]]:
        """Cancel every call in flight, now: each is recorded as cut by a stop (`error: shutdown`)."""
        running = list(self._running)
        for task in running:
            task.cancel()
        return running

    async def _forward(
        self, scope: Scope, send: Send, call: Call, url: str, headers: Headers, body: bytes, strip: bool
    ) -> list[Message]:
        """Send the call upstream and the answer back; return the answer's last messages, unsent."""
        upstream: Upstream = scope["state"]["upstream"]
        call.sent = True
        try:
            response = call.response = await upstream.send(
                scope["method"], url, headers, body, call.provider.timeout
            )
        except UpstreamError as exc:
            failure = without_key(exc, call.provider)
            log.warning("%s %s -> %s: %s", scope["method"], as_sent(scope), call.provider.name, failure)
            call.error, call.sent = failure.error, failure.sent
            call.finished = True
            return _failed(call, failure)
        call.status = response.status
        sse, length, call.encoding = body_headers(response.headers)
        plain = call.encoding in IDENTITY
        # Only a plain-text stream is scanned (and edited) as it passes: a compressed one, sent although
        # we asked for identity, goes on as it came, so its Content-Encoding stays true of its bytes.
        metered = self._metering and call.api is not None
        scanned = sse and metered and plain
        # A scanned body may change length (a chunk removed, the cost added): let the server chunk it.
        sent_headers = end_to_end(response.headers, _NO_LENGTH if scanned else _KEEP)
        sent_headers.append((b"x-meterproxy-request-id", call.proxy_id.encode()))
        # An error may quote the provider key it was sent, in its headers or its body: a plain-text stream
        # has it taken out as it passes, any other body (a compressed stream too) is read whole for it.
        # A 2xx is never searched.
        secret = hidden_key(call.provider, response.status)
        if secret is not None:
            sent_headers = redact_headers(sent_headers, secret)
        if secret is not None and sse and plain:
            response = RedactedResponse(response, secret)
            sent_headers, length = without_length(sent_headers), None
            secret = None  # searched read by read: not read whole for it
        try:
            if scanned:
                await send(head(call, response.status, sent_headers))
                record = functools.partial(self._ledger.account, scope["state"]["writer"], call)
                return await relay_stream(send, call, response, strip, self.config.cost_in_response, record)
            if call.api == "gemini" and call.stream and metered and not sse and 200 <= response.status < 300:
                # streamGenerateContent without alt=sse: one JSON array, an element at a time
                return await relay_kept_body(send, call, response, sent_headers)
            if (not sse and metered) or secret is not None:
                return await relay_whole_body(
                    send, call, response, sent_headers, length, self.config.cost_in_response, secret
                )
            await send(head(call, response.status, sent_headers))
            return await relay_body(send, call, response, length, b"")
        except UpstreamError as exc:
            failure = without_key(exc, call.provider)
            call.error = failure.error
            if call.head_sent:
                log_cut(scope, call, str(failure))
                return []  # the response stays incomplete: the client sees it cut, never a fake end
            log.warning("%s %s -> %s: %s", scope["method"], as_sent(scope), call.provider.name, failure)
            # A body read whole broke off before any of it was sent: the client gets the 502 or 504 of
            # an upstream that failed, not a bare 500 from the server, and the record says which.
            return _failed(call, failure)


def _failed(call: Call, exc: UpstreamError) -> list[Message]:
    """The answer to a call whose provider failed before the client had any of its answer: its 502 or
    504, naming the provider (a /v1/ caller chose a model, not a provider) and the key bounding a wait."""
    call.status = exc.status
    provider = call.provider.name
    limit = f" (providers.{provider}.timeout)" if exc.error == "upstream_timeout" else ""
    return error_answer(exc.status, exc.error, f"{provider}: {exc}{limit}", call.proxy_id)
