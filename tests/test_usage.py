import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.facts import ResponseFacts, StreamFacts, facts_from_body
from proxy.usage import Api, NotACount, Usage, chat_message, estimate_usage, usage_from_openai

FIXTURES = Path(__file__).parent / "fixtures"


def test_openai_body() -> None:
    facts = facts_from_body((FIXTURES / "openai_chat.json").read_bytes(), "chat")
    assert facts is not None
    assert facts.response_id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert facts.model == "gpt-4o-2024-08-06"
    assert facts.finish_reason == "stop"
    assert facts.usage == Usage(1000, 500, 1500, cached_tokens=200, reasoning_tokens=64)


def test_deepseek_cache_hit_tokens_count_as_cached() -> None:
    facts = facts_from_body((FIXTURES / "deepseek_chat.json").read_bytes(), "chat")
    assert facts is not None and facts.usage == Usage(1200, 300, 1500, cached_tokens=1024)


def test_cache_write_tokens() -> None:
    usage = usage_from_openai(
        {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cache_write_tokens": 30}}
    )
    assert usage == Usage(50, 5, 55, cache_write_tokens=30)


def test_reasoning_that_only_the_total_counts_is_output() -> None:
    # Google's OpenAI-compatible endpoint: completion_tokens without the thinking, total_tokens with it,
    # no reasoning count (https://discuss.ai.google.dev/t/endpoint-https-generativelanguage-googleapis-com-v1beta-openai-chat-completions-is-not-compliant-with-api-specs/127400).
    gemini = {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}
    assert usage_from_openai(gemini) == Usage(9, 94, 103, reasoning_tokens=93)
    # xAI: "The reasoning token count is outputted in the reasoning_tokens field, separated from the
    # completion_tokens" (https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/grok/capabilities/reasoning).
    xai = {
        "prompt_tokens": 36,
        "completion_tokens": 10,
        "total_tokens": 736,
        "completion_tokens_details": {"reasoning_tokens": 690},
    }
    assert usage_from_openai(xai) == Usage(36, 700, 736, reasoning_tokens=690)
    for usage in (gemini, xai):
        typed = chat_message(orjson.dumps({"choices": [], "usage": usage}))
        assert typed is not None and typed.usage is not None
        assert typed.usage.usage() == usage_from_openai(usage)


def test_not_json_or_not_an_object_gives_none() -> None:
    assert facts_from_body(b"<html>502 Bad Gateway</html>", "chat") is None
    assert facts_from_body(b'{"truncated": ', "chat") is None
    assert facts_from_body(b"[1, 2]", "chat") is None


# Each kind of value that is not a token count, and how the field's value is shown in NotACount.
NOT_COUNTS = {
    "string": ("57", "'57'"),
    "negative": (-3, "-3"),
    "too large": (2**53, str(2**53)),
    "too large float": (1e20, "1e+20"),
    "bool": (True, "True"),
    "fractional": (57.5, "57.5"),
    "object": ({"n": 57}, "{'n': 57}"),
}

# Per API shape: a message whose usage is good, and a way to put a value in one of its counts.
Shape = tuple[Api, Callable[[Any], dict[str, Any]], Usage, str]
SHAPES: dict[str, Shape] = {
    "chat": (
        "chat",
        lambda count: {"id": "c", "usage": {"prompt_tokens": 10, "completion_tokens": count}},
        Usage(10, 57, 67),
        "completion_tokens",
    ),
    "chat cache details": (
        "chat",
        lambda count: {"usage": {"prompt_tokens": 80, "prompt_tokens_details": {"cached_tokens": count}}},
        Usage(80, 0, 80, cached_tokens=57),
        "prompt_tokens_details.cached_tokens",
    ),
    "embeddings": (
        "embeddings",
        lambda count: {"object": "list", "usage": {"prompt_tokens": count, "total_tokens": 57}},
        Usage(57, 0, 57),
        "prompt_tokens",
    ),
    "responses": (
        "responses",
        lambda count: {
            "id": "r",
            "status": "completed",
            "usage": {"input_tokens": 10, "output_tokens": count},
        },
        Usage(10, 57, 67),
        "output_tokens",
    ),
    "responses reasoning": (
        "responses",
        lambda count: {
            "usage": {
                "input_tokens": 10,
                "output_tokens": 60,
                "output_tokens_details": {"reasoning_tokens": count},
            }
        },
        Usage(10, 60, 70, reasoning_tokens=57),
        "output_tokens_details.reasoning_tokens",
    ),
    "responses cache writes": (
        "responses",
        lambda count: {"usage": {"input_tokens": 80, "input_tokens_details": {"cache_write_tokens": count}}},
        Usage(80, 0, 80, cache_write_tokens=57),
        "input_tokens_details.cache_write_tokens",
    ),
    "images": (
        "images",
        # the shape of a body, and of the stream's image_generation.completed event
        lambda count: {
            "type": "image_generation.completed",
            "usage": {"input_tokens": 10, "output_tokens": count},
        },
        Usage(10, 57, 67),
        "output_tokens",
    ),
    "transcriptions": (
        "transcriptions",
        lambda count: {
            "type": "transcript.text.done",
            "text": "Hi",
            "usage": {"type": "tokens", "input_tokens": count, "output_tokens": 10},
        },
        Usage(57, 10, 67),
        "input_tokens",
    ),
    "anthropic thinking": (
        "anthropic",
        lambda count: {
            "type": "message",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 60,
                "output_tokens_details": {"thinking_tokens": count},
            },
        },
        Usage(10, 60, 70, reasoning_tokens=57),
        "output_tokens_details.thinking_tokens",
    ),
    "anthropic": (
        "anthropic",
        lambda count: {"type": "message", "usage": {"input_tokens": 10, "cache_read_input_tokens": count}},
        Usage(67, 0, 67, cached_tokens=57),
        "cache_read_input_tokens",
    ),
    "anthropic 1-hour cache writes": (
        "anthropic",
        lambda count: {
            "type": "message",
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 60,
                "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": count},
            },
        },
        Usage(70, 0, 70, cache_write_tokens=60, cache_write_1h_tokens=57),
        "cache_creation.ephemeral_1h_input_tokens",
    ),
    "gemini": (
        "gemini",
        lambda count: {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": count}},
        Usage(10, 57, 67),
        "candidatesTokenCount",
    ),
}


