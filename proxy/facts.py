"""What a provider's answer told us, gathered as it passes: the response's id, model, finish reason
and usage, from a JSON body or a stream's events one by one. No I/O; the usage itself is read by
proxy/usage.py, per API shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.usage import (
    Api,
    ChatMessage,
    NotACount,
    Usage,
    chat_message,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
    usage_from_responses,
    usage_from_transcription,
    usage_object,
)

# An event is worth parsing only if it can change what we record, or ends the stream. Most chunks of a
# stream carry nothing of the kind, and skipping their JSON parse keeps the scan cheap. Gemini's every
# chunk carries running usage, so all of them are read.
_WORTH_READING: dict[Api, re.Pattern[bytes]] = {
    # `"error":` is a key (a string holding the word has its quotes escaped); the parse checks its level.
    "chat": re.compile(rb'"(?:usage|finish_reason|error)"\s*+:\s*+(?!null)'),  # possessive: not `": null`
    "responses": re.compile(rb'"type"\s*:\s*"(?:response\.(?:created|completed|incomplete|failed)|error)"'),
    "anthropic": re.compile(rb'"type"\s*:\s*"(?:message_(?:start|delta|stop)|error)"'),
    "embeddings": re.compile(rb'"usage"'),
    "images": re.compile(rb'"type"\s*:\s*"(?:image_(?:generation|edit)\.completed|error)"'),
    "transcriptions": re.compile(rb'"type"\s*:\s*"(?:transcript\.text\.done|error)"'),
    "gemini": re.compile(rb""),
}
_CHAT_SHAPED = frozenset({"chat", "embeddings"})
# A Responses API response's statuses that end it: `queued` and `in_progress` (response.created's) are
# not how a response finished, so a stream cut before its end has no finish reason, as a chat one has.
_ENDED = frozenset({"completed", "incomplete", "failed", "cancelled"})
# The events that end a stream without [DONE], by their `type`: the answer is whole once one is read.
# An `error` event is how a provider breaks off a stream whose 200 is sent (Anthropic's overloaded_error,
# the Responses API's error); an image or transcription stream that gets one has no completed event to come.
_LAST_EVENTS: dict[Api, frozenset[str]] = {
    "anthropic": frozenset({"message_stop", "error"}),
    "responses": frozenset({"response.completed", "response.incomplete", "response.failed", "error"}),
    "images": frozenset({"image_generation.completed", "image_edit.completed", "error"}),
    "transcriptions": frozenset({"transcript.text.done", "error"}),
}


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
    done: bool = False  # the stream's last event is read: [DONE], one of _LAST_EVENTS, a chat error chunk
    broken_off: bool = False  # the provider could not finish the answer: it sent an error
    # Usage so far, not the final one: an Anthropic stream's message_start has the input counts and a
    # placeholder output count (1); only message_delta brings the output.
    partial: bool = False
    # Why the last usage seen was not trusted: the field, what it held, and what it should have been.
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
        elif self.api == "images":  # a body, or a stream's image_generation.completed event
            self.usage = usage_from_responses(message.get("usage")) or self.usage
        elif self.api == "transcriptions":  # a body, or a stream's transcript.text.done event
            self.usage = usage_from_transcription(message.get("usage")) or self.usage
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
        # An empty one names nothing (Azure opens a stream with its prompt filters, id and model ""):
        # a later message names them.
        if self.response_id is None and isinstance(response_id, str) and response_id:
            self.response_id = response_id
        if self.model is None and isinstance(model, str) and model:
            self.model = model

    def _absorb_responses(self, response: Any) -> None:
        if not isinstance(response, dict):
            return
        self._note(response.get("id"), response.get("model"))
        status = response.get("status")
        reason = _part(response, "incomplete_details").get("reason")
        if isinstance(reason, str) or (isinstance(status, str) and status in _ENDED):
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
        counts = usage_object(body.get("usage"), "usage")
        if counts is not None:
            self._anthropic.update({key: value for key, value in counts.items() if value is not None})
            self.usage = usage_from_anthropic(self._anthropic)
            self.partial = message.get("type") == "message_start"


def _part(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_BOM = b"\xef\xbb\xbf"


def _json(body: bytes) -> Any:
    """A body's (or a stream event's) JSON as the clients read it, or None when they cannot. orjson reads
    it quickly; what it refuses and Python's json.loads (the reader of the anthropic and openai packages)
    takes is read by json.loads: half of a UTF-16 surrogate pair, escaped ("\\ud83d") or as its bytes, as
    a text cut inside an emoji leaves it. The client has its answer then, and the call is billed as
    answered."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
        return None


def facts_from_body(body: bytes, api: Api) -> ResponseFacts | None:
    """Facts from a non-streamed JSON body (or a JSON array of chunks); None when it is not JSON. A chat
    body is read for its usage even when a string the typed read skips (the content) is not UTF-8; any
    body after a UTF-8 byte order mark, which JSON readers of clients skip (RFC 8259 section 8.1), and
    with half a surrogate pair in a string, which they take (see _json)."""
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if api in _CHAT_SHAPED and (typed := chat_message(body)) is not None:
        facts = ResponseFacts(api)
        facts.absorb_chat(typed)
        return facts
    message = _json(body)
    if api == "transcriptions" and not isinstance(message, dict):
        # A transcript asked for as text, srt or vtt: an answer without usage, not a bad one, also when
        # its text reads as JSON (a number said, a quoted line).
        return ResponseFacts(api)
    if message is None:
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
        [DONE], nothing worth reading (a stream's last event is). False: the event is left for observe()."""
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
            usage_only = typed.choices == [] and typed.usage is not None
            return self.api == "chat" and self._chat_chunk(usage_only, typed.error)
        message = _json(data)
        if not isinstance(message, dict):  # not JSON (None), or not an object
            self.malformed += 1
            return False
        self.absorb(message)
        if self.api == "chat":
            usage_only = message.get("choices") == [] and isinstance(message.get("usage"), dict)
            return self._chat_chunk(usage_only, message.get("error"))
        kind = message.get("type")
        if not self.done and isinstance(kind, str) and kind in _LAST_EVENTS.get(self.api, ()):
            self.done = True
            self.broken_off = kind == "error"
        return False

    def _chat_chunk(self, usage_only: bool, error: Any) -> bool:
        """After a chat chunk is absorbed: whether it is the usage-only chunk we may drop (no choices, a
        usage, no error). A chunk with an `error` at its top level, which the openai SDK raises at, breaks
        the stream off and ends it: the client stops there, and a [DONE] may never come. A choice that
        finishes with "error" (no such key) breaks it off too, but the client reads on to usage and [DONE]."""
        if not self.done and error:
            self.done = self.broken_off = True
        elif not self.done and self.finish_reason == "error":
            self.broken_off = True
        return usage_only and not error
