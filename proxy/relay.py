"""Relaying an upstream answer to the client: streams scanned (and edited) as they pass, metered bodies
read whole so their cost can go back in the headers, anything else passed through as it arrives.

Each relay sends all but the answer's last messages and returns those, so the meter can write the
call's record before the client has its whole answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from starlette.types import Message, Send

from proxy.calls import Bill, Call, decimal_text
from proxy.codings import compressed
from proxy.facts import StreamFacts
from proxy.redaction import RedactedResponse, redact, withheld, without_length
from proxy.sse import SSEEvent, SSEScanner
from proxy.upstream import Headers, UpstreamResponse

MAX_READ_BODY = 64 << 20  # the largest non-streamed answer read for its usage


async def relay_stream(
    send: Send,
    call: Call,
    response: UpstreamResponse,
    strip: bool,
    cost_in_response: bool,
    record: Callable[[], None],
) -> list[Message]:
    """Forward an SSE stream event by event, scanning it; drop the usage chunk we asked for, and
    put the cost comment before the stream's last event (or at the end, before any event it ends inside
    of, which clients drop unfinished). `record` writes the call's record: it is called when that event
    is read, before the client can have it (the client's answer is whole then). The last event is
    chat's [DONE], Anthropic's message_stop, the Responses API's response.completed, .incomplete or
    .failed, an image stream's image_generation.completed or image_edit.completed, a transcript's
    transcript.text.done, or the error that breaks a stream off (an `error` event, a chat chunk with an
    `error`): a client may leave once it has it, before the provider ends the body."""
    stream = _StreamEdit(call, strip, cost_in_response, record)
    sent = b""  # the last bytes sent: a comment may follow them directly if they end a line
    while True:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        out = stream.take(chunk) if chunk else b""
        if not chunk or response.ended():
            # The body is in whole: its last bytes go with the answer's end, in one write.
            if chunk:
                response.release()
                call.response = None
            out += stream.finish(out or sent)
            call.finished = True
            return [{"type": "http.response.body", "body": out}]
        if out:
            sent = out
            await send({"type": "http.response.body", "body": out, "more_body": True})


class _StreamEdit:
    """A stream's reads in, the bytes the client may have now out: every event read or counted, the
    usage chunk we asked for dropped, the cost comment put before the stream's last event."""

    __slots__ = (
        "call", "strip", "record", "cost_noted", "ended", "scanner", "facts", "held", "held_more", "held_at",
    )  # fmt: skip

    def __init__(self, call: Call, strip: bool, cost_in_response: bool, record: Callable[[], None]) -> None:
        self.call = call
        self.strip = strip
        self.record = record
        self.cost_noted = not cost_in_response
        self.ended = False  # the stream's last event is read (and the record written)
        self.scanner = SSEScanner()
        self.facts = call.facts = StreamFacts(call.api or "chat")
        self.held = b""  # bytes of an event not yet whole: kept until we know what to do with it
        self.held_more: list[bytes] = []  # later reads of a long event, joined to `held` once it ends
        self.held_at = 0  # the stream offset of held[0]

    def take(self, chunk: bytes) -> bytes:
        """What the client may have now, `chunk` taken in: events with nothing to note are counted
        and pass as they came; the others are read one by one."""
        scanner, facts = self.scanner, self.facts
        out: list[bytes] = []
        position = 0
        if self.held:  # first the rest of the event an earlier read left unfinished
            end = chunk.find(b"\n\n")
            position = end + 2 if end >= 0 else len(chunk)
            out.append(self.scan(chunk[:position]))
        elif (data := scanner.take_event(chunk)) is not None:  # one event per read: a slow stream
            self.held_at = scanner.boundary
            return chunk if facts.skim(data) else self._edited(chunk, facts.read(data))
        while position < len(chunk):
            if self.held:  # an event is still unfinished (not LF-framed): the scanner takes the rest
                out.append(self.scan(chunk[position:]))
                break
            # A run of events with nothing to note (most of a read) is counted, not cut out.
            unread = facts.unread_until(chunk, position)
            cut = chunk.rfind(b"\n\n", position, unread) + 2
            if cut > position + 2 and (counted := scanner.take_events(chunk, position, cut)):
                facts.count(counted)
                out.append(chunk[position:cut])
                self.held_at = scanner.boundary
                position = cut
                continue
            # The next event is read (the first, one worth reading, or one of another shape).
            end = chunk.find(b"\n\n", position)
            cut = end + 2 if end >= 0 else len(chunk)
            if end >= 0 and scanner.take_events(chunk, position, cut):  # one `data: ` line, as usual
                self.held_at = scanner.boundary
                out.append(self._edited(chunk[position:cut], facts.observe(chunk[position + 6 : end])))
            else:
                out.append(self.scan(chunk[position:cut]))
            position = cut
        return out[0] if len(out) == 1 else b"".join(out)

    def scan(self, piece: bytes) -> bytes:
        """Read the events `piece` completes (b"": the stream ended); return what the client may have."""
        scanner = self.scanner
        events = scanner.feed(piece) if piece else scanner.finish()
        self.facts.unread = scanner.oversized
        return self._release(piece, events)

    def finish(self, sent: bytes) -> bytes:
        """What the client may have once the stream has ended (`sent`: the last bytes it was given), with
        the cost comment if no last event took it. A stream that ends inside a block (no blank line after
        it) has the comment put before that block: the comment's blank line would otherwise finish the
        block, and the client would get an event the provider never finished (one it drops)."""
        held_at = self.held_at
        out = self.scan(b"")
        if self.cost_noted:
            return out
        self.cost_noted = True
        comment = cost_comment(self.call)
        unfinished = self.scanner.unfinished
        if unfinished is None:  # ended at a block's end (a stream of a BOM alone too)
            return out + comment
        if unfinished >= held_at:  # that block is all still here, unsent
            return out[: unfinished - held_at] + comment + out[unfinished - held_at :]
        # Ended inside an event too long to keep, whose start the client has: on a line of its own.
        line_ended = (out or sent)[-1:] in (b"\n", b"\r")
        return out + (b"" if line_ended else b"\n") + comment

    def _edited(self, event: bytes, usage_only: bool) -> bytes:
        """An observed event the scanner has taken whole (its bytes; `usage_only`: what observing its
        data found), edited: what _release does for one event, without its bookkeeping."""
        before = self._edit(usage_only)
        return b"" if before is None else before + event

    def _edit(self, usage_only: bool) -> bytes | None:
        """What goes before an observed event (the cost comment before the stream's last event, else
        nothing), or None to drop it (the usage chunk the client did not ask for). Events after the
        last one pass as they came: the record is written, the comment sent."""
        if usage_only and self.strip:
            return None
        if not self.facts.done or self.ended:
            return b""
        self.ended = True
        self.record()
        if self.cost_noted:
            return b""
        self.cost_noted = True
        return cost_comment(self.call)

    def _release(self, piece: bytes, events: list[SSEEvent]) -> bytes:
        if self.held and piece and not events and self.scanner.boundary == self.held_at:
            self.held_more.append(piece)  # still inside one event: nothing to release, nothing to join
            return b""
        if self.held_more:
            held = b"".join([self.held, *self.held_more, piece])
            self.held_more = []
        else:
            held = self.held + piece if self.held else piece
        held_at = self.held_at
        release = self.scanner.boundary if piece else held_at + len(held)
        edits: list[tuple[int, int, bytes]] = []
        for event in events:
            before = self._edit(self.facts.observe(event.data))
            if before is None:
                edits.append((event.start, event.end, b""))
            elif before:
                edits.append((event.start, event.start, before))
        if release - held_at == len(held):  # the usual case: every byte so far belongs to a whole event
            out, self.held = held, b""
        else:
            out, self.held = held[: release - held_at], held[release - held_at :]
        for start, end, insert in reversed(edits):
            out = out[: start - held_at] + insert + out[end - held_at :]
        self.held_at = release
        return out


async def relay_whole_body(
    send: Send,
    call: Call,
    response: UpstreamResponse,
    headers: Headers,
    length: int | None,
    cost_in_response: bool,
    secret: bytes | None,
) -> list[Message]:
    """Read a non-streamed body whole: a metered one, so its cost can go back in the headers; an
    error, so that the provider key it may quote (`secret`, see redaction.hidden_key) can be taken out."""
    parts: list[bytes] = []
    size = 0
    if length == 0:  # nothing to read: the head, in already, is the whole answer and its first byte
        call.ttfb = time.perf_counter()
    while size != length:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_READ_BODY:  # too large to read for usage: pass it through as it comes
            call.unread = f"over {MAX_READ_BODY >> 20} MiB"
            first = b"".join(parts)
            if secret is not None and compressed(headers):  # an error the key cannot be looked for in
                call.finished = True
                body = withheld(headers, response.status)
                return [head(call, response.status, headers), {"type": "http.response.body", "body": body}]
            if secret is not None:  # an error: the key is taken out as it passes
                response = RedactedResponse(response, secret)
                first, headers, length = response.take(first), without_length(headers), None
            await send(head(call, response.status, headers))
            return await relay_body(send, call, response, length, first)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    if size == length:
        response.release()  # the whole body is in: hand the connection back without another read
        call.response = None
    call.body = body
    if secret is not None:
        body = redact(body, headers, secret, response.status)
    if cost_in_response and call.api is not None:
        bill = call.settle()
        if bill.cost is not None:
            headers.append((b"x-meterproxy-cost", decimal_text(bill.cost.total_cost).encode()))
            headers.append((b"x-meterproxy-currency", call.provider.currency.encode()))
    call.finished = True
    return [head(call, response.status, headers), {"type": "http.response.body", "body": body}]


async def relay_kept_body(
    send: Send, call: Call, response: UpstreamResponse, headers: Headers
) -> list[Message]:
    """Pass a metered stream that is not SSE as it arrives, keeping a copy to read its usage once whole:
    Gemini's streamGenerateContent without `alt=sse` sends one JSON array, an element at a time as it is
    generated. Read whole first, its client had nothing until the last element."""
    await send(head(call, response.status, headers))
    kept: list[bytes] | None = []
    size = 0
    while True:
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        size += len(chunk)
        if kept is not None:
            kept.append(chunk)
            if size > MAX_READ_BODY:  # too large to read for usage: passed on, no longer kept
                call.unread, kept = f"over {MAX_READ_BODY >> 20} MiB", None
        if not chunk or response.ended():
            break
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if chunk:  # the whole body is in: hand the connection back without another read
        response.release()
        call.response = None
    if kept is not None:
        call.body = b"".join(kept)
    call.finished = True
    return [{"type": "http.response.body", "body": chunk}]


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
    """Pass a body through as it arrives (not metered, or too large to read); `first`: what was read of it."""
    size = len(first)
    chunk = first
    while not chunk or (size != length and not response.ended()):
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        chunk = await response.read()
        if call.ttfb is None:
            call.ttfb = time.perf_counter()
        if not chunk:
            call.finished = True
            return [{"type": "http.response.body", "body": b""}]
        size += len(chunk)
    # The whole body is in (perhaps in `first` already): hand the connection back without another read,
    # and send its last bytes with the answer's end, in one write.
    response.release()
    call.response = None
    call.finished = True
    return [{"type": "http.response.body", "body": chunk}]


def head(call: Call, status: int, headers: Headers) -> Message:
    call.head_sent = True
    return {"type": "http.response.start", "status": status, "headers": headers}