@pytest.mark.parametrize("kind", NOT_COUNTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_count_that_is_not_a_count_leaves_a_body_with_no_usage(shape: str, kind: str) -> None:
    # Read as 0, the call would be billed as cheaper than it was: the whole usage is untrusted instead.
    api, message, _, field = SHAPES[shape]
    value, shown = NOT_COUNTS[kind]
    facts = facts_from_body(orjson.dumps(message(value)), api)
    assert facts is not None and facts.usage is None
    assert facts.not_a_count == f"{field} is {shown}, not a token count"


@pytest.mark.parametrize("kind", NOT_COUNTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_count_that_is_not_a_count_leaves_a_stream_with_no_usage(shape: str, kind: str) -> None:
    api, message, good, _ = SHAPES[shape]

    def event(count: Any) -> bytes:
        if api == "responses":
            return orjson.dumps({"type": "response.completed", "response": message(count)})
        return orjson.dumps(
            {**message(count), "type": "message_delta"} if api == "anthropic" else message(count)
        )

    facts = StreamFacts(api)
    facts.observe(event(57))
    assert facts.usage == good and facts.not_a_count is None
    # The last usage seen counts: one that is not trusted leaves the call with none, not the earlier one.
    facts.observe(event(NOT_COUNTS[kind][0]))
    assert facts.usage is None and facts.not_a_count is not None


@pytest.mark.parametrize("shape", SHAPES)
def test_an_integral_float_is_read_as_its_count(shape: str) -> None:
    api, message, good, _ = SHAPES[shape]
    for count in (57.0, 5.7e1):
        facts = facts_from_body(orjson.dumps(message(count)), api)
        assert facts is not None and facts.usage == good and facts.not_a_count is None


@pytest.mark.parametrize("shape", SHAPES)
def test_an_absent_or_null_count_is_0(shape: str) -> None:
    api, message, good, _ = SHAPES[shape]
    facts = facts_from_body(orjson.dumps(message(None)), api)
    assert facts is not None and facts.usage is not None and facts.not_a_count is None
    assert facts.usage == facts_from_body(orjson.dumps(message(0)), api).usage  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("api", "details"),
    [
        ("chat", "prompt_tokens_details"),
        ("chat", "completion_tokens_details"),
        ("responses", "input_tokens_details"),
        ("responses", "output_tokens_details"),
        ("anthropic", "output_tokens_details"),
        ("anthropic", "cache_creation"),
    ],
)
@pytest.mark.parametrize("value", ["x", [], 200, True])
def test_a_detail_object_that_is_not_an_object_leaves_no_usage(api: Api, details: str, value: Any) -> None:
    # Read as empty, its cache-write tokens would be billed at the input price, its cached ones at full.
    names = ("prompt_tokens", "completion_tokens") if api == "chat" else ("input_tokens", "output_tokens")
    usage = {names[0]: 300, names[1]: 20, details: value}
    message = {"usage": usage} if api == "chat" else {"status": "completed", "usage": usage}
    facts = facts_from_body(orjson.dumps(message), api)
    assert facts is not None and facts.usage is None
    assert facts.not_a_count == f"{details} is {reprlib.repr(value)}, not an object"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("value", ["x", [], 36, True])
def test_a_usage_that_is_not_an_object_leaves_no_usage(shape: str, value: Any) -> None:
    # The message says it has a usage: one that cannot be read is not trusted, and not an earlier one.
    api, message, good, _ = SHAPES[shape]
    name = "usageMetadata" if api == "gemini" else "usage"
    spoilt = message(57)
    if api == "responses":
        spoilt = {"type": "response.completed", "response": {**spoilt, name: value}}
    else:
        spoilt = {**spoilt, name: value, **({"type": "message_delta"} if api == "anthropic" else {})}
    body = facts_from_body(orjson.dumps(spoilt), api)
    assert body is not None and body.usage is None
    assert body.not_a_count == f"{name} is {reprlib.repr(value)}, not an object"
    stream = StreamFacts(api)
    stream.observe(orjson.dumps(message(57)))
    assert stream.usage == good
    stream.observe(orjson.dumps(spoilt))
    assert stream.usage is None and stream.not_a_count == body.not_a_count


def test_null_details_and_counts_are_read_as_none_sent() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": None,
        "prompt_tokens_details": None,
        "completion_tokens_details": {"reasoning_tokens": None},
        "cached_tokens": None,
    }
    assert usage_from_openai(usage) == Usage(12, 3, 15)
    assert usage_from_openai(None) is None


