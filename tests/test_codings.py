"""A body's Content-Encoding undone as a client undoes it, within a bound on its decoded size."""

import gzip
import zlib

import pytest

from proxy.codings import Undecodable, codings, compressed, decoded

BODY = b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7}}'
LIMIT = 1 << 20


def test_the_codings_are_listed_in_the_order_applied_without_identity() -> None:
    assert codings(b"Deflate, identity,GZIP") == [b"deflate", b"gzip"]
    assert codings(b"identity") == codings(b"") == []
    headers = [
        (b"Content-Encoding", b"deflate"),
        (b"content-type", b"text/plain"),
        (b"content-encoding", b"br"),
    ]
    assert compressed(headers) == [b"deflate", b"br"]


@pytest.mark.parametrize(
    ("applied", "body"),
    [
        ([b"gzip"], gzip.compress(BODY)),
        ([b"x-gzip"], gzip.compress(BODY)),
        ([b"deflate"], zlib.compress(BODY)),
        ([b"gzip"], gzip.compress(BODY[:9]) + gzip.compress(BODY[9:])),  # members, as RFC 1952 allows
        ([b"deflate", b"gzip"], gzip.compress(zlib.compress(BODY))),  # deflate applied first
        ([], BODY),
    ],
)
def test_a_body_is_decoded_coding_by_coding_the_last_applied_first(applied: list[bytes], body: bytes) -> None:
    assert decoded(body, applied, LIMIT) == BODY


@pytest.mark.parametrize(
    ("applied", "body", "why"),
    [
        ([b"br"], BODY, "sent in br, which cannot be decoded here"),
        ([b"gzip", b"zstd"], BODY, "sent in zstd, which cannot be decoded here"),
        ([b"gzip"], BODY, "sent in gzip but corrupt"),  # says gzip, is not
        ([b"gzip"], gzip.compress(BODY) + b"trailing bytes", "sent in gzip but corrupt"),
        ([b"gzip"], gzip.compress(BODY)[:-12], "sent in gzip but cut short"),
        ([b"gzip"], gzip.compress(b" " * (LIMIT + 1)), "over 1 MiB decoded"),  # 1 KiB of gzip
    ],
)
def test_a_body_that_cannot_be_decoded_here_says_why(applied: list[bytes], body: bytes, why: str) -> None:
    with pytest.raises(Undecodable, match=f"^{why}$"):
        decoded(body, applied, LIMIT)
