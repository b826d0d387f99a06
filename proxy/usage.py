"""Token usage read from provider responses, per API shape (a JSON body's or a stream event's usage
object), and estimated for a call cut before its usage came. No I/O; proxy/facts.py gathers the
rest of what an answer tells.

One convention holds across providers: `input_tokens` counts every prompt token, cached and
cache-written ones included (OpenAI's way); `cached_tokens` and `cache_write_tokens` are its parts,
and `cache_write_1h_tokens` the part of `cache_write_tokens` written to a 1-hour cache (Anthropic's).
Reasoning tokens are part of `output_tokens`.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson

Api = Literal["chat", "responses", "embeddings", "images", "transcriptions", "anthropic", "gemini"]


class Usage(NamedTuple):
    """A call's token counts. Usage, Cost and Bill are built for every call: NamedTuples, which are
    built about four times quicker than frozen dataclasses."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens written with a 1-hour TTL
    reasoning_tokens: int = 0
    provider_cost: float | None = None  # what the provider says the call cost (OpenRouter's usage.cost)


# No call comes near this many tokens; a count past it is garbage, like a negative one. Larger
# integers would not fit a record either (JSON readers keep 53 bits; orjson writes 64 at most).
_TOO_MANY = 1 << 53


class NotACount(ValueError):
    """A usage field holds something that is not a token count: the usage it came in is not trusted,
    since reading that part as 0 would bill the call as cheaper than it was."""


def _count(parent: dict[str, Any], key: str, within: str = "") -> int:
    """The token count at `key`: absent or null is 0, an integral float (57.0) is its integer, and
    anything else that is not a count (a bool, a string, -3, 57.5, 1e20) raises NotACount."""
    value = parent.get(key)
    if type(value) is int and 0 <= value < _TOO_MANY:
        return value
    if value is None:
        return 0
    if type(value) is float and value.is_integer() and 0 <= value < _TOO_MANY:
        return int(value)
    raise NotACount(f"{within}{key} is {reprlib.repr(value)}, not a token count")


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    """The detail object at `key` (cached, cache-written, reasoning tokens): absent or null is empty;
    anything else that is not an object raises NotACount, as the counts in it cannot be read."""
    return usage_object(usage.get(key), key) or {}


def usage_object(value: Any, name: str) -> dict[str, Any] | None:
    """A usage object, or None when the message has none (absent or null); anything else raises
    NotACount: the message says it has a usage, and it cannot be read."""
    if value is None or isinstance(value, dict):
        return value
    raise NotACount(f"{name} is {reprlib.repr(value)}, not an object")


def usage_from_openai(usage: Any) -> Usage | None:
    """Chat, completions and embeddings usage; DeepSeek's, Moonshot's and DashScope's cache fields;
    OpenRouter's cost.
    Raises NotACount, as every usage_from_ does, when a count it reads is there but not a count."""
    if (usage := usage_object(usage, "usage")) is None:
        return None
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    total = _count(usage, "total_tokens") or prompt + completion
    details = _details(usage, "prompt_tokens_details")
    cached = _count(details, "cached_tokens", "prompt_tokens_details.")
    hits = _count(usage, "prompt_cache_hit_tokens")
    moonshot = _count(usage, "cached_tokens")
    reasoning = _count(
        _details(usage, "completion_tokens_details"), "reasoning_tokens", "completion_tokens_details."
    )
    output, reasoning = _chat_output(prompt, completion, total, reasoning)
    cost = usage.get("cost")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=total,
        cached_tokens=cached or hits or moonshot,
        cache_write_tokens=_count(details, "cache_write_tokens", "prompt_tokens_details.")
        or _count(details, "cache_creation_input_tokens", "prompt_tokens_details."),
        reasoning_tokens=reasoning,
        provider_cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )


def _chat_output(prompt: int, completion: int, total: int, reasoning: int) -> tuple[int, int]:
    """A chat usage's output and reasoning tokens. OpenAI counts reasoning inside completion_tokens, so
    total_tokens is prompt plus completion. Some providers leave reasoning out of completion_tokens and
    count it in total_tokens only: Google's OpenAI-compatible endpoint says nowhere else how much it
    thought, and xAI gives it as reasoning_tokens beside completion_tokens. Both bill it as output: the
    tokens the total counts past the prompt and completion are output, and reasoning."""
    unreported = total - prompt - completion
    if unreported <= 0:
        return completion, reasoning
    return completion + unreported, max(reasoning, unreported)