def test_the_largest_count_is_read_and_one_past_it_is_not_typed_or_not() -> None:
    # 2**64 is read as an int by the typed read and as a float by orjson: neither may reach a record.
    assert usage_from_openai({"prompt_tokens": 2**53 - 1}) == Usage(2**53 - 1, 0, 2**53 - 1)
    for too_many in (2**53, 2**64):
        body = b'{"usage":{"prompt_tokens":%d,"completion_tokens":5}}' % too_many
        facts = facts_from_body(body, "chat")
        assert facts is not None and facts.usage is None
    with pytest.raises(NotACount, match=r"^prompt_tokens is 9007199254740992, not a token count$"):
        usage_from_openai({"prompt_tokens": 2**53})
    anthropic = facts_from_body(
        b'{"type":"message","usage":{"input_tokens":%d,"output_tokens":7}}' % 2**64, "anthropic"
    )
    assert anthropic is not None and anthropic.usage is None


def test_a_count_that_is_not_a_count_leaves_the_other_facts_read() -> None:
    body = b'{"id":"c9","model":"m","choices":[{"finish_reason":"stop"}],"usage":{"completion_tokens":"57"}}'
    facts = facts_from_body(body, "chat")
    assert facts is not None and facts.usage is None
    assert (facts.response_id, facts.model, facts.finish_reason) == ("c9", "m", "stop")


