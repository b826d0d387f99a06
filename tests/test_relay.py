"""The relays driven directly, byte for byte: a fake `send` collects what the client gets, a fake
upstream answers in the reads given. Streams are built the way providers may write them (LF, CRLF or CR
line endings, comments, `event:`/`id:`/`retry:` fields, data over several lines, blank lines, a BOM)
and compared with what an SSE parser written from the spec finds in them, however the reads cut them.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from conftest import Reads
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message

from proxy import calls, relay
from proxy.calls import Call, decimal_text
from proxy.configfile import parse_config
from proxy.facts import ResponseFacts, StreamFacts
from proxy.ledger import Ledger
from proxy.records import CostRecord
from proxy.redaction import hidden_key
from proxy.relay import relay_body, relay_kept_body, relay_stream, relay_whole_body
from proxy.upstream import Headers
from proxy.usage import Api

KEY = "sk-provider-secret"
MODELS = {
    "chat": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-6",
    "responses": "gpt-5",
    "images": "gpt-image-2",
    "transcriptions": "gpt-4o-transcribe",
}
COMMENT = re.compile(rb": meterproxy-cost (\{[^\n]*\})\n\n")
TEXT = 'ab é你🙂\\"\n'  # one to four UTF-8 bytes, and characters JSON escapes


def new_call(api: Api, stream: bool, priced: bool = True) -> Call:
    """A call as the meter makes it, its upstream's status in."""
    models = {model: {"pricing": {"input": 0.15, "output": 0.60}} for model in MODELS.values()}
    provider = {"base_url": "http://upstream.invalid/v1", "api_key": KEY, "models": models if priced else {}}
    config = parse_config(json.dumps({"providers": {"p": provider}}), {})
    request = {"model": MODELS[api], "messages": [{"role": "user", "content": "Say hello"}], "stream": stream}
    call = Call("proxy-id", 0.0, 0.0, config.providers["p"], MODELS[api], api, stream, "user", request)
    call.sent, call.status = True, 200
    return call


