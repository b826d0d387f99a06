"""Issue 6, case 8, SSE chaos: however a stream is cut into reads, with CRLF, comments, a multi-byte
character split across reads, `event: error` mid-stream or a 10 MB data line, the client gets the
upstream's bytes (less the usage chunk the proxy asked for), the record is the same (a stream broken
off by an error chunk is recorded there), and the scanner's buffer stays bounded (a line over
`sse.MAX_LINE` is passed on unread).

Most of it drives the meter in-process with a fake upstream at its seam (the `Upstream` protocol), so
that hypothesis can try hundreds of chunkings; one case runs the real proxy against the stub.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from unittest import mock

from conftest import CLIENT_KEY, Reads, RunningProxy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Message
from upstream_stub import Stream, UpstreamStub

from proxy import sse
from proxy.calls import Call
from proxy.config import Config
from proxy.configfile import parse_config
from proxy.meter import Meter
from proxy.records import CostRecord
from proxy.relay import _StreamEdit
from proxy.routing import Routes
from proxy.sse import SSEScanner
from proxy.upstream import Headers

HELLO = [{"role": "user", "content": "Say hello"}]
PROMPT = (len(json.dumps(HELLO, separators=(",", ":"))) + 3) // 4  # HELLO's tokens, estimated
TEXT = 'aé你🙂 \n"\\'  # one, two, three and four UTF-8 bytes; JSON escapes
BIG = 10 << 20
LIMIT = 1 << 20  # sse.MAX_LINE, lowered where a test needs a line too long to read


def config(cost_in_response: bool = False) -> Config:
    text = json.dumps(
        {
            "features": {"cost_in_response": {"enabled": cost_in_response}},
            "providers": {
                "openai": {
                    "base_url": "http://upstream.invalid/v1",
                    "models": {"gpt-4o-mini": {"pricing": {"input": 0.15, "output": 0.60}}},
                }
            },
        }
    )
    return parse_config(text, {})


class PiecesUpstream:
    """The `Upstream` seam: every call is answered with the same pieces."""

    def __init__(self, pieces: list[bytes], reset: bool) -> None:
        self.pieces = pieces
        self.reset = reset

    async def send(self, method: str, url: str, headers: Headers, body: bytes, timeout: float) -> Reads:
        return Reads(self.pieces, headers=[(b"content-type", b"text/event-stream")], reset=self.reset)

    async def close(self) -> None:
        pass


class Records:
    """Takes the place of the record writer: keeps what the meter appends."""

    def __init__(self) -> None:
        self.records: list[CostRecord] = []

    def append(self, record: CostRecord) -> None:
        self.records.append(record)


def through_the_meter(
    pieces: list[bytes], cost_in_response: bool = False, reset: bool = False
) -> tuple[bytes, CostRecord]:
    """One streamed chat call through the meter, answered with `pieces` (then a reset, if `reset`): what
    the client got, the record."""
    settings = config(cost_in_response)
    meter = Meter(settings, Routes(settings.providers))
    records = Records()
    request = json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "stream": True}).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {CLIENT_KEY}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "state": {"upstream": PiecesUpstream(pieces, reset), "writer": records},
    }
    sent: list[Message] = []

    async def call() -> None:
        requests = iter([{"type": "http.request", "body": request, "more_body": False}])
        stays = asyncio.Event()  # the client never leaves

        async def receive() -> Message:
            message = next(requests, None)
            if message is None:
                await stays.wait()
            return message or {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await meter(scope, receive, send)

    asyncio.run(call())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    if not reset:
        assert "more_body" not in sent[-1] or not sent[-1]["more_body"], "the stream did not end"
    (record,) = records.records
    return b"".join(message.get("body", b"") for message in sent[1:]), record


def chunk(content: str, nl: bytes) -> bytes:
    payload: dict[str, Any] = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    payload["choices"] = [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + nl + nl


def usage_event(prompt: int, output: int, nl: bytes) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    payload = {"id": "chatcmpl-x", "model": "gpt-4o-mini", "choices": [], "usage": usage}
    return b"data: " + json.dumps(payload).encode() + nl + nl


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


def broken_off(stream: bytes) -> tuple[bytes, int] | None:
    """Where the provider broke `stream` off with its error chunk, and the events up to it (the error
    included): the call is recorded there, its usage estimated, whatever follows. None: not broken off."""
    at = stream.find(b"event: error")
    return None if at < 0 else (stream[at:], stream[:at].count(b"data: ") + 1)


@st.composite
def chaotic_streams(draw: st.DrawFn) -> tuple[bytes, bytes, tuple[int, int], list[bytes]]:
    """A chat stream with CRLF or LF, keep-alive comments, multi-byte text, maybe `event: error` (the
    error chunk OpenAI-compatible servers break a stream off with; the rest of the stream follows it
    anyway), its usage chunk and [DONE]; and the pieces it arrives in."""
    nl = draw(st.sampled_from([b"\n", b"\r\n"]))
    parts = []
    for index, text in enumerate(draw(st.lists(st.text(alphabet=TEXT, max_size=12), min_size=1, max_size=6))):
        if draw(st.booleans()):
            parts.append(b": keep-alive" + nl + nl)
        if index == 1 and draw(st.booleans()):
            parts.append(b"event: error" + nl + b'data: {"error": {"message": "overloaded"}}' + nl + nl)
        parts.append(chunk(text, nl))
    usage = (draw(st.integers(1, 10**6)), draw(st.integers(1, 10**6)))
    asked_for = usage_event(*usage, nl)
    stream = b"".join([*parts, asked_for, b"data: [DONE]" + nl + nl])
    cuts = draw(st.lists(st.integers(1, len(stream) - 1), max_size=30))
    return stream, asked_for, usage, split(stream, cuts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chaotic_streams())
def test_any_chunking_of_a_chaotic_stream_reaches_the_client_whole_with_the_same_usage(
    case: tuple[bytes, bytes, tuple[int, int], list[bytes]],
) -> None:
    stream, asked_for, (prompt, output), pieces = case
    received, record = through_the_meter(pieces)

    assert received == stream.replace(asked_for, b"")
    if (error := broken_off(stream)) is not None:
        assert (record["input_tokens"], record["output_tokens"]) == (PROMPT, error[1])
        assert (record["usage_source"], record["error"]) == ("estimated", "stream_error")
        return
    assert (record["input_tokens"], record["output_tokens"]) == (prompt, output)
    assert (record["usage_source"], record["error"]) == ("provider", None)


@settings(max_examples=100, deadline=None)
@given(chaotic_streams())
def test_the_cost_comment_is_the_only_other_change(
    case: tuple[bytes, bytes, tuple[int, int], list[bytes]],
) -> None:
    stream, asked_for, _, pieces = case
    received, record = through_the_meter(pieces, cost_in_response=True)

    last = b"event: error" if broken_off(stream) else b"data: [DONE]"  # the comment goes just before it
    head, done, tail = stream.replace(asked_for, b"").rpartition(last)
    comment, _, rest = received[len(head) :].partition(b"\n\n")
    assert received[: len(head)] == head and rest == done + tail
    assert comment.startswith(b": meterproxy-cost {") and json.loads(
        comment[len(b": meterproxy-cost ") :]
    ) == {
        "total_cost": record["total_cost"],
        "currency": "USD",
        "input_tokens": record["input_tokens"],
        "output_tokens": record["output_tokens"],
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chaotic_streams(), st.data())
def test_a_stream_cut_off_is_estimated_from_every_event_it_delivered_whatever_the_reads(
    case: tuple[bytes, bytes, tuple[int, int], list[bytes]], data: st.DataObject
) -> None:
    """The estimate of a call cut before its usage counts one output token per event received (a few
    are read, the rest only counted): however the stream was read, every whole event counts once. One
    broken off by an error chunk before the cut was recorded at that chunk."""
    stream, asked_for, _, _ = case
    before_usage = stream[: stream.index(asked_for)]
    nl = b"\r\n" if b"\r\n" in stream else b"\n"
    events, error = before_usage.count(b"data: "), "upstream_reset"
    if (broken := broken_off(before_usage)) is not None:
        events, error = broken[1], "stream_error"
    cuts = data.draw(st.lists(st.integers(1, len(before_usage) - 1), max_size=30))

    received, record = through_the_meter(split(before_usage, cuts), reset=True)

    assert received == before_usage and before_usage.endswith(nl + nl)
    assert (record["usage_source"], record["error"]) == ("estimated", error)
    assert (record["input_tokens"], record["output_tokens"]) == (PROMPT, events)


def test_a_stream_that_ends_inside_an_event_gets_its_cost_comment_before_that_event() -> None:
    """The comment's blank line would finish the event, which the client drops unfinished; one that ends
    inside a line too long to keep, whose start the client has, gets the comment on a line of its own."""
    usage = b'"input_tokens": 0, "output_tokens": 0}\n\n'
    comment = b': meterproxy-cost {"total_cost": null, "currency": "USD", ' + usage
    first, last = chunk("a", b"\n"), b'data: {"id": "chatcmpl-x", "choices": []}'  # no newline, no [DONE]
    ended = chunk("a", b"\n") + chunk("b", b"\n")
    long = first + b"data: " + b"x" * (LIMIT + 10)
    for pieces, expected in (
        ([first + last], first + comment + last),
        (split(first + last, [len(first) + 5]), first + comment + last),
        ([first + last + b"\n"], first + comment + last + b"\n"),
        ([ended], ended + comment),
        (split(ended, [len(ended) // 2]), ended + comment),
        (split(long, [len(first) + 10]), long + b"\n" + comment),
        ([sse.BOM[:1], sse.BOM[1:]], sse.BOM + comment),  # no block at all: no line to end
    ):
        with mock.patch.object(sse, "MAX_LINE", LIMIT):
            assert through_the_meter(pieces, cost_in_response=True)[0] == expected, pieces


def big_stream(nl: bytes) -> tuple[bytes, bytes]:
    """A stream with a 10 MB data line (and a line after it in the same event) between ordinary chunks."""
    big = b"data: " + json.dumps({"id": "x", "choices": [{"delta": {"content": "y" * BIG}}]}).encode()
    asked_for = usage_event(31, 7, nl)
    parts = [chunk("before", nl), big + nl + b"data: {}" + nl + nl, chunk("after", nl), asked_for]
    return b"".join([*parts, b"data: [DONE]" + nl + nl]), asked_for


def random_pieces(data: bytes, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([1, 7, 4096, 65536, 300_000])
        yield data[position : position + size]
        position += size


def test_a_10_mb_data_line_passes_through_whole_whatever_the_reads() -> None:
    for seed, nl in enumerate([b"\n", b"\r\n", b"\n"]):
        stream, asked_for = big_stream(nl)
        received, record = through_the_meter(list(random_pieces(stream, seed)))
        assert received == stream.replace(asked_for, b""), f"seed {seed}"
        assert (record["input_tokens"], record["output_tokens"]) == (31, 7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_reads_that_end_around_an_oversized_line_lose_no_usage(data: st.DataObject) -> None:
    """A read ends inside a line longer than the scanner keeps, the next at or near that line's end (the
    rest of its event must stay skipped), a later one inside the usage chunk; more cuts anywhere."""
    nl = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    oversized = b"data: " + json.dumps({"choices": [{"delta": {"content": "z" * (LIMIT + 100)}}]}).encode()
    asked_for = usage_event(31, 7, nl)
    parts = [chunk("before", nl), oversized + nl + b"data: {}" + nl + nl, chunk("after", nl), asked_for]
    stream = b"".join([*parts, b"data: [DONE]" + nl + nl])
    line_start, line_end = len(parts[0]), len(parts[0]) + len(oversized) + len(nl)
    usage_at = stream.index(asked_for)
    cuts = [
        data.draw(st.integers(line_start + LIMIT + 1, line_end - len(nl) - 1), label="inside the long line"),
        data.draw(st.integers(line_end - 2, line_end + 2), label="near its end"),
        data.draw(st.integers(usage_at + 1, usage_at + len(asked_for) - 1), label="inside the usage chunk"),
        *data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=5), label="anywhere"),
    ]
    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        received, record = through_the_meter(split(stream, cuts))

    assert received == stream.replace(asked_for, b"")
    assert (record["input_tokens"], record["output_tokens"], record["usage_source"]) == (31, 7, "provider")


def test_the_scanner_keeps_no_more_than_one_line_of_a_10_mb_data_line_too_long_to_read() -> None:
    stream, _ = big_stream(b"\n")
    scanner = SSEScanner()
    fed = 0
    usage_seen = []
    tracemalloc.start()
    try:
        with mock.patch.object(sse, "MAX_LINE", LIMIT):
            for piece in random_pieces(stream, 99):
                usage_seen += [event for event in scanner.feed(piece) if b'"usage"' in event.data]
                fed += len(piece)
                # Every byte before `boundary` may be released: what the scanner and its caller hold is less.
                assert fed - scanner.boundary <= LIMIT + len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scanner.oversized == 1 and len(usage_seen) == 1
    assert peak < 4 * LIMIT, f"the scanner held {peak} bytes at once"


def responses_stream(image_bytes: int) -> bytes:
    """A Responses API stream whose `response.completed` carries a generated image (base64) and the usage."""
    image = base64.b64encode(b"\x89PNG" + b"\x00" * image_bytes).decode()
    response = {"id": "resp_1", "model": "gpt-image-x", "status": "in_progress", "usage": None}
    created: dict[str, Any] = {"type": "response.created", "response": response}
    completed: dict[str, Any] = {
        "type": "response.completed",
        "response": {
            **response,
            "status": "completed",
            "output": [{"type": "image_generation_call", "result": image}],
            "usage": {"input_tokens": 1000, "output_tokens": 4000, "total_tokens": 5000},
        },
    }
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
        for event in (created, completed)
    )


def image_call(pieces: list[bytes]) -> tuple[bytes, Call]:
    """A streamed Responses call relayed from `pieces`: what the client got, and the call."""
    text = json.dumps(
        {
            "providers": {
                "openai": {
                    "base_url": "http://upstream.invalid/v1",
                    "models": {"gpt-image-x": {"pricing": {"input": 5, "output": 40}}},
                }
            }
        }
    )
    provider = parse_config(text, {}).providers["openai"]
    call = Call("id", 0.0, 0.0, provider, "gpt-image-x", "responses", True, "user", {})
    call.sent, call.status = True, 200
    edit = _StreamEdit(call, strip=False, cost_in_response=False, record=lambda: None)
    return b"".join(edit.take(piece) for piece in pieces) + edit.scan(b""), call


def test_the_usage_in_a_10_mb_event_is_billed_however_the_reads_cut_it() -> None:
    """An image's `response.completed` (10 MB of base64) in 16 KiB reads, as a TLS stream brings it:
    its usage is read and priced as when it comes in one read."""
    stream = responses_stream(7_500_000)
    assert len(stream) > 10_000_000
    received, call = image_call([stream[i : i + 16384] for i in range(0, len(stream), 16384)])
    bill = call.settle()

    assert received == stream and image_call([stream])[0] == stream
    usage = bill.usage
    assert (usage.input_tokens, usage.output_tokens, bill.source) == (1000, 4000, "provider")
    assert bill.error is None
    assert bill.cost is not None and bill.cost.total_cost == 1000 * 5 / 1e6 + 4000 * 40 / 1e6 == 0.165


def test_an_event_too_long_to_read_is_passed_on_and_logged(caplog: Any) -> None:
    stream, asked_for = big_stream(b"\n")
    caplog.set_level(logging.WARNING, logger="meterproxy")
    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        received, record = through_the_meter(list(random_pieces(stream, 5)))

    assert received == stream.replace(asked_for, b"")
    assert (record["input_tokens"], record["output_tokens"]) == (31, 7)
    assert [r.getMessage() for r in caplog.records if "unread" in r.getMessage()] == [
        f"the stream of {record['proxy_request_id']} had 1 events with a line over 1 MiB, passed on unread: "
        "usage they carried is not in its record"
    ]


def test_a_chaotic_stream_through_the_real_proxy(proxy: RunningProxy, stub: UpstreamStub) -> None:
    """The same over real sockets: the stub writes the stream in odd pieces (a character split in two).
    Its error chunk broke it off: the record and the comment are there; what follows passes on."""
    nl = b"\r\n"
    asked_for = usage_event(12, 5, nl)
    stream = b"".join(
        [
            b": keep-alive" + nl + nl,
            chunk("héllo 你好 🙂", nl),
            b"event: error" + nl + b'data: {"error": {"message": "overloaded"}}' + nl + nl,
            chunk("y" * (3 << 20), nl),
            asked_for,
            b"data: [DONE]" + nl + nl,
        ]
    )
    emoji = stream.index("🙂".encode())
    pieces = split(stream, [3, emoji + 1, emoji + 3, len(stream) // 2, len(stream) - len(asked_for) - 20])
    stub.push(Stream(pieces))
    response = proxy.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "stream": True}).encode(),
        {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )

    record = proxy.wait_records(1)[0]
    comment = (
        b': meterproxy-cost {"total_cost": %s, "currency": "USD", "input_tokens": %d, "output_tokens": 2}\n\n'
        % (format(Decimal(repr(record["total_cost"])), "f").encode(), PROMPT)
    )
    head, error, tail = stream.replace(asked_for, b"").partition(b"event: error")
    assert response.body == head + comment + error + tail
    assert (record["input_tokens"], record["output_tokens"]) == (PROMPT, 2)
    assert (record["usage_source"], record["error"]) == ("estimated", "stream_error")