def test_a_long_value_that_is_not_a_count_is_shown_cut() -> None:
    facts = facts_from_body(orjson.dumps({"usage": {"prompt_tokens": "9" * 10_000}}), "chat")
    assert facts is not None and facts.not_a_count is not None and len(facts.not_a_count) < 80


def test_running_totals_in_every_chunk_the_last_one_counts() -> None:
    facts = StreamFacts("chat")
    for done in (1, 2, 3):
        chunk = (
            b'{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":%d}}'
            % done
        )
        assert facts.observe(chunk) is False
    assert facts.usage == Usage(9, 3, 12)


def test_estimate_is_rough_but_never_zero_for_a_started_stream() -> None:
    usage = estimate_usage({"messages": [{"role": "user", "content": "hello there"}]}, 7)
    # '[{"role":"user","content":"hello there"}]' is 41 bytes: ceil(41 / 4) = 11 prompt tokens
    assert usage == Usage(11, 7, 18)


def test_anthropic_stream_counts_cache_parts_inside_input_and_takes_late_counts() -> None:
    facts = StreamFacts("anthropic")
    start = (
        b'{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":25,'
        b'"cache_creation_input_tokens":3000,"cache_read_input_tokens":6000,"output_tokens":1}}}'
    )
    assert facts.observe(start) is False
    assert facts.partial and facts.usage == Usage(9025, 1, 9026, cached_tokens=6000, cache_write_tokens=3000)
    # Cut here, message_start's input is kept and its placeholder output count replaced by the estimate.
    assert estimate_usage({}, 4, facts.usage) == Usage(
        9025, 4, 9029, cached_tokens=6000, cache_write_tokens=3000
    )
    for data in (
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}',
        b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":812,"input_tokens":30}}',
        b'{"type":"message_stop"}',
    ):
        assert facts.observe(data) is False
    assert not facts.partial
    assert facts.usage == Usage(9030, 812, 9842, cached_tokens=6000, cache_write_tokens=3000)
    assert (facts.response_id, facts.model, facts.finish_reason) == ("msg_1", "claude-sonnet-4-5", "end_turn")


def test_anthropic_1_hour_cache_writes_are_their_part_of_the_cache_writes() -> None:
    body = (
        b'{"id":"msg_3","type":"message","model":"claude-sonnet-4-6","stop_reason":"end_turn",'
        b'"usage":{"input_tokens":1000,"cache_creation_input_tokens":3000,"cache_read_input_tokens":6000,'
        b'"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":742}}'
    )
    facts = facts_from_body(body, "anthropic")
    assert facts is not None and facts.usage == Usage(
        10000, 742, 10742, cached_tokens=6000, cache_write_tokens=3000, cache_write_1h_tokens=2000
    )


def test_anthropic_stream_keeps_message_starts_1_hour_writes_until_a_later_breakdown() -> None:
    facts = StreamFacts("anthropic")
    facts.observe(
        b'{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":25,'
        b'"cache_creation_input_tokens":1536,"cache_read_input_tokens":18432,'
        b'"cache_creation":{"ephemeral_5m_input_tokens":512,"ephemeral_1h_input_tokens":1024},"output_tokens":1}}}'
    )
    written = {"cached_tokens": 18432, "cache_write_tokens": 1536, "cache_write_1h_tokens": 1024}
    assert facts.partial and facts.usage == Usage(19993, 1, 19994, **written)
    # Cut here, the stream's estimate keeps the 1-hour part, as it keeps the other input counts.
    assert estimate_usage({}, 4, facts.usage) == Usage(19993, 4, 19997, **written)
    facts.observe(ANTHROPIC_DELTA % b'"output_tokens":389')
    assert facts.usage == Usage(19993, 389, 20382, **written)
    breakdown = b'"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":1536}'
    facts.observe(ANTHROPIC_DELTA % (b'"output_tokens":390,' + breakdown))
    assert facts.usage == Usage(19993, 390, 20383, **{**written, "cache_write_1h_tokens": 1536})