def usage_from_responses(usage: Any) -> Usage | None:
    """OpenAI Responses API usage, and the GPT image models' (the same counts, text and image tokens
    alike). From GPT-5.6 on, OpenAI bills cache writes apart (1.25x input) and counts them in
    input_tokens_details.cache_write_tokens, a part of input_tokens as cached_tokens is."""
    if (usage := usage_object(usage, "usage")) is None:
        return None
    prompt = _count(usage, "input_tokens")
    output = _count(usage, "output_tokens")
    details = _details(usage, "input_tokens_details")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=_count(usage, "total_tokens") or prompt + output,
        cached_tokens=_count(details, "cached_tokens", "input_tokens_details."),
        cache_write_tokens=_count(details, "cache_write_tokens", "input_tokens_details."),
        reasoning_tokens=_count(
            _details(usage, "output_tokens_details"), "reasoning_tokens", "output_tokens_details."
        ),
    )


def usage_from_transcription(usage: Any) -> Usage | None:
    """OpenAI audio transcription usage: tokens (`"type": "tokens"`, audio and text tokens in), or for
    models billed by the second the audio's duration (`"type": "duration"`), which no price per token
    can say: no usage, never one of 0 tokens."""
    if isinstance(usage, dict) and usage.get("type") == "duration":
        return None
    return usage_from_responses(usage)


