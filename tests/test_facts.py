"""StreamFacts: which events of a stream are read, skimmed or counted unread, and what is gathered."""

import json
from pathlib import Path

import pytest

from proxy.facts import StreamFacts
from proxy.sse import SSEScanner
from proxy.usage import Api, Usage

FIXTURES = Path(__file__).parent / "fixtures"


def test_stream_usage_chunk_is_found_and_flagged() -> None:
    facts = StreamFacts("chat")
    scanner = SSEScanner()
    stream = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    flagged = [event.data for event in scanner.feed(stream) if facts.observe(event.data)]
    usage_chunk = (FIXTURES / "openai_chat_stream_usage_chunk.sse").read_bytes()
    assert flagged == [usage_chunk[6:-2]]
    assert facts.usage == Usage(1000, 500, 1500, cached_tokens=200, reasoning_tokens=64)
    assert facts.finish_reason == "stop"
    assert facts.response_id == "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert facts.model == "gpt-4o-2024-08-06"
    assert facts.done
    assert facts.events == 10


def test_malformed_data_is_counted_and_skipped() -> None:
    facts = StreamFacts("chat")
    facts.observe(b'{"id":"a","choices":[]}')
    facts.observe(b'{"usage": {"prompt_tokens": 1')
    facts.observe(b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}')
    assert facts.malformed == 1
    assert facts.usage == Usage(4, 2, 6)


def test_only_events_that_can_change_the_record_are_left_to_be_read() -> None:
    facts = StreamFacts("chat")
    first = b'{"id": "c", "choices": [{"delta": {"content": "a"}, "finish_reason": null}]}'
    assert not facts.skim(first)  # the stream's first event is always read
    assert facts.observe(first) is False and facts.response_id == "c"
    # Written compactly or with spaces, an unset finish reason is nothing to read; a set one, usage, or
    # [DONE] is.
    assert facts.skim(b'{"choices": [{"delta": {"content": "b"}, "finish_reason": null}]}')
    assert facts.skim(b'{"choices":[{"delta":{"content":"c"},"finish_reason" :  null}]}')
    assert not facts.skim(b'{"choices": [{"delta": {}, "finish_reason": "stop"}]}')
    assert not facts.skim(b'{"choices": [], "usage": {"prompt_tokens": 3}}')
    assert not facts.skim(b"[DONE]")
    assert facts.events == 3


def test_unread_until_stops_before_anything_worth_reading() -> None:
    facts = StreamFacts("chat")
    plain = b'data: {"choices": [{"delta": {"content": "a"}, "finish_reason": null}]}\n\n'
    finish = b'data: {"choices": [{"delta": {}, "finish_reason": "length"}]}\n\n'
    assert facts.unread_until(plain * 3, 0) == 0  # the stream's first event is always read
    facts.count(1)
    assert facts.unread_until(plain * 3, len(plain)) == 3 * len(plain)
    assert facts.unread_until(plain * 2 + finish, 0) == 2 * len(plain) + finish.index(b'"finish_reason"')
    assert facts.unread_until(plain + b"data: [DONE]\n\n", 0) == len(plain) + len(b"data: ")
    gemini = StreamFacts("gemini")  # every Gemini chunk carries running usage: all are read
    gemini.count(1)
    assert gemini.unread_until(plain, 0) == 0


def content(text: str) -> bytes:
    return json.dumps({"choices": [{"delta": {"content": text}, "finish_reason": None}]}).encode()


def test_a_content_chunk_that_names_an_error_is_only_counted() -> None:
    """A string's quotes are escaped in JSON: content holding the word, or text like a key, is no
    `"error":` key, and its chunk is not parsed; an `"error": null` is none either."""
    facts = StreamFacts("chat")
    facts.observe(content(""))
    named = [content(text) for text in ["error", '"error": {"message": "x"}', "error:", '{"error":1}']]
    named.append(b'{"choices": [{"delta": {"content": "a"}, "finish_reason": null}], "error": null}')
    assert all(facts.skim(chunk) for chunk in named)
    run = b"".join(b"data: " + chunk + b"\n\n" for chunk in named)
    assert facts.unread_until(run, 0) == len(run)
    assert (facts.events, facts.done, facts.broken_off) == (1 + len(named), False, False)


OPENROUTER_ERROR = (
    b'{"id":"gen-1","object":"chat.completion.chunk","model":"openai/gpt-4o","provider":"OpenAI",'
    b'"error":{"code":"server_error","message":"Provider disconnected"},'
    b'"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'
)