def test_anthropic_1_hour_writes_are_never_more_than_the_writes() -> None:
    # message_delta's cumulative cache_creation_input_tokens came without a breakdown, below message_start's
    # 1-hour count: the writes counted are the later ones, and no more of them than that are 1-hour ones.
    facts = StreamFacts("anthropic")
    facts.observe(
        b'{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":25,'
        b'"cache_creation_input_tokens":1536,"cache_creation":{"ephemeral_1h_input_tokens":1536},"output_tokens":1}}}'
    )
    facts.observe(ANTHROPIC_DELTA % b'"output_tokens":389,"cache_creation_input_tokens":1000')
    assert facts.usage == Usage(1025, 389, 1414, cache_write_tokens=1000, cache_write_1h_tokens=1000)


ANTHROPIC_START = (
    b'{"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":%s,'
    b'"cache_read_input_tokens":6000,"output_tokens":1}}}'
)
ANTHROPIC_DELTA = b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{%s}}'


def test_anthropic_message_start_with_a_count_that_is_not_a_count_leaves_no_usage_not_a_partial_one() -> None:
    facts = StreamFacts("anthropic")
    facts.observe(ANTHROPIC_START % b'"25"')
    # Not partial: a stream cut here is estimated whole, as one cut before any usage.
    assert facts.usage is None and not facts.partial
    assert facts.not_a_count == "input_tokens is '25', not a token count"
    facts.observe(ANTHROPIC_DELTA % b'"output_tokens":812')
    assert facts.usage is None  # the counts merged still hold the input count that is not a count
    assert facts.finish_reason == "end_turn"
    facts.observe(ANTHROPIC_DELTA % b'"output_tokens":812,"input_tokens":30')
    assert facts.usage == Usage(6030, 812, 6842, cached_tokens=6000)  # a later count replaced it


def test_anthropic_message_delta_with_a_count_that_is_not_a_count_leaves_no_usage() -> None:
    facts = StreamFacts("anthropic")
    facts.observe(ANTHROPIC_START % b"25")
    assert facts.partial and facts.usage == Usage(6025, 1, 6026, cached_tokens=6000)
    facts.observe(ANTHROPIC_DELTA % b'"output_tokens":812.5')
    assert facts.usage is None and not facts.partial
    assert facts.not_a_count == "output_tokens is 812.5, not a token count"


def test_gemini_running_totals_the_last_one_not_a_count_leaves_no_usage() -> None:
    facts = StreamFacts("gemini")
    for count in (b"10", b"20", b"-1"):
        facts.observe(b'{"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":%s}}' % count)
    assert facts.usage is None and facts.not_a_count == "candidatesTokenCount is -1, not a token count"


COMPACTION = {
    "type": "compaction",
    "input_tokens": 3000,
    "cache_read_input_tokens": 150000,
    "cache_creation_input_tokens": 7000,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 5000},
    "output_tokens": 3500,
}
SAMPLING = {
    "type": "message",
    "input_tokens": 2000,
    "cache_read_input_tokens": 21000,
    "cache_creation_input_tokens": 0,
    "output_tokens": 1000,
}
COMPACTED = {
    "input_tokens": 2000,
    "cache_read_input_tokens": 21000,
    "cache_creation_input_tokens": 0,
    "output_tokens": 1000,
    "iterations": [COMPACTION, SAMPLING],
}
# The top-level counts and the compaction's: 2000 + 21000 + 3000 + 150000 + 7000 in, 1000 + 3500 out;
# the compaction's writes, 5000 of them 1-hour ones, are the call's.
WITH_COMPACTION = Usage(
    183000, 4500, 187500, cached_tokens=171000, cache_write_tokens=7000, cache_write_1h_tokens=5000
)


