"""The provider key taken out of error answers: bodies read whole, and bodies read as they pass however
the reads cut them (a key cut across two reads, copies that touch or overlap, a body that ends mid-key)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.configfile import parse_config
from proxy.redaction import RedactedResponse, hidden_key, redact
from proxy.upstream import Headers

KEY = b"sk-provider-secret"


class Reads:
    """An upstream response read in exactly the pieces given; reads past its end are counted."""

    def __init__(self, pieces: list[bytes], status: int = 401) -> None:
        self.status = status
        self.headers: Headers = []
        self._pieces = iter(pieces)
        self.past_end = 0

    async def read(self) -> bytes:
        piece = next(self._pieces, b"")
        self.past_end += not piece
        return piece

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def read_all(response: RedactedResponse) -> list[bytes]:
    async def run() -> list[bytes]:
        reads = []
        while piece := await response.read():
            reads.append(piece)
        assert await response.read() == b""  # a read after the end
        return reads

    return asyncio.run(run())


@st.composite
def quoting(draw: st.DrawFn, key: bytes) -> bytes:
    """A body with copies of `key` (and of its start, its end) here and there, some touching."""
    parts = st.sampled_from([key, key, key[:5], key[-5:], b"x", b'{"error": ', b"\n\n"])
    return b"".join(draw(st.lists(parts, max_size=12)))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_body_read_as_it_passes_has_every_copy_of_the_key_taken_out_however_the_reads_cut_it(
    data: st.DataObject,
) -> None:
    key = data.draw(st.sampled_from([KEY, b"k", b"abab", b"aaa"]))  # short ones, and ones that overlap
    body = data.draw(quoting(key))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=10))))
    bounds = zip([0, *cuts], [*cuts, len(body)], strict=True)
    pieces = [body[start:end] for start, end in bounds if end > start]
    upstream = Reads(pieces)

    reads = read_all(RedactedResponse(upstream, key))

    assert b"".join(reads) == body.replace(key, b"[REDACTED]")
    assert upstream.past_end == 1  # the end is read once, never again


def test_a_key_cut_across_two_reads_is_held_back_until_it_is_whole() -> None:
    response = RedactedResponse(Reads([]), KEY)

    assert response.take(b"Incorrect API key provided: sk-prov") == b"Incorrect API key "
    assert response.take(b"ider-secret. Check it.") == b"provided: [REDACTED]"


def test_a_body_read_whole_has_every_copy_taken_out_and_its_length_set() -> None:
    headers: Headers = [(b"content-type", b"application/json"), (b"Content-Length", b"56")]
    body = b'{"message": "' + KEY + b" and " + KEY + b'"}'

    assert redact(body, headers, KEY) == b'{"message": "[REDACTED] and [REDACTED]"}'
    assert headers[1] == (b"Content-Length", b"40")
    assert redact(b'{"message": "slow down"}', headers, KEY) == b'{"message": "slow down"}'


def test_only_an_error_from_a_provider_with_its_own_key_is_searched() -> None:
    providers = {"keyed": {"base_url": "http://a.invalid/v1", "api_key": KEY.decode()}}
    providers["open"] = {"base_url": "http://b.invalid/v1"}
    config = parse_config(json.dumps({"providers": providers}), {})
    keyed, open_ = config.providers["keyed"], config.providers["open"]

    assert [hidden_key(keyed, status) for status in (200, 304, 399, 400, 401, 500)] == [None] * 3 + [KEY] * 3
    assert hidden_key(open_, 401) is None
