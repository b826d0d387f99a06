"""Token usage read from provider responses: a JSON body, or a stream's events one by one. No I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# An event is worth parsing only if it can change what we record: usage or a finish reason that is
# not null. Most chunks of a stream carry neither, and skipping their JSON parse keeps the scan cheap.
_INTERESTING = re.compile(rb'"(?:usage|finish_reason)"\s*:\s*(?!null)')


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_openai(usage: Any) -> Usage | None:
    """Usage from an OpenAI-shaped `usage` object (chat and completions; DeepSeek's cache fields)."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    if not isinstance(prompt_details, dict):
        prompt_details = {}
    completion_details = usage.get("completion_tokens_details")
    if not isinstance(completion_details, dict):
        completion_details = {}
    cached = _count(prompt_details.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens"))
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=_count(usage.get("total_tokens")) or prompt + completion,
        cached_tokens=cached,
        cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
        reasoning_tokens=_count(completion_details.get("reasoning_tokens")),
    )


@dataclass(slots=True)
class ResponseFacts:
    """What a response told us: its id, model, finish reason and usage (the last one seen counts)."""

    response_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    events: int = 0
    malformed: int = 0
    done: bool = False

    def absorb(self, message: dict[str, Any]) -> None:
        if self.response_id is None and isinstance(message.get("id"), str):
            self.response_id = message["id"]
        if self.model is None and isinstance(message.get("model"), str):
            self.model = message["model"]
        choices = message.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    self.finish_reason = choice["finish_reason"]
        usage = usage_from_openai(message.get("usage"))
        if usage is not None:
            self.usage = usage


def facts_from_body(body: bytes) -> ResponseFacts | None:
    """Facts from a non-streamed JSON body; None when the body is not a JSON object."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    facts = ResponseFacts()
    facts.absorb(message)
    return facts


class StreamFacts(ResponseFacts):
    """Facts gathered from an OpenAI-shaped SSE stream, one event's data at a time."""

    def observe(self, data: bytes) -> bool:
        """Take one event's data; return True when it is a usage-only chunk (no choices, only usage)."""
        if data == b"[DONE]":
            self.done = True
            return False
        self.events += 1
        if self.events > 1 and _INTERESTING.search(data) is None:
            return False
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.malformed += 1
            return False
        if not isinstance(message, dict):
            self.malformed += 1
            return False
        self.absorb(message)
        return message.get("choices") == [] and isinstance(message.get("usage"), dict)


def estimate_usage(request: dict[str, Any], content_events: int) -> Usage:
    """A rough usage for a call cut before the provider reported one: ~4 bytes a prompt token,
    one token per streamed chunk (how OpenAI-style servers stream)."""
    prompt = request.get("messages", request.get("prompt", ""))
    input_tokens = (len(orjson.dumps(prompt)) + 3) // 4
    return Usage(input_tokens, content_events, input_tokens + content_events)