def test_an_anthropic_compaction_is_counted_beside_the_top_level_counts() -> None:
    # The compaction's tokens are billed but only in its iterations entry; the sampling entries are the
    # top-level counts again, and are not added twice.
    facts = facts_from_body(orjson.dumps({"type": "message", "usage": COMPACTED}), "anthropic")
    assert facts is not None and facts.usage == WITH_COMPACTION
    stream = StreamFacts("anthropic")
    start = {**COMPACTED, "output_tokens": 1}
    del start["iterations"]
    stream.observe(orjson.dumps({"type": "message_start", "message": {"id": "msg_c", "usage": start}}))
    assert stream.usage == Usage(23000, 1, 23001, cached_tokens=21000)
    delta = orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": COMPACTED})
    stream.observe(delta)
    stream.observe(delta)  # the counts are cumulative: a repeated message_delta changes nothing
    assert stream.usage == WITH_COMPACTION and not stream.partial


@pytest.mark.parametrize(
    ("iterations", "reason"),
    [
        ("x", "iterations is 'x', not a list"),
        ([SAMPLING, 7], "iterations[1] is 7, not an object"),
        ([{**COMPACTION, "output_tokens": -5}], "iterations[0].output_tokens is -5, not a token count"),
        ([{**COMPACTION, "cache_creation": 7}], "iterations[0].cache_creation is 7, not an object"),
        (
            [{**COMPACTION, "cache_creation": {"ephemeral_1h_input_tokens": "5000"}}],
            "iterations[0].cache_creation.ephemeral_1h_input_tokens is '5000', not a token count",
        ),
    ],
)
def test_anthropic_iterations_that_cannot_be_read_leave_no_usage(iterations: Any, reason: str) -> None:
    facts = facts_from_body(orjson.dumps({"usage": {**COMPACTED, "iterations": iterations}}), "anthropic")
    assert facts is not None and facts.usage is None and facts.not_a_count == reason


def test_anthropic_body() -> None:
    body = (
        b'{"id":"msg_2","type":"message","model":"claude-haiku-4-5","stop_reason":"max_tokens",'
        b'"usage":{"input_tokens":100,"cache_read_input_tokens":0,"output_tokens":50}}'
    )
    facts = facts_from_body(body, "anthropic")
    assert facts is not None and facts.usage == Usage(100, 50, 150) and not facts.partial
    assert facts.finish_reason == "max_tokens"


def test_a_responses_stream_cut_before_its_end_has_no_finish_reason() -> None:
    facts = StreamFacts("responses")
    facts.observe(b'{"type":"response.queued","response":{"id":"resp_1","status":"queued"}}')
    facts.observe(
        b'{"type":"response.created","response":{"id":"resp_1","model":"o3","status":"in_progress"}}'
    )
    facts.observe(b'{"type":"response.output_text.delta","delta":"Hi"}')
    facts.observe(b'{"type":"response.created","response":{"id":"resp_1","status":["not", "text"]}}')
    assert (facts.response_id, facts.model, facts.finish_reason) == ("resp_1", "o3", None)


def test_responses_stream_reads_the_completed_event() -> None:
    facts = StreamFacts("responses")
    facts.observe(
        b'{"type":"response.created","response":{"id":"resp_1","model":"o3","status":"in_progress"}}'
    )
    facts.observe(b'{"type":"response.output_text.delta","delta":"Hi"}')
    facts.observe(
        b'{"type":"response.completed","response":{"id":"resp_1","model":"o3","status":"completed","usage":'
        b'{"input_tokens":900,"input_tokens_details":{"cached_tokens":512},"output_tokens":300,'
        b'"output_tokens_details":{"reasoning_tokens":256},"total_tokens":1200}}}'
    )
    assert facts.usage == Usage(900, 300, 1200, cached_tokens=512, reasoning_tokens=256)
    assert (facts.response_id, facts.model, facts.finish_reason) == ("resp_1", "o3", "completed")


