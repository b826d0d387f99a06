"""The provider key taken out of error answers: bodies read whole (compressed ones decoded, or withheld
when they cannot be), and bodies read as they pass however the reads cut them (a key cut across two
reads, copies that touch or overlap, a body that ends mid-key)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import pytest
from conftest import Reads
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.configfile import parse_config
from proxy.redaction import MAX_DECODED, RedactedResponse, hidden_key, redact, redact_headers, without_key
from proxy.upstream import Headers, UpstreamError

KEY = b"sk-provider-secret"


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
    upstream = Reads(pieces, status=401)

    reads = read_all(RedactedResponse(upstream, key))

    assert b"".join(reads) == body.replace(key, b"[REDACTED]")
    assert upstream.ends_read == 1  # the end is read once, never again


def test_a_key_cut_across_two_reads_is_held_back_until_it_is_whole() -> None:
    response = RedactedResponse(Reads([], status=401), KEY)

    assert response.take(b"Incorrect API key provided: sk-prov") == b"Incorrect API key "
    assert response.take(b"ider-secret. Check it.") == b"provided: [REDACTED]"


def test_a_body_read_whole_has_every_copy_taken_out_and_its_length_set() -> None:
    headers: Headers = [(b"content-type", b"application/json"), (b"Content-Length", b"56")]
    body = b'{"message": "' + KEY + b" and " + KEY + b'"}'

    assert redact(body, headers, KEY, 401) == b'{"message": "[REDACTED] and [REDACTED]"}'
    assert headers == [(b"content-type", b"application/json"), (b"content-length", b"40")]
    assert redact(b'{"message": "slow down"}', headers, KEY, 401) == b'{"message": "slow down"}'


def test_a_compressed_body_is_searched_decoded_and_goes_decoded_only_when_it_held_the_key() -> None:
    body = b'{"message": "' + KEY + b'"}'
    twice = gzip.compress(zlib.compress(body))  # deflate applied first, then gzip
    headers: Headers = [(b"Content-Encoding", b"deflate"), (b"content-encoding", b"gzip"), (b"x-id", b"1")]
    untouched = gzip.compress(b'{"message": "slow down"}')
    members = gzip.compress(b'{"message": "') + gzip.compress(KEY + b'"}')  # read on by every gzip reader

    assert redact(untouched, [(b"content-encoding", b"gzip")], KEY, 429) == untouched
    assert redact(twice, headers, KEY, 401) == b'{"message": "[REDACTED]"}'
    assert headers == [(b"x-id", b"1"), (b"content-length", b"25")]
    assert redact(members, [(b"content-encoding", b"GZIP")], KEY, 401) == b'{"message": "[REDACTED]"}'


@pytest.mark.parametrize(
    "coding, body",
    [
        (b"br", b'{"message": "' + KEY + b'"}'),  # no decoder for it here
        (b"gzip", b"not gzip at all"),
        (b"gzip", gzip.compress(b"x" * (MAX_DECODED + 1))),
        (b"gzip", gzip.compress(b"{}") + b"trailing bytes"),
    ],
)
def test_a_compressed_body_that_cannot_be_decoded_is_withheld(coding: bytes, body: bytes) -> None:
    headers: Headers = [
        (b"content-type", b"text/plain"),
        (b"content-encoding", coding),
        (b"retry-after", b"3"),
    ]

    answer = redact(body, headers, KEY, 401)

    assert json.loads(answer)["error"]["code"] == "upstream_error_withheld"
    length = str(len(answer)).encode()
    assert headers == [
        (b"retry-after", b"3"),
        (b"content-type", b"application/json"),
        (b"content-length", length),
    ]


def test_only_an_error_from_a_provider_with_its_own_key_is_searched() -> None:
    providers = {"keyed": {"base_url": "http://a.invalid/v1", "api_key": KEY.decode()}}
    providers["open"] = {"base_url": "http://b.invalid/v1"}
    config = parse_config(json.dumps({"providers": providers}), {})
    keyed, open_ = config.providers["keyed"], config.providers["open"]

    assert [hidden_key(keyed, status) for status in (200, 304, 399, 400, 401, 500)] == [None] * 3 + [KEY] * 3
    assert hidden_key(open_, 401) is None


def test_an_errors_headers_have_the_key_taken_out_of_values_and_a_name_holding_it_dropped() -> None:
    headers: Headers = [
        (b"www-authenticate", b'Bearer error_description="' + KEY + b' is revoked"'),
        (b"x-" + KEY, b"1"),
        (b"retry-after", b"3"),
    ]

    assert redact_headers(headers, KEY) == [
        (b"www-authenticate", b'Bearer error_description="[REDACTED] is revoked"'),
        (b"retry-after", b"3"),
    ]


def test_a_failure_quoting_the_provider_key_is_told_without_it() -> None:
    providers = {"keyed": {"base_url": "http://a.invalid/v1", "api_key": KEY.decode()}}
    provider = parse_config(json.dumps({"providers": providers}), {}).providers["keyed"]
    quoting = UpstreamError("upstream_bad_response", 502, f"bad HTTP: b'Content-Length: {KEY.decode()}'")
    plain = UpstreamError("upstream_timeout", 504, "no data from the provider in 5 s")

    told = without_key(quoting, provider)

    assert (told.error, told.status, str(told)) == (
        quoting.error,
        502,
        "bad HTTP: b'Content-Length: [REDACTED]'",
    )
    assert without_key(plain, provider) is plain
