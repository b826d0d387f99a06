from pathlib import Path

from proxy.sse import SSEScanner
from proxy.usage import StreamFacts, Usage, estimate_usage, facts_from_body, usage_from_openai

FIXTURES = Path(__file__).parent / "fixtures"


def test_openai_body() -> None:
    facts = facts_from_body((FIXTURES / "openai_chat.json").read_bytes())
    assert facts is not None
    assert facts.response_id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert facts.model == "gpt-4o-2024-08-06"
    assert facts.finish_reason == "stop"
    assert facts.usage == Usage(1000, 500, 1500, cached_tokens=200, reasoning_tokens=64)


def test_deepseek_cache_hit_tokens_count_as_cached() -> None:
    facts = facts_from_body((FIXTURES / "deepseek_chat.json").read_bytes())
    assert facts is not None and facts.usage == Usage(1200, 300, 1500, cached_tokens=1024)


def test_cache_write_tokens() -> None:
    usage = usage_from_openai(
        {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cache_write_tokens": 30}}
    )
    assert usage == Usage(50, 5, 55, cache_write_tokens=30)


def test_not_json_or_not_an_object_gives_none() -> None:
    assert facts_from_body(b"<html>502 Bad Gateway</html>") is None
    assert facts_from_body(b'{"truncated": ') is None
    assert facts_from_body(b"[1, 2]") is None


def test_bad_counts_are_read_as_zero() -> None:
    assert usage_from_openai({"prompt_tokens": "12", "completion_tokens": -3, "total_tokens": True}) == Usage(
        0, 0, 0
    )
    assert usage_from_openai(None) is None


def test_stream_usage_chunk_is_found_and_flagged() -> None:
    facts = StreamFacts()
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


def test_running_totals_in_every_chunk_the_last_one_counts() -> None:
    facts = StreamFacts()
    for done in (1, 2, 3):
        chunk = (
            b'{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":9,"completion_tokens":%d}}'
            % done
        )
        assert facts.observe(chunk) is False
    assert facts.usage == Usage(9, 3, 12)


def test_malformed_data_is_counted_and_skipped() -> None:
    facts = StreamFacts()
    facts.observe(b'{"id":"a","choices":[]}')
    facts.observe(b'{"usage": {"prompt_tokens": 1')
    facts.observe(b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}')
    assert facts.malformed == 1
    assert facts.usage == Usage(4, 2, 6)


def test_estimate_is_rough_but_never_zero_for_a_started_stream() -> None:
    usage = estimate_usage({"messages": [{"role": "user", "content": "hello there"}]}, 7)
    # '[{"role":"user","content":"hello there"}]' is 41 bytes: ceil(41 / 4) = 11 prompt tokens
    assert usage == Usage(11, 7, 18)