def usage_from_anthropic(counts: dict[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from input_tokens; ours includes them.

    Cache writes with a 1-hour TTL are billed at a higher price than 5-minute ones: their part of
    cache_creation_input_tokens is in cache_creation.ephemeral_1h_input_tokens.
    A compaction (the summary the API writes of a conversation grown past a threshold) runs on the
    called model and is billed as its tokens are, but is counted only in its entry of usage.iterations,
    outside the top-level counts: those counts are added (the sampling entries are those counts again).
    Thinking tokens (output_tokens_details.thinking_tokens) are part of output_tokens.
    """
    fresh = _count(counts, "input_tokens")
    read = _count(counts, "cache_read_input_tokens")
    written = _count(counts, "cache_creation_input_tokens")
    written_1h = _written_1h(counts, "")
    output = _count(counts, "output_tokens")
    thinking = _count(_details(counts, "output_tokens_details"), "thinking_tokens", "output_tokens_details.")
    for index, compaction in _compactions(counts.get("iterations")):
        within = f"iterations[{index}]."
        fresh += _count(compaction, "input_tokens", within)
        read += _count(compaction, "cache_read_input_tokens", within)
        written += _count(compaction, "cache_creation_input_tokens", within)
        written_1h += _written_1h(compaction, within)
        output += _count(compaction, "output_tokens", within)
    prompt = fresh + read + written
    return Usage(
        prompt,
        output,
        prompt + output,
        cached_tokens=read,
        cache_write_tokens=written,
        # Never more than the writes: a stream's message_delta may bring a new cache_creation_input_tokens
        # without its breakdown, leaving message_start's; writes of no known TTL are priced as 5-minute ones.
        cache_write_1h_tokens=min(written_1h, written),
        reasoning_tokens=thinking,
    )


def _written_1h(counts: dict[str, Any], within: str) -> int:
    """The cache writes of an Anthropic usage (or iterations entry) that have a 1-hour TTL."""
    ttl = usage_object(counts.get("cache_creation"), f"{within}cache_creation") or {}
    return _count(ttl, "ephemeral_1h_input_tokens", f"{within}cache_creation.")


def _compactions(iterations: Any) -> list[tuple[int, dict[str, Any]]]:
    """The compaction entries of an Anthropic usage's iterations, with their places in it. Iterations
    that are not a list, or an entry that is not an object, raise NotACount: a compaction's counts in
    them cannot be read."""
    if iterations is None:
        return []
    if not isinstance(iterations, list):
        raise NotACount(f"iterations is {reprlib.repr(iterations)}, not a list")
    entries = [(index, usage_object(entry, f"iterations[{index}]")) for index, entry in enumerate(iterations)]
    return [
        (index, entry) for index, entry in entries if entry is not None and entry.get("type") == "compaction"
    ]


def usage_from_gemini(meta: Any) -> Usage | None:
    """Gemini usageMetadata: thinking tokens are billed as output; a built-in tool's prompt tokens (the
    search results or code output a tool fed the model, `toolUsePromptTokenCount`, outside
    promptTokenCount but inside totalTokenCount) as input."""
    if (meta := usage_object(meta, "usageMetadata")) is None:
        return None
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    output = _count(meta, "candidatesTokenCount") + thoughts
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=_count(meta, "totalTokenCount") or prompt + output,
        cached_tokens=_count(meta, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


# OpenAI's chat (and embeddings) shape, typed: msgspec reads these fields and skips the rest (the
# content) without building it, in about half the time of parsing the whole body. A message
# with anything else in these fields (a wrong type, a negative count, even 57.0: msgspec's int is
# strict) does not fit, and is read as a dict by `absorb`, which reads 57.0 as 57 and trusts no usage
# with a count that is not a count.
_Count = Annotated[int, msgspec.Meta(ge=0, lt=_TOO_MANY)]


class _PromptDetails(msgspec.Struct):
    cached_tokens: _Count | None = None
    cache_write_tokens: _Count | None = None  # OpenAI's (GPT-5.6 on) and OpenRouter's
    cache_creation_input_tokens: _Count | None = None  # DashScope's explicit cache


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: _Count | None = None


class _ChatUsage(msgspec.Struct):
    prompt_tokens: _Count | None = None
    completion_tokens: _Count | None = None
    total_tokens: _Count | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None
    prompt_cache_hit_tokens: _Count | None = None
    cached_tokens: _Count | None = None
    cost: float | None = None

    def usage(self) -> Usage:
        """As usage_from_openai reads the same fields."""
        prompt = self.prompt_tokens or 0
        completion = self.completion_tokens or 0
        total = self.total_tokens or prompt + completion
        details = self.prompt_tokens_details or _NO_DETAILS
        reasoning = (self.completion_tokens_details or _NO_REASONING).reasoning_tokens or 0
        output, reasoning = _chat_output(prompt, completion, total, reasoning)
        return Usage(
            input_tokens=prompt,
            output_tokens=output,
            total_tokens=total,
            cached_tokens=details.cached_tokens or self.prompt_cache_hit_tokens or self.cached_tokens or 0,
            cache_write_tokens=details.cache_write_tokens or details.cache_creation_input_tokens or 0,
            reasoning_tokens=reasoning,
            provider_cost=self.cost,
        )


class _Choice(msgspec.Struct):
    finish_reason: str | None = None
    usage: _ChatUsage | None = None  # Moonshot's streams put the usage in the last choice


class ChatMessage(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _ChatUsage | None = None
    error: Any = None  # a stream broken off by the provider: its chunk has an error object


_NO_DETAILS = _PromptDetails()
_NO_REASONING = _CompletionDetails()
_CHAT = msgspec.json.Decoder(ChatMessage)


def chat_message(data: bytes) -> ChatMessage | None:
    """`data` read as a chat message, or None if it is not one of that exact shape (or not JSON)."""
    try:
        return _CHAT.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def estimate_usage(request: dict[str, Any], content_events: int, partial: Usage | None = None) -> Usage:
    """A rough usage for a call cut before the provider reported one: ~4 bytes a prompt token,
    one token per streamed chunk (how OpenAI-style servers stream). Input counts the provider already
    reported (`partial`, from Anthropic's message_start) are exact and kept."""
    if partial is not None:
        return partial._replace(
            output_tokens=content_events, total_tokens=partial.input_tokens + content_events
        )
    prompt = request.get("messages", request.get("input", request.get("contents", request.get("prompt", ""))))
    input_tokens = (_json_size(prompt) + 3) // 4
    return Usage(input_tokens, content_events, input_tokens + content_events)


def _json_size(value: Any) -> int:
    """The length of `value` as compact JSON. orjson reads JSON nested up to 1,024 levels but writes only
    254, so a request nested deeper (a client's prompt) is measured a part at a time, without recursion:
    written whole, it raised while its call's record was being built, and the call went unrecorded."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        pass
    size = 0
    parts = [value]
    while parts:
        part = parts.pop()
        if isinstance(part, dict):
            size += 2 + max(2 * len(part) - 1, 0)  # the braces, a colon per key, the commas between
            size += sum(len(orjson.dumps(key)) for key in part)
            parts.extend(part.values())
        elif isinstance(part, list):
            size += 2 + max(len(part) - 1, 0)  # the brackets, the commas between
            parts.extend(part)
        else:
            size += len(orjson.dumps(part))
    return size