class Client:
    """The ASGI `send` of the client: keeps every message, and the body bytes in order."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.messages)


class Records:
    """Takes the place of the record writer."""

    def __init__(self) -> None:
        self.records: list[CostRecord] = []

    def append(self, record: CostRecord) -> None:
        self.records.append(record)


class Relayed:
    """One streamed call relayed: what the client got, the call, and each time `record` ran."""

    def __init__(
        self, pieces: list[bytes], api: Api, strip: bool, cost_in_response: bool, ends_known: bool = False
    ) -> None:
        self.call = new_call(api, stream=True)
        self.response = Reads(pieces, ends_known=ends_known)
        self.client = Client()
        self.records = Records()
        self.sent_when_recorded: list[bytes] = []
        ledger = Ledger(True)

        def record() -> None:
            self.sent_when_recorded.append(self.client.body)
            ledger.account(self.records, self.call)

        async def run() -> None:
            last = await relay_stream(
                self.client.send, self.call, self.response, strip, cost_in_response, record
            )
            ledger.account(self.records, self.call)  # as the meter's `finally` does
            for message in last:
                await self.client.send(message)

        asyncio.run(run())
        assert not self.client.messages[-1].get("more_body", False), "the stream did not end"
        assert all(message.get("more_body") for message in self.client.messages[:-1])
        (self.record,) = self.records.records


# Streams as the spec reads them.


def spec_events(stream: bytes) -> list[bytes]:
    """The data of each event of a whole stream, as the SSE spec dispatches them; written from the spec,
    independently of proxy/sse.py."""
    events: list[bytes] = []
    data: list[bytes] | None = None
    start = 3 if stream.startswith(b"\xef\xbb\xbf") else 0  # one leading BOM is ignored
    for line in re.finditer(rb"([^\r\n]*)(?:\r\n|\r|\n)", stream[start:]):
        text = line.group(1)
        if not text:
            if data is not None:
                events.append(b"\n".join(data))
            data = None
        elif not text.startswith(b":"):
            name, _, value = text.partition(b":")
            if name == b"data":
                data = [*(data or []), value[1:] if value.startswith(b" ") else value]
    return events


def facts_of(api: Api, events: list[bytes]) -> StreamFacts:
    facts = StreamFacts(api)
    for data in events:
        facts.observe(data)
    return facts


def summary(facts: ResponseFacts | None) -> tuple[Any, ...]:
    assert isinstance(facts, StreamFacts)
    return (
        facts.usage,
        facts.finish_reason,
        facts.response_id,
        facts.model,
        facts.events,
        facts.done,
        facts.malformed,
        facts.partial,
    )


class Stream:
    """A stream as blocks of bytes (an event, a keep-alive comment, a blank line), maybe after a BOM;
    `end`: the block of its last event ([DONE], message_stop, response.completed, ...), by default the
    last block."""

    def __init__(self, bom: bool, blocks: list[bytes], end: int | None = None) -> None:
        self.bom = b"\xef\xbb\xbf" if bom else b""
        self.blocks = blocks
        self.end = len(blocks) - 1 if end is None else end

    def bytes(self, without: int | None = None) -> bytes:
        return self.bom + b"".join(block for index, block in enumerate(self.blocks) if index != without)

    def offset(self, index: int, without: int | None = None) -> int:
        """Where block `index` starts in bytes(without)."""
        return len(self.bom) + sum(len(block) for i, block in enumerate(self.blocks[:index]) if i != without)


@st.composite
def blocks_of(draw: st.DrawFn, payloads: list[tuple[bytes | None, bytes]], nl: bytes) -> list[bytes]:
    """Each payload (an event type, its data) as a block of lines: maybe with an id and a retry field and
    a comment line, anywhere in it; its data over several lines (split between JSON tokens), `data:` with
    or without its space; and keep-alive comments and blank lines between blocks."""
    blocks: list[bytes] = []
    for event, data in payloads:
        if draw(st.integers(0, 4)) == 0:
            blocks.append(b": keep-alive" + nl + nl)
        if draw(st.integers(0, 4)) == 0:
            blocks.append(nl)
        pieces = [data]
        if data.startswith(b"{") and draw(st.integers(0, 3)) == 0:
            pieces = re.split(rb'(?<=,)(?= ?")', data)  # before each key: JSON reads the joining LF as space
        lines = [(b"data: " if draw(st.integers(0, 3)) else b"data:") + piece for piece in pieces]
        others = [b"event: " + event] if event is not None else []
        if draw(st.integers(0, 5)) == 0:
            others.append(b"id: " + str(len(blocks)).encode())
        if draw(st.integers(0, 8)) == 0:
            others.append(b"retry: 3000")
        if draw(st.integers(0, 8)) == 0:
            others.append(b": a comment inside the event")
        for other in others:  # first, as providers write them, or anywhere: the spec reads them so
            lines.insert(draw(st.integers(0, len(lines))) if draw(st.integers(0, 3)) == 0 else 0, other)
        blocks.append(b"".join(line + nl for line in lines) + nl)
    return blocks


def dumps(value: Any, spaced: bool) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(value, separators=separators, ensure_ascii=False).encode()


# Content that names an error, as text: escaped in its JSON string, it is no `"error":` key.
ERROR_WORDS = st.sampled_from(["error", '"error": {"message": "x"}', "error: null", '{"error":1}'])


@st.composite
def chat_streams(draw: st.DrawFn, error: bool = False) -> Stream:
    """An OpenAI chat stream: maybe Azure's prompt-filter chunk (no choices, no usage, id and model ""),
    a role chunk, content chunks (`"finish_reason": null`, and maybe `"usage": null`, with and without
    spaces), a finish chunk, the usage-only chunk and [DONE]. `error`: one the provider breaks off after
    the content with an error chunk, OpenRouter's (the chunk's fields, the error, a choice finished with
    "error") or OpenAI's and vLLM's (the error alone), maybe followed by [DONE]."""
    spaced = draw(st.booleans())
    head: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024",
    }
    if draw(st.booleans()):
        head["usage"] = None  # vLLM-style servers send it in every chunk

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return dumps({**head, "choices": [choice]}, draw(st.booleans()) if spaced else False)

    payloads: list[tuple[bytes | None, bytes]] = []
    if draw(st.booleans()):
        filtered = {"choices": [], "id": "", "model": "", "prompt_filter_results": [{"prompt_index": 0}]}
        payloads.append((None, dumps(filtered, spaced)))
    payloads.append((None, chunk({"role": "assistant", "content": ""}, None)))
    for text in draw(st.lists(st.text(alphabet=TEXT, max_size=8) | ERROR_WORDS, max_size=6)):
        payloads.append((None, chunk({"content": text}, None)))
    nl = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    if error:
        failure = {"message": "The server had an error", "type": "server_error", "code": None}
        if draw(st.booleans()):
            ended = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
            payloads.append((None, dumps({**head, "error": failure, "choices": [ended]}, spaced)))
        else:
            payloads.append((None, dumps({"error": failure}, spaced)))
        blocks = draw(blocks_of(payloads, nl))
        late = b"data: [DONE]" + nl + nl
        return Stream(draw(st.booleans()), blocks + draw(after_the_end(nl, late)), len(blocks) - 1)
    payloads.append((None, chunk({}, draw(st.sampled_from(["stop", "length"])))))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**6))}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    payloads.append((None, dumps({**head, "choices": [], "usage": usage}, spaced)))
    payloads.append((None, b"[DONE]"))
    return Stream(draw(st.booleans()), draw(blocks_of(payloads, nl)))


def usage_block(stream: Stream) -> int:
    """The index of the block holding the usage-only chunk (keep-alives and blank lines may follow it)."""
    return max(
        index for index, block in enumerate(stream.blocks) if b'"choices":[]' in block.replace(b" ", b"")
    )


@st.composite
def anthropic_streams(draw: st.DrawFn, error: bool = False) -> Stream:
    """An Anthropic Messages stream: message_start ... message_delta, message_stop; no [DONE]. `error`:
    one the provider breaks off with an `error` event (overloaded) after some text."""
    spaced = draw(st.booleans())
    start_usage = {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": 1}
    message: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant",
                               "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
                               "usage": start_usage}  # fmt: skip
    payloads: list[tuple[bytes | None, dict[str, Any]]] = [
        (b"message_start", {"type": "message_start", "message": message}),
        (
            b"content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        (b"ping", {"type": "ping"}),
    ]
    for text in draw(st.lists(st.text(alphabet=TEXT, max_size=8), max_size=5)):
        delta = {"type": "text_delta", "text": text}
        payloads.append((b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    if error:
        overloaded = {"type": "overloaded_error", "message": "Overloaded"}
        payloads.append((b"error", {"type": "error", "error": overloaded}))
    else:
        payloads.append((b"content_block_stop", {"type": "content_block_stop", "index": 0}))
        output = {"output_tokens": draw(st.integers(0, 10**6))}
        payloads.append((b"message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                            "usage": output}))  # fmt: skip
        payloads.append((b"message_stop", {"type": "message_stop"}))
    nl = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    blocks = draw(blocks_of([(event, dumps(data, spaced)) for event, data in payloads], nl))
    ping = b"event: ping" + nl + b"data: " + dumps({"type": "ping"}, spaced) + nl + nl
    return Stream(draw(st.booleans()), blocks + draw(after_the_end(nl, ping)), len(blocks) - 1)


@st.composite
def responses_streams(draw: st.DrawFn, error: bool = False) -> Stream:
    """A Responses API stream: response.created, text deltas, then the response with its usage in its
    last event: response.completed, response.incomplete or response.failed. `error`: one the provider
    breaks off with an `error` event after the deltas."""
    spaced = draw(st.booleans())
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-5-2025-08-07",
                "incomplete_details": None, "usage": None}  # fmt: skip
    payloads: list[tuple[bytes | None, dict[str, Any]]] = [
        (b"response.created", {"type": "response.created", "sequence_number": 0, "response": response}),
    ]
    for text in draw(st.lists(st.text(alphabet=TEXT, max_size=8), max_size=5)):
        delta = {"type": "response.output_text.delta", "sequence_number": len(payloads), "delta": text}
        payloads.append((b"response.output_text.delta", delta))
    if error:
        failure = {
            "type": "error",
            "code": "server_error",
            "message": "The server had an error",
            "param": None,
        }
        payloads.append((b"error", {**failure, "sequence_number": len(payloads)}))
    else:
        usage = {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": draw(st.integers(0, 10**6))}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        status = draw(st.sampled_from(["completed", "incomplete", "failed"]))
        ended = {**response, "status": status, "usage": usage}
        payloads.append((f"response.{status}".encode(), {"type": f"response.{status}", "response": ended}))
    nl = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    blocks = draw(blocks_of([(event, dumps(data, spaced)) for event, data in payloads], nl))
    return Stream(draw(st.booleans()), blocks + draw(after_the_end(nl, None)), len(blocks) - 1)


# How an OpenAI stream without [DONE] may be broken off: an `error` event with the error object in it.
STREAM_ERROR = (
    b"error",
    {"type": "error", "error": {"code": "server_error", "message": "The server had an error"}},
)


@st.composite
def image_streams(draw: st.DrawFn, error: bool = False) -> Stream:
    """An image generation or edit stream: partial images, then the image with its usage in the completed
    event, its last; no [DONE]. `error`: one the provider breaks off with an `error` event instead."""
    spaced = draw(st.booleans())
    kind = draw(st.sampled_from(["image_generation", "image_edit"]))
    payloads: list[tuple[bytes | None, dict[str, Any]]] = []
    for index in range(draw(st.integers(0, 3))):
        partial = {"type": f"{kind}.partial_image", "b64_json": "iVBORw0KGgo=", "partial_image_index": index}
        payloads.append((f"{kind}.partial_image".encode(), partial))
    usage = {"input_tokens": draw(st.integers(0, 10**6)), "output_tokens": draw(st.integers(0, 10**6))}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    completed = {"type": f"{kind}.completed", "b64_json": "iVBORw0KGgo=", "usage": usage}
    payloads.append(STREAM_ERROR if error else (f"{kind}.completed".encode(), completed))
    nl = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    blocks = draw(blocks_of([(event, dumps(data, spaced)) for event, data in payloads], nl))
    return Stream(draw(st.booleans()), blocks + draw(after_the_end(nl, None)), len(blocks) - 1)


@st.composite
def transcript_streams(draw: st.DrawFn, error: bool = False) -> Stream:
    """A transcription stream: text deltas, then the whole text with its usage in transcript.text.done,
    its last event; no [DONE], maybe no `event:` lines. `error`: one the provider breaks off with an
    `error` event instead."""
    spaced = draw(st.booleans())
    named = draw(st.booleans())
    texts = draw(st.lists(st.text(alphabet=TEXT, max_size=8), max_size=5))
    payloads: list[tuple[bytes | None, dict[str, Any]]] = [
        (b"transcript.text.delta" if named else None, {"type": "transcript.text.delta", "delta": text})
        for text in texts
    ]
    usage = {"type": "tokens", "input_tokens": draw(st.integers(0, 10**6)),
             "output_tokens": draw(st.integers(0, 10**6))}  # fmt: skip
    done = {"type": "transcript.text.done", "text": "".join(texts), "usage": usage}
    payloads.append(STREAM_ERROR if error else (b"transcript.text.done" if named else None, done))
    nl = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    blocks = draw(blocks_of([(event, dumps(data, spaced)) for event, data in payloads], nl))
    return Stream(draw(st.booleans()), blocks + draw(after_the_end(nl, None)), len(blocks) - 1)


@st.composite
def after_the_end(draw: st.DrawFn, nl: bytes, late: bytes | None) -> list[bytes]:
    """What a provider may still send after a stream's last event, before it closes the body: keep-alive
    comments, blank lines, a `late` event (an Anthropic ping, a chat stream's [DONE] after its error)."""
    kinds = [b": keep-alive" + nl + nl, nl, *([late] if late is not None else [])]
    return draw(st.lists(st.sampled_from(kinds), max_size=3))


STREAMS: dict[Api, Callable[..., st.SearchStrategy[Stream]]] = {
    "chat": chat_streams,
    "anthropic": anthropic_streams,
    "responses": responses_streams,
    "images": image_streams,
    "transcriptions": transcript_streams,
}


@st.composite
def reads_of(draw: st.DrawFn, data: bytes, blocks: list[bytes] | None = None) -> list[bytes]:
    """`data` cut into reads: anywhere, one byte at a time, inside each CRLF, inside and after each
    `data:`, one block per read, or whole."""
    how = draw(st.sampled_from(["anywhere", "bytes", "crlf", "data", "blocks", "whole"]))
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if how == "whole":
        return [data]
    cuts: set[int] = set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=20)))
    if how == "crlf":
        cuts |= {match.start() + 1 for match in re.finditer(rb"\r\n", data)}
    elif how == "data":
        cuts |= {match.start() + draw(st.integers(1, 6)) for match in re.finditer(rb"data:", data)}
    elif how == "blocks" and blocks is not None:
        cuts = {len(data) - len(b"".join(blocks[i:])) for i in range(1, len(blocks))}
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(data)), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