@pytest.mark.parametrize(
    "chunk",
    [
        OPENROUTER_ERROR,
        b'{"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}',
        b'{"error":{"message":"boom","code":500},"choices":[],"usage":{"prompt_tokens":9}}',
        b'{"error": {"message": "boom"}, "usage": {"prompt_tokens": 57.0}}',  # read as a dict
    ],
    ids=["openrouter", "error-only", "with-usage", "untyped"],
)
def test_a_chat_chunk_with_an_error_breaks_the_stream_off_and_ends_it(chunk: bytes) -> None:
    facts = StreamFacts("chat")
    facts.observe(content("Sixty"))
    assert not facts.skim(chunk)
    assert facts.observe(chunk) is False  # never the usage chunk we may drop: the client must see it
    assert (facts.done, facts.broken_off, facts.events) == (True, True, 2)
    facts.observe(b"[DONE]")
    assert (facts.done, facts.broken_off) == (True, True)


def test_a_choice_finished_with_error_breaks_the_stream_off_but_leaves_it_to_its_done() -> None:
    """Without an `error` key the openai SDK reads on: the usage chunk and [DONE] may still come."""
    facts = StreamFacts("chat")
    facts.observe(content("Sixty"))
    facts.observe(b'{"choices": [{"delta": {}, "finish_reason": "error"}]}')
    assert (facts.done, facts.broken_off, facts.finish_reason) == (False, True, "error")
    assert facts.observe(b'{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}')
    facts.observe(b"[DONE]")
    assert (facts.done, facts.usage) == (True, Usage(9, 2, 11))


def test_an_error_chunk_after_done_changes_nothing() -> None:
    facts = StreamFacts("chat")
    facts.observe(content("Sixty"))
    facts.observe(b"[DONE]")
    facts.observe(b'{"error": {"message": "late"}}')
    assert (facts.done, facts.broken_off) == (True, False)


IMAGE_EDIT = (b'{"type":"image_edit.partial_image","b64_json":"AAAA"}', b'{"type":"image_edit.completed"')
TRANSCRIPT = (b'{"type":"transcript.text.delta","delta":"Hi"}', b'{"type":"transcript.text.done"')


@pytest.mark.parametrize(("api", "events"), [("images", IMAGE_EDIT), ("transcriptions", TRANSCRIPT)])
def test_an_image_or_transcript_stream_is_read_at_its_completed_event_only(
    api: Api, events: tuple[bytes, bytes]
) -> None:
    partial, done = events
    facts = StreamFacts(api)
    facts.observe(partial)
    assert facts.skim(partial)  # after the first event, those before the last are only counted
    facts.observe(done + b',"usage":{"type":"tokens","input_tokens":7,"output_tokens":3}}')
    assert (facts.usage, facts.events) == (Usage(7, 3, 10), 3)


@pytest.mark.parametrize(
    ("api", "last", "broken_off"),
    [
        ("anthropic", b'{"type": "message_stop"}', False),
        ("anthropic", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', True),
        ("responses", b'{"type":"response.completed","response":{"status":"completed"}}', False),
        ("responses", b'{"type":"response.incomplete","response":{"status":"incomplete"}}', False),
        ("responses", b'{"type":"response.failed","response":{"status":"failed"}}', False),
        ("responses", b'{"type": "error", "code": "server_error", "message": "boom", "param": null}', True),
        ("images", b'{"type":"image_generation.completed","usage":{"input_tokens":7}}', False),
        ("images", b'{"type": "image_edit.completed", "b64_json": "AAAA"}', False),
        ("transcriptions", b'{"type":"transcript.text.done","text":"Hi"}', False),
        ("images", b'{"type": "error", "error": {"code": "server_error", "message": "boom"}}', True),
        ("transcriptions", b'{"type":"error","error":{"type":"server_error","message":"boom"}}', True),
    ],
)
def test_the_last_event_of_a_stream_without_done_is_read_and_ends_it(
    api: Api, last: bytes, broken_off: bool
) -> None:
    facts = StreamFacts(api)
    facts.observe(b'{"type": "message_start"}' if api == "anthropic" else b'{"type": "response.created"}')
    assert facts.skim(b'{"type":"ping"}') and not facts.done
    # Nested in another event, the last event's type is read, but only an event's own type ends the
    # stream (here one that is not a string).
    nested = b'{"type": ["x"], "item": ' + last + b"}"
    assert not facts.skim(nested)
    facts.observe(nested)
    assert not facts.done
    assert not facts.skim(last)
    facts.observe(last)
    assert (facts.done, facts.broken_off) == (True, broken_off)
    facts.observe(b'{"type": "error"}')  # after the last event: the stream ended as it did
    assert (facts.done, facts.broken_off) == (True, broken_off)