def test_gemini_thoughts_are_output_and_a_json_array_of_chunks_is_read() -> None:
    body = (
        b'[{"candidates":[{"content":{}}],"usageMetadata":{"promptTokenCount":10},"modelVersion":"gemini-2.5-pro"},'
        b'{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4000,'
        b'"cachedContentTokenCount":1000,"candidatesTokenCount":200,"thoughtsTokenCount":300,'
        b'"totalTokenCount":4500},"responseId":"r-9"}]'
    )
    facts = facts_from_body(body, "gemini")
    assert facts is not None
    assert facts.usage == Usage(4000, 500, 4500, cached_tokens=1000, reasoning_tokens=300)
    assert (facts.response_id, facts.model, facts.finish_reason) == ("r-9", "gemini-2.5-pro", "STOP")


def test_openrouter_cost_and_moonshot_cached_tokens() -> None:
    usage = usage_from_openai(
        {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.00042, "cached_tokens": 4}
    )
    assert usage == Usage(10, 2, 12, cached_tokens=4, provider_cost=0.00042)


def test_moonshot_stream_usage_inside_the_last_choice() -> None:
    facts = StreamFacts("chat")
    facts.observe(b'{"id":"c1","model":"kimi-k2","choices":[{"index":0,"delta":{"content":"Hi"}}]}')
    facts.observe(
        b'{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":19,'
        b'"completion_tokens":13,"total_tokens":32,"cached_tokens":8}}]}'
    )
    assert facts.usage == Usage(19, 13, 32, cached_tokens=8)
    assert facts.finish_reason == "stop"


# The chat shape is read typed (msgspec) when it fits and as a dict by absorb() when it does not; the
# two must agree on every message. Messages come in two kinds: fitting (every field read has its type,
# so the typed path reads them) and anything (values of every JSON type in every field read).
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**63 - 1),
    st.just(2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=1000).map(float),  # 57.0: a count, though msgspec's int refuses it
    st.text(max_size=3),
    st.just([]),
    st.just({}),
)