@st.composite
def relayed_streams(draw: st.DrawFn, api: Api, error: bool = False) -> tuple[Stream, list[bytes]]:
    stream = draw(STREAMS[api](error=True) if error else STREAMS[api]())
    return stream, draw(reads_of(stream.bytes(), [stream.bom + stream.blocks[0], *stream.blocks[1:]]))


def cost_of(comment: bytes) -> dict[str, Any]:
    found = COMMENT.fullmatch(comment)
    assert found is not None, comment
    parsed: dict[str, Any] = json.loads(found.group(1))
    return parsed


def assert_recorded_at_done(relayed: Relayed) -> None:
    """The record ran once, when [DONE] was read: the client had none of the [DONE] event yet."""
    (sent,) = relayed.sent_when_recorded
    assert b"[DONE]" not in sent
    assert relayed.record == relayed.call.record(relayed.call.settle()) | {
        "duration_ms": relayed.record["duration_ms"]
    }


@settings(max_examples=120, deadline=None)
@given(relayed_streams("chat"), st.booleans())
def test_a_chat_stream_reaches_the_client_byte_for_byte_with_the_facts_the_spec_reads(
    case: tuple[Stream, list[bytes]], ends_known: bool
) -> None:
    stream, reads = case
    relayed = Relayed(reads, "chat", strip=False, cost_in_response=False, ends_known=ends_known)
    assert relayed.client.body == stream.bytes()
    assert summary(relayed.call.facts) == summary(facts_of("chat", spec_events(stream.bytes())))
    assert_recorded_at_done(relayed)
    assert (relayed.record["usage_source"], relayed.record["error"]) == ("provider", None)


