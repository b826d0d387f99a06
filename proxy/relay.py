"""Relaying an upstream answer to the client: streams scanned (and edited) as they pass, metered bodies
read whole so their cost can go back in the headers, anything else passed through as it arrives.

Each relay sends all but the answer's last messages and returns those, so the meter can write the
call's record before the client has its whole answer.
"""

from __future__ import annotations

import time

import orjson
from starlette.types import Message, Send

from proxy.calls import Bill, Call, decimal_text
from proxy.sse import SSEEvent, SSEScanner
from proxy.upstream import Headers, UpstreamResponse
from proxy.usage import StreamFacts

_MAX_PARSED_BODY = 64 << 20
_REDACTED = b"[REDACTED]"


async def relay_stream(
    send: Send, call: Call, response: UpstreamResponse, strip: bool, cost_in_response: bool
) -> list[Message]:
    """Forward an SSE stream event by event, scanning it; drop the usage chunk we asked for, and
    put the cost comment before [DONE] (or at the end)."""
    scanner = SSEScanner()
    facts = call.facts = StreamFacts(call.api or "chat")
    held = b""  # bytes of an event not yet whole: kept until we know what to do with it
    held_at = 0  # the stream offset of held[0]
    cost_noted = not cost_in_response
    line_ended = True  # the bytes sent so far end a line: a comment may follow directly
    while True:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        if not held and (data := scanner.take_event(chunk)) is not None:
            if facts.skim(data):  # nearly every event of a stream: one whole event, nothing to note
                held_at = scanner.boundary
                line_ended = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                continue
            events = [SSEEvent(None, data, held_at, scanner.boundary)]
        else:
            events = scanner.feed(chunk) if chunk else scanner.finish()
        held = held + chunk if held else chunk
        release = scanner.boundary if chunk else held_at + len(held)
        edits: list[tuple[int, int, bytes]] = []
        for event in events:
            if facts.observe(event.data) and strip:
                edits.append((event.start, event.end, b""))  # the usage-only chunk the client did not ask for
            elif event.data == b"[DONE]" and not cost_noted:
                edits.append((event.start, event.start, cost_comment(call)))
                cost_noted = True
        if release - held_at == len(held):  # the usual case: every byte so far belongs to a whole event
            out, held = held, b""
        else:
            out, held = held[: release - held_at], held[release - held_at :]
        for start, end, insert in reversed(edits):
            out = out[: start - held_at] + insert + out[end - held_at :]
        held_at = release
        if out:
            line_ended = out[-1:] in (b"\n", b"\r")
        if not chunk:
            if not cost_noted:
                out += (b"" if line_ended else b"\n") + cost_comment(call)
            call.finished = True
            return [{"type": "http.response.body", "body": out}]
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})


async def relay_whole_body(
    send: Send,
    call: Call,
    response: UpstreamResponse,
    headers: Headers,
    length: int | None,
    cost_in_response: bool,
) -> list[Message]:
    """Read a non-streamed body whole: a metered one, so its cost can go back in the headers; an
    error, so that the provider key it may quote can be taken out."""
    parts: list[bytes] = []
    size = 0
    while size != length:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > _MAX_PARSED_BODY:  # too large to read for usage: pass it through as it comes
            await send(head(call, response.status, headers))
            return await relay_body(send, call, response, length, b"".join(parts))
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    if size == length:
        response.release()  # the whole body is in: hand the connection back without another read
        call.response = None
    call.body = body
    if response.status >= 400 and call.provider.api_key is not None:
        # Some providers quote the key they were sent in their errors; a client must never learn
        # the provider's key (issue 6, case 13).
        body = redact(body, headers, call.provider.api_key.reveal().encode("latin-1"))
    if cost_in_response and call.api is not None:
        bill = call.settle()
        if bill.cost is not None:
            headers.append((b"x-meterproxy-cost", decimal_text(bill.cost.total_cost).encode()))
            headers.append((b"x-meterproxy-currency", call.provider.currency.encode()))
    call.finished = True
    return [head(call, response.status, headers), {"type": "http.response.body", "body": body}]


def cost_comment(call: Call) -> bytes:
    """`: meterproxy-cost {...}`: SSE clients skip comment lines, so no client breaks on it."""
    bill: Bill = call.settle()
    total = decimal_text(bill.cost.total_cost) if bill.cost is not None else "null"
    return (
        b': meterproxy-cost {"total_cost": %s, "currency": %s, '
        b'"input_tokens": %d, "output_tokens": %d}\n\n'
        % (
            total.encode(),
            orjson.dumps(call.provider.currency),
            bill.usage.input_tokens,
            bill.usage.output_tokens,
        )
    )


async def relay_body(
    send: Send, call: Call, response: UpstreamResponse, length: int | None, first: bytes
) -> list[Message]:
    """Pass a body through as it arrives (not metered, or too large to read)."""
    size = len(first)
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})
    while True:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        size += len(chunk)
        last = not chunk or size == length
        if last:
            call.finished = True
            if chunk:  # the whole body is in: hand the connection back without another read
                response.release()
                call.response = None
            return [{"type": "http.response.body", "body": chunk}]
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


def head(call: Call, status: int, headers: Headers) -> Message:
    call.head_sent = True
    return {"type": "http.response.start", "status": status, "headers": headers}


def redact(body: bytes, headers: Headers, secret: bytes) -> bytes:
    """`body` with every copy of `secret` replaced, its Content-Length in `headers` set to match."""
    if secret not in body:
        return body
    body = body.replace(secret, _REDACTED)
    for index, (name, _) in enumerate(headers):
        if name.lower() == b"content-length":
            headers[index] = (name, str(len(body)).encode())
    return body
