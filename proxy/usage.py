"""Token usage read from provider responses, per API shape: a JSON body, or a stream's events one by
one. No I/O.

One convention holds across providers: `input_tokens` counts every prompt token, cached and
cache-written ones included (OpenAI's way); `cached_tokens` and `cache_write_tokens` are its parts.
Reasoning tokens are part of `output_tokens`.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson

Api = Literal["chat", "responses", "embeddings", "anthropic", "gemini"]

# An event is worth parsing only if it can change what we record. Most chunks of a stream carry
# nothing of the kind, and skipping their JSON parse keeps the scan cheap. Gemini's every chunk
# carries running usage, so all of them are read.
_WORTH_READING: dict[Api, re.Pattern[bytes]] = {
    "chat": re.compile(rb'"(?:usage|finish_reason)"\s*+:\s*+(?!null)'),  # possessive: not `": null` either
    "responses": re.compile(rb'"type"\s*:\s*"response\.(?:created|completed|incomplete|failed)"'),
    "anthropic": re.compile(rb'"type"\s*:\s*"message_(?:start|delta)"'),
    "embeddings": re.compile(rb'"usage"'),
    "gemini": re.compile(rb""),
}


class Usage(NamedTuple):
    """A call's token counts. Usage, Cost and Bill are built for every call: NamedTuples, which are
    built about four times quicker than frozen dataclasses."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
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
    raise NotACount(f"{within}{key} is {reprlib.repr(value)}")


def _part(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def usage_from_openai(usage: Any) -> Usage | None:
    """Chat, completions and embeddings usage; DeepSeek's and Moonshot's cache fields; OpenRouter's cost.
    Raises NotACount, as every usage_from_ does, when a count it reads is there but not a count."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    details = _part(usage, "prompt_tokens_details")
    cached = _count(details, "cached_tokens", "prompt_tokens_details.")
    hits = _count(usage, "prompt_cache_hit_tokens")
    moonshot = _count(usage, "cached_tokens")
    reasoning = _count(
        _part(usage, "completion_tokens_details"), "reasoning_tokens", "completion_tokens_details."
    )
    cost = usage.get("cost")
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=_count(usage, "total_tokens") or prompt + completion,
        cached_tokens=cached or hits or moonshot,
        cache_write_tokens=_count(details, "cache_write_tokens", "prompt_tokens_details."),
        reasoning_tokens=reasoning,
        provider_cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )


def usage_from_responses(usage: Any) -> Usage | None:
    """OpenAI Responses API usage."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage, "input_tokens")
    output = _count(usage, "output_tokens")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=_count(usage, "total_tokens") or prompt + output,
        cached_tokens=_count(_part(usage, "input_tokens_details"), "cached_tokens", "input_tokens_details."),
        reasoning_tokens=_count(
            _part(usage, "output_tokens_details"), "reasoning_tokens", "output_tokens_details."
        ),
    )