@settings(max_examples=120, deadline=None)
@given(relayed_streams("chat"), st.booleans())
def test_a_stripped_chat_stream_loses_its_usage_event_and_nothing_else(
    case: tuple[Stream, list[bytes]], ends_known: bool
) -> None:
    stream, reads = case
    relayed = Relayed(reads, "chat", strip=True, cost_in_response=False, ends_known=ends_known)
    usage = usage_block(stream)
    assert relayed.client.body == stream.bytes(without=usage)
    assert summary(relayed.call.facts) == summary(facts_of("chat", spec_events(stream.bytes())))
    assert_recorded_at_done(relayed)
    assert (relayed.record["usage_source"], relayed.record["error"]) == ("provider", None)


@settings(max_examples=120, deadline=None)
@given(relayed_streams("chat"), st.booleans(), st.booleans())
def test_a_chat_stream_gets_one_cost_comment_right_before_done_with_the_record_s_cost(
    case: tuple[Stream, list[bytes]], strip: bool, ends_known: bool
) -> None:
    stream, reads = case
    relayed = Relayed(reads, "chat", strip=strip, cost_in_response=True, ends_known=ends_known)
    without = usage_block(stream) if strip else None
    expected = stream.bytes(without)
    at = stream.offset(len(stream.blocks) - 1, without)
    body = relayed.client.body
    assert body[:at] == expected[:at] and body.endswith(expected[at:])
    comment = body[at : len(body) - len(expected) + at]
    assert cost_of(comment) == {
        "total_cost": relayed.record["total_cost"],
        "currency": "USD",
        "input_tokens": relayed.record["input_tokens"],
        "output_tokens": relayed.record["output_tokens"],
    }
    assert relayed.record["total_cost"] is not None
    assert_recorded_at_done(relayed)