def _maybe(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _chat_messages(fitting: bool) -> st.SearchStrategy[dict[str, Any]]:
    def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        # fitting: null now and then (absent fields are left out by _maybe)
        return st.one_of(good, good, good, st.none()) if fitting else st.one_of(good, _ANY)

    count = field(st.integers(min_value=0, max_value=1000))
    usage = _maybe(
        {
            "prompt_tokens": count,
            "completion_tokens": count,
            "total_tokens": count,
            "prompt_tokens_details": field(_maybe({"cached_tokens": count, "cache_write_tokens": count})),
            "completion_tokens_details": field(_maybe({"reasoning_tokens": count})),
            "prompt_cache_hit_tokens": count,
            "cached_tokens": count,
            "cost": field(st.one_of(st.floats(min_value=0, max_value=10), st.integers(0, 10))),
            "other": _ANY,
        }
    )
    choice = _maybe({"finish_reason": field(st.sampled_from(["stop", "length"])), "usage": field(usage)})
    if not fitting:
        choice = st.one_of(choice, _ANY)
    return _maybe(
        {
            "id": field(st.text(max_size=5)),
            "model": field(st.text(max_size=5)),
            "choices": field(st.lists(choice, max_size=3)),
            "usage": field(usage),
            "object": _ANY,
        }
    )


_FITTING = _chat_messages(fitting=True)
_MESSAGE = st.one_of(_FITTING, _chat_messages(fitting=False))


def _read_as_dict(message: dict[str, Any]) -> tuple[Any, ...]:
    facts = ResponseFacts("chat")
    facts.absorb(message)
    return facts.response_id, facts.model, facts.finish_reason, facts.usage, facts.not_a_count


def _facts(facts: ResponseFacts) -> tuple[Any, ...]:
    return facts.response_id, facts.model, facts.finish_reason, facts.usage, facts.not_a_count


@settings(max_examples=500, deadline=None)
@given(_MESSAGE)
def test_a_chat_body_read_typed_gives_what_reading_it_as_a_dict_gives(message: dict[str, Any]) -> None:
    facts = facts_from_body(orjson.dumps(message), "chat")
    assert facts is not None
    assert _facts(facts) == _read_as_dict(message)


@settings(max_examples=500, deadline=None)
@given(_MESSAGE)
def test_a_chat_event_read_typed_gives_what_reading_it_as_a_dict_gives(message: dict[str, Any]) -> None:
    facts = StreamFacts("chat")
    usage_only = facts.observe(orjson.dumps(message))
    assert usage_only == (message.get("choices") == [] and isinstance(message.get("usage"), dict))
    assert _facts(facts) == _read_as_dict(message)
    assert (facts.events, facts.malformed) == (1, 0)


_NOT_A_COUNT = st.one_of(
    st.text(max_size=3),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=-1),
    st.integers(min_value=2**53, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda f: not (f.is_integer() and 0 <= f < 2**53)
    ),
    st.just([]),
    st.just({}),
)
_COUNT_PATHS = [
    ("prompt_tokens",),
    ("completion_tokens",),
    ("total_tokens",),
    ("prompt_cache_hit_tokens",),
    ("cached_tokens",),
    ("prompt_tokens_details", "cached_tokens"),
    ("prompt_tokens_details", "cache_write_tokens"),
    ("completion_tokens_details", "reasoning_tokens"),
]


@settings(max_examples=300, deadline=None)
@given(_FITTING, st.sampled_from(_COUNT_PATHS), _NOT_A_COUNT, st.booleans())
def test_a_chat_message_with_a_count_that_is_not_a_count_has_no_usage_either_way(
    message: dict[str, Any], path: tuple[str, ...], value: Any, in_choice: bool
) -> None:
    usage = message.get("usage") or {}
    if len(path) == 2:
        usage = {**usage, path[0]: {**(usage.get(path[0]) or {}), path[1]: value}}
    else:
        usage = {**usage, path[0]: value}
    # Moonshot's streams put the usage in the last choice.
    spoilt = (
        {**message, "usage": None, "choices": [{"usage": usage}]}
        if in_choice
        else {**message, "usage": usage}
    )
    body = facts_from_body(orjson.dumps(spoilt), "chat")
    event = StreamFacts("chat")
    event.observe(orjson.dumps(spoilt))
    for facts in (body, event):
        assert facts is not None and facts.usage is None
        assert facts.not_a_count == f"{'.'.join(path)} is {reprlib.repr(value)}, not a token count"
        assert _facts(facts) == _read_as_dict(spoilt)


@given(_FITTING)
def test_fitting_chat_messages_are_read_typed(message: dict[str, Any]) -> None:
    assert chat_message(orjson.dumps(message)) is not None


def test_the_usual_chat_shapes_are_read_typed() -> None:
    body = (FIXTURES / "openai_chat.json").read_bytes()
    usage_chunk = b'{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":24}}'
    assert chat_message(body) is not None and chat_message(usage_chunk) is not None
    assert chat_message(b'{"usage": {"prompt_tokens": -1}}') is None  # left to absorb(): no usage
    assert chat_message(b'{"usage": {"prompt_tokens": 1.0}}') is None  # left to absorb(): 1


def test_a_chat_body_with_bad_utf8_outside_the_fields_read_is_still_metered() -> None:
    body = b'{"choices":[{"message":{"content":"\xff"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3}}'
    facts = facts_from_body(body, "chat")
    assert facts is not None and facts.usage == Usage(3, 0, 3) and facts.finish_reason == "stop"