def usage_from_anthropic(counts: dict[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from input_tokens; ours includes them."""
    fresh = _count(counts, "input_tokens")
    read = _count(counts, "cache_read_input_tokens")
    written = _count(counts, "cache_creation_input_tokens")
    output = _count(counts, "output_tokens")
    prompt = fresh + read + written
    return Usage(prompt, output, prompt + output, cached_tokens=read, cache_write_tokens=written)


def usage_from_gemini(meta: Any) -> Usage | None:
    """Gemini usageMetadata: thinking tokens are billed as output."""
    if not isinstance(meta, dict):
        return None
    prompt = _count(meta, "promptTokenCount")
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
    cache_write_tokens: _Count | None = None


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
        details = self.prompt_tokens_details or _NO_DETAILS
        return Usage(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=self.total_tokens or prompt + completion,
            cached_tokens=details.cached_tokens or self.prompt_cache_hit_tokens or self.cached_tokens or 0,
            cache_write_tokens=details.cache_write_tokens or 0,
            reasoning_tokens=(self.completion_tokens_details or _NO_REASONING).reasoning_tokens or 0,
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


_CHAT_SHAPED = frozenset({"chat", "embeddings"})
_NO_DETAILS = _PromptDetails()
_NO_REASONING = _CompletionDetails()
_CHAT = msgspec.json.Decoder(ChatMessage)


def chat_message(data: bytes) -> ChatMessage | None:
    """`data` read as a chat message, or None if it is not one of that exact shape (or not JSON)."""
    try:
        return _CHAT.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass(slots=True)
class ResponseFacts:
    """What a response told us: its id, model, finish reason and usage (the last one seen counts: one
    with a count that is not a count leaves none)."""

    api: Api
    response_id: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    events: int = 0
    malformed: int = 0
    unread: int = 0  # events with a line too long to read (sse.MAX_LINE): passed on, not parsed
    done: bool = False
    # Usage so far, not the final one: an Anthropic stream's message_start has the input counts and a
    # placeholder output count (1); only message_delta brings the output.
    partial: bool = False
    # What the last usage that was not trusted held: its field that is not a count, and the value.
    not_a_count: str | None = None
    _anthropic: dict[str, Any] = field(default_factory=dict)

    def absorb(self, message: dict[str, Any]) -> None:
        try:
            self._absorb(message)
        except NotACount as exc:
            # Each shape reads its usage last, so the message's other facts are in.
            self.usage = None
            self.partial = False
            self.not_a_count = str(exc)

    def _absorb(self, message: dict[str, Any]) -> None:
        if self.api == "anthropic":
            self._absorb_anthropic(message)
        elif self.api == "responses":
            self._absorb_responses(message.get("response") if "response" in message else message)
        elif self.api == "gemini":
            self._note(message.get("responseId"), message.get("modelVersion"))
            for candidate in _list(message.get("candidates")):
                if isinstance(candidate, dict) and isinstance(candidate.get("finishReason"), str):
                    self.finish_reason = candidate["finishReason"]
            self.usage = usage_from_gemini(message.get("usageMetadata")) or self.usage
        else:
            self._note(message.get("id"), message.get("model"))
            usage = message.get("usage")
            for choice in _list(message.get("choices")):
                if isinstance(choice, dict):
                    if isinstance(choice.get("finish_reason"), str):
                        self.finish_reason = choice["finish_reason"]
                    if usage is None:  # Moonshot's streams put the usage in the last choice
                        usage = choice.get("usage")
            self.usage = usage_from_openai(usage) or self.usage

    def absorb_chat(self, message: ChatMessage) -> None:
        """What absorb() takes from the same message as a dict."""
        self._note(message.id, message.model)
        usage = message.usage
        for choice in message.choices or ():
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            if usage is None:
                usage = choice.usage
        if usage is not None:
            self.usage = usage.usage()

    def _note(self, response_id: Any, model: Any) -> None:
        if self.response_id is None and isinstance(response_id, str):
            self.response_id = response_id
        if self.model is None and isinstance(model, str):
            self.model = model

    def _absorb_responses(self, response: Any) -> None:
        if not isinstance(response, dict):
            return
        self._note(response.get("id"), response.get("model"))
        status = response.get("status")
        reason = _part(response, "incomplete_details").get("reason")
        if isinstance(reason, str) or isinstance(status, str):
            self.finish_reason = reason if isinstance(reason, str) else status
        self.usage = usage_from_responses(response.get("usage")) or self.usage

    def _absorb_anthropic(self, message: dict[str, Any]) -> None:
        # A stream's message_start carries the message (input and cache counts); message_delta the
        # final output count, and sometimes input and cache counts too: the later ones win.
        body = message.get("message") if message.get("type") == "message_start" else message
        if not isinstance(body, dict):
            return
        self._note(body.get("id"), body.get("model"))
        delta = _part(body, "delta")
        reason = delta.get("stop_reason", body.get("stop_reason"))
        if isinstance(reason, str):
            self.finish_reason = reason
        counts = body.get("usage")
        if isinstance(counts, dict):
            self._anthropic.update({key: value for key, value in counts.items() if value is not None})
            self.usage = usage_from_anthropic(self._anthropic)
            self.partial = message.get("type") == "message_start"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def facts_from_body(body: bytes, api: Api) -> ResponseFacts | None:
    """Facts from a non-streamed JSON body (or a JSON array of chunks); None when it is not JSON. A chat
    body is read for its usage even when a string the typed read skips (the content) is not UTF-8."""
    if api in _CHAT_SHAPED and (typed := chat_message(body)) is not None:
        facts = ResponseFacts(api)
        facts.absorb_chat(typed)
        return facts
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    facts = ResponseFacts(api)
    for part in message if isinstance(message, list) else [message]:
        if not isinstance(part, dict):
            return None
        facts.absorb(part)
    return facts


class StreamFacts(ResponseFacts):
    """Facts gathered from an SSE stream, one event's data at a time."""

    def skim(self, data: bytes) -> bool:
        """Count an event that cannot change what is recorded and return True: not the first, not
        [DONE], nothing worth reading. False: the event is left for observe()."""
        if self.events and data != b"[DONE]" and _WORTH_READING[self.api].search(data) is None:
            self.events += 1
            return True
        return False

    def unread_until(self, events: bytes, start: int) -> int:
        """How far from `start` in `events` (a run of whole or partial events) nothing can change what
        is recorded: up to the first text the API's pattern finds, or [DONE]; all of it if neither is
        there; none of it before the stream's first event is read. The events before that offset need
        only be counted (`count`)."""
        if not self.events:
            return start
        found = _WORTH_READING[self.api].search(events, start)
        end = found.start() if found is not None else len(events)
        done = events.find(b"[DONE]", start, end)
        return done if done >= 0 else end

    def count(self, events: int) -> None:
        """Count events that unread_until() let pass unread."""
        self.events += events

    def observe(self, data: bytes) -> bool:
        """Take one event's data; return True when it is a usage-only chat chunk (no choices)."""
        return False if self.skim(data) else self.read(data)

    def read(self, data: bytes) -> bool:
        """observe() for an event skim() has already left to be read."""
        if data == b"[DONE]":
            self.done = True
            return False
        self.events += 1
        if self.api in _CHAT_SHAPED and (typed := chat_message(data)) is not None:
            self.absorb_chat(typed)
            return self.api == "chat" and typed.choices == [] and typed.usage is not None
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.malformed += 1
            return False
        if not isinstance(message, dict):
            self.malformed += 1
            return False
        self.absorb(message)
        return self.api == "chat" and message.get("choices") == [] and isinstance(message.get("usage"), dict)


def estimate_usage(request: dict[str, Any], content_events: int, partial: Usage | None = None) -> Usage:
    """A rough usage for a call cut before the provider reported one: ~4 bytes a prompt token,
    one token per streamed chunk (how OpenAI-style servers stream). Input counts the provider already
    reported (`partial`, from Anthropic's message_start) are exact and kept."""
    if partial is not None:
        return partial._replace(
            output_tokens=content_events, total_tokens=partial.input_tokens + content_events
        )
    prompt = request.get("messages", request.get("input", request.get("contents", request.get("prompt", ""))))
    input_tokens = (len(orjson.dumps(prompt)) + 3) // 4
    return Usage(input_tokens, content_events, input_tokens + content_events)