def test_a_stream_whose_last_read_ends_its_body_ends_with_that_read_in_one_message() -> None:
    """When the read that brings a stream's last bytes also brings the end of its body, those bytes go
    with the answer's end, one message (one write) rather than two, and the body is not read again."""
    chunk = (
        b'data: {"id":"c1","model":"gpt-4o-mini","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n'
    )
    first = chunk % (b'{"content":"Hi"}', b"null")
    last = (
        chunk % (b"{}", b'"stop"')
        + b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":24}}\n\n'
        + b"data: [DONE]\n\n"
    )
    relayed = Relayed([first, last], "chat", strip=False, cost_in_response=False, ends_known=True)
    assert [message["body"] for message in relayed.client.messages] == [first, last]
    assert [message.get("more_body", False) for message in relayed.client.messages] == [True, False]
    assert relayed.response.released and relayed.response.ends_read == 0
    assert (relayed.record["input_tokens"], relayed.record["output_tokens"]) == (12, 24)


def assert_recorded_at_the_last_event(relayed: Relayed, stream: Stream) -> None:
    """The record ran once, when the stream's last event was read: the client had none of it yet (nor the
    cost comment before it), though it had every byte before it the reads had brought."""
    (sent,) = relayed.sent_when_recorded
    assert len(sent) <= stream.offset(stream.end) and relayed.client.body.startswith(sent)


def assert_recorded_from_the_provider_s_usage(relayed: Relayed) -> None:
    """What came after the last event changed nothing in the record: it holds the provider's usage."""
    assert relayed.record == relayed.call.record(relayed.call.settle()) | {
        "duration_ms": relayed.record["duration_ms"]
    }


@settings(max_examples=160, deadline=None)
@given(st.sampled_from(["anthropic", "responses", "images", "transcriptions"]), st.data())
def test_a_stream_without_done_is_recorded_at_its_last_event_with_the_cost_just_before_it(
    api: Api, data: st.DataObject
) -> None:
    """Anthropic's message_stop, the Responses API's response.completed (.incomplete, .failed), an image
    stream's completed event, a transcript's transcript.text.done: each ends its stream as [DONE] does."""
    stream, reads = data.draw(relayed_streams(api))
    cost_in_response = data.draw(st.booleans())
    relayed = Relayed(
        reads, api, strip=False, cost_in_response=cost_in_response, ends_known=data.draw(st.booleans())
    )
    body, expected, at = relayed.client.body, stream.bytes(), stream.offset(stream.end)
    if cost_in_response:
        assert body[:at] == expected[:at] and body.endswith(expected[at:])
        assert (
            cost_of(body[at : len(body) - len(expected) + at])["total_cost"] == relayed.record["total_cost"]
        )
        assert relayed.record["total_cost"] is not None
    else:
        assert body == expected
    assert summary(relayed.call.facts) == summary(facts_of(api, spec_events(expected)))
    assert_recorded_at_the_last_event(relayed, stream)
    assert_recorded_from_the_provider_s_usage(relayed)
    finish_reason = relayed.record["finish_reason"]
    assert finish_reason in ("end_turn", "completed", "incomplete", "failed", None)
    assert (relayed.record["usage_source"], relayed.record["error"]) == ("provider", None)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(["chat", "anthropic", "responses", "images", "transcriptions"]), st.data())
def test_a_stream_the_provider_ends_with_an_error_event_is_recorded_at_it_as_a_stream_error(
    api: Api, data: st.DataObject
) -> None:
    """An `error` event in a 200 stream (Anthropic's overloaded_error, the Responses API's `error`, an image
    or transcription stream's, a chat chunk with an `error`) ends it: the record is written when it is
    read, says `stream_error`, and bills the usage so far, estimated where the provider gave no final count
    (Anthropic's input counts from message_start are exact). The error reaches the client even where the
    usage chunk would be dropped."""
    stream, reads = data.draw(relayed_streams(api, error=True))
    relayed = Relayed(
        reads, api, strip=data.draw(st.booleans()), cost_in_response=True, ends_known=data.draw(st.booleans())
    )
    body, expected, at = relayed.client.body, stream.bytes(), stream.offset(stream.end)
    assert body[:at] == expected[:at] and body.endswith(expected[at:])
    assert cost_of(body[at : len(body) - len(expected) + at])["total_cost"] == relayed.record["total_cost"]
    assert_recorded_at_the_last_event(relayed, stream)
    record = relayed.record
    assert (record["status_code"], record["error"]) == (200, "stream_error")
    # One output token per event up to the error; a ping (or [DONE]) after it came too late to count.
    assert record["output_tokens"] == len(spec_events(expected[: stream.offset(stream.end + 1)]))
    assert record["usage_source"] == "estimated" and record["total_cost"] is not None
    if api == "anthropic":
        start = json.loads(spec_events(expected)[0])
        assert record["input_tokens"] == start["message"]["usage"]["input_tokens"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["chat", "anthropic", "responses", "images", "transcriptions"]), st.data())
def test_a_stream_whose_body_ends_anywhere_gives_the_client_no_event_it_would_not_have_had(
    api: Api, data: st.DataObject
) -> None:
    """A body may end inside an event (a provider, or a body without a length whose connection closes
    early): SSE clients drop that unfinished event. The cost comment still comes, once, with the record's
    cost, but never finishes that event with its blank line: the client reads the events it would have
    read from the provider (less the usage chunk we asked for), and the provider's bytes around it."""
    stream = data.draw(STREAMS[api]())
    whole = stream.bytes()
    body = whole[: data.draw(st.integers(0, len(whole)))]
    strip = api == "chat" and data.draw(st.booleans())
    reads = data.draw(reads_of(body)) if body else []
    relayed = Relayed(reads, api, strip=strip, cost_in_response=True, ends_known=data.draw(st.booleans()))
    received = relayed.client.body
    (comment,) = COMMENT.finditer(received)
    assert cost_of(comment.group())["total_cost"] == relayed.record["total_cost"]
    expected = spec_events(body)
    if strip:
        (usage,) = spec_events(stream.blocks[usage_block(stream)])
        expected = [event for event in expected if event != usage]
    else:
        assert received[: comment.start()] + received[comment.end() :] == body
    assert spec_events(received) == expected


# Bodies read whole, and bodies passed through.


def chat_body(spaced: bool, prompt: int, output: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    message = {"role": "assistant", "content": "Hello! " + KEY[:3]}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return dumps({"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [choice], "usage": usage}, spaced)


def run_whole_body(
    pieces: list[bytes],
    call: Call,
    length: int | None,
    cost_in_response: bool,
    status: int = 200,
    encoding: bytes | None = None,
) -> tuple[Client, Reads]:
    client, response = Client(), Reads(pieces, status)
    call.status = status
    headers: Headers = [(b"content-type", b"application/json")]
    if encoding is not None:
        headers.append((b"content-encoding", encoding))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))

    async def run() -> None:
        secret = hidden_key(call.provider, status)
        for message in await relay_whole_body(
            client.send, call, response, headers, length, cost_in_response, secret
        ):
            await client.send(message)

    asyncio.run(run())
    return client, response


def header(client: Client, name: bytes) -> bytes | None:
    start = client.messages[0]
    assert start["type"] == "http.response.start"
    values = [value for key, value in start["headers"] if key == name]
    assert len(values) <= 1
    return values[0] if values else None


def test_an_answer_whose_usage_cannot_be_read_goes_to_the_client_whole_without_a_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug in reading the usage must cost the client nothing: its answer as sent, no cost header.
    def broken(body: bytes, api: Api) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(calls, "facts_from_body", broken)
    body = chat_body(False, 10, 5)
    call = new_call("chat", stream=False)
    client, _ = run_whole_body([body], call, len(body), cost_in_response=True)
    assert client.body == body
    assert header(client, b"x-meterproxy-cost") is None
    bill = call.settle()
    assert (bill.usage.input_tokens, bill.source, bill.cost) == (0, "none", None)
    assert bill.price is not None
    assert isinstance(bill.broken, RuntimeError)


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans(), st.booleans(), st.data())
def test_a_body_read_whole_passes_byte_for_byte_with_its_cost_in_the_headers(
    spaced: bool, prompt: int, output: int, known_length: bool, cost_in_response: bool, data: st.DataObject
) -> None:
    body = chat_body(spaced, prompt, output)
    pieces = data.draw(reads_of(body))
    call = new_call("chat", stream=False)
    client, response = run_whole_body(pieces, call, len(body) if known_length else None, cost_in_response)
    assert client.body == body
    assert [message["type"] for message in client.messages] == ["http.response.start", "http.response.body"]
    record = call.record(call.settle())
    assert (record["input_tokens"], record["output_tokens"]) == (prompt, output)
    cost = header(client, b"x-meterproxy-cost")
    if cost_in_response:
        assert record["total_cost"] is not None
        assert cost == decimal_text(record["total_cost"]).encode()
        assert header(client, b"x-meterproxy-currency") == b"USD"
    else:
        assert cost is None and header(client, b"x-meterproxy-currency") is None
    if known_length:  # the whole body is in: the connection goes back, never read past the body
        assert response.released and response.ends_read == 0


def test_an_unpriced_body_has_no_cost_headers() -> None:
    client, _ = run_whole_body([chat_body(False, 10, 5)], new_call("chat", False, priced=False), None, True)
    assert header(client, b"x-meterproxy-cost") is None and header(client, b"x-meterproxy-currency") is None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.booleans(), st.data())
def test_an_error_body_has_every_copy_of_the_provider_key_taken_out_however_the_reads_cut_it(
    copies: int, known_length: bool, data: st.DataObject
) -> None:
    body = b'{"error": {"message": "bad key ' + b" or ".join([KEY.encode()] * copies) + b'"}}'
    call = new_call("chat", stream=False)
    client, _ = run_whole_body(
        data.draw(reads_of(body)), call, len(body) if known_length else None, False, 401
    )
    assert client.body == body.replace(KEY.encode(), b"[REDACTED]")
    if known_length:
        assert header(client, b"content-length") == str(len(client.body)).encode()


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.booleans(), st.data())
def test_a_body_too_large_to_read_passes_as_it_comes_unmetered(
    body: bytes, known_length: bool, data: st.DataObject
) -> None:
    pieces, limit = data.draw(reads_of(body)), data.draw(st.integers(0, len(body) - 1))
    call = new_call("chat", stream=False)
    with mock.patch.object(relay, "MAX_READ_BODY", limit):
        client, response = run_whole_body(pieces, call, len(body) if known_length else None, True)
    assert client.body == body and call.unread
    assert header(client, b"x-meterproxy-cost") is None
    assert not client.messages[-1].get("more_body", False)
    if known_length:
        assert response.released and response.ends_read == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.booleans(), st.data())
def test_an_error_too_large_to_read_has_every_copy_of_the_key_taken_out_as_it_passes(
    copies: int, known_length: bool, data: st.DataObject
) -> None:
    body = b'{"error": {"message": "bad key ' + b" or ".join([KEY.encode()] * copies) + b'"}}'
    pieces, limit = data.draw(reads_of(body)), data.draw(st.integers(0, len(body) - 1))
    with mock.patch.object(relay, "MAX_READ_BODY", limit):
        client, _ = run_whole_body(
            pieces, new_call("chat", False), len(body) if known_length else None, False, 400
        )
    assert client.body == body.replace(KEY.encode(), b"[REDACTED]")
    assert header(client, b"content-length") is None  # its length changes as it passes


def test_a_compressed_error_too_large_to_read_is_withheld() -> None:
    body = gzip.compress(b'{"error": {"message": "bad key ' + KEY.encode() + b'"}}')
    with mock.patch.object(relay, "MAX_READ_BODY", 10):
        client, response = run_whole_body(
            [body[:20], body[20:]], new_call("chat", False), None, False, 401, b"gzip"
        )
    assert json.loads(client.body)["error"]["code"] == "upstream_error_withheld"
    assert header(client, b"content-encoding") is None and response.ends_read == 0  # the rest is never read


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.booleans(), st.data())
def test_a_body_passed_through_is_byte_for_byte_and_not_read_past_its_length(
    body: bytes, known_length: bool, ends_known: bool, data: st.DataObject
) -> None:
    pieces = data.draw(reads_of(body)) if body else []
    call, client, response = new_call("chat", stream=False), Client(), Reads(pieces, ends_known=ends_known)

    async def run() -> None:
        for message in await relay_body(
            client.send, call, response, len(body) if known_length else None, b""
        ):
            await client.send(message)

    asyncio.run(run())
    assert client.body == body and call.finished
    assert all(message["more_body"] for message in client.messages[:-1])
    assert not client.messages[-1].get("more_body", False)
    if (known_length or ends_known) and body:
        assert response.released and response.ends_read == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.integers(0, 300), st.data())
def test_a_stream_that_is_not_sse_passes_as_it_comes_and_is_kept_whole_to_read(
    body: bytes, ends_known: bool, limit: int, data: st.DataObject
) -> None:
    pieces = data.draw(reads_of(body)) if body else []
    call, client, response = new_call("chat", stream=True), Client(), Reads(pieces, ends_known=ends_known)

    async def run() -> None:
        for message in await relay_kept_body(client.send, call, response, []):
            await client.send(message)

    with mock.patch.object(relay, "MAX_READ_BODY", limit):
        asyncio.run(run())
    head, *sent = client.messages
    assert head["type"] == "http.response.start" and client.body == body and call.finished
    # Each read goes on as it arrives: the last one with the answer's end.
    assert [message["body"] for message in sent if message["body"]] == [piece for piece in pieces if piece]
    assert all(message["more_body"] for message in sent[:-1]) and not sent[-1].get("more_body", False)
    if len(body) <= limit:
        assert (call.body, call.unread) == (body, None)
    else:
        assert call.body is None and call.unread == "over 0 MiB"
    assert response.released == (ends_known and bool(body)) and response.ends_read == (
        not ends_known or not body
    )
