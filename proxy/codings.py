"""A body's Content-Encoding undone as a client undoes it (RFC 9110 section 8.4.1): each coding in turn,
the last applied first, within a bound on the decoded size. The proxy asks providers for identity, but
a provider may compress all the same. No I/O.

Only zlib's codings can be undone here (gzip, its alias x-gzip, deflate): the standard library has no
decoder for br or zstd.
"""

from __future__ import annotations

import zlib

from proxy.upstream import Headers

_ZLIB_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate"})
IDENTITY = (b"", b"identity")  # a Content-Encoding that leaves the body as it is


class Undecodable(Exception):
    """A body that cannot be decoded here; the message says why, to follow "the answer was"."""


def codings(value: bytes) -> list[bytes]:
    """The codings a Content-Encoding value lists, lowercased, in the order applied, identity left out."""
    listed = (coding.strip().lower() for coding in value.split(b","))
    return [coding for coding in listed if coding not in IDENTITY]


def compressed(headers: Headers) -> list[bytes]:
    """The codings a body was sent in (every Content-Encoding header), in the order applied."""
    return [
        coding for name, value in headers if name.lower() == b"content-encoding" for coding in codings(value)
    ]


def decoded(body: bytes, applied: list[bytes], limit: int) -> bytes:
    """`body` as a client decodes it, gzip members that follow one another joined; raises Undecodable for
    a coding there is no decoder for here, a corrupt body, or one over `limit` bytes decoded (a few KiB of
    gzip may stand for gigabytes)."""
    for coding in reversed(applied):
        if coding not in _ZLIB_CODINGS:
            raise Undecodable(f"sent in {coding.decode('latin-1')}, which cannot be decoded here")
        parts: list[bytes] = []
        size = 0
        while body:
            decoder = zlib.decompressobj(wbits=47)  # 47: a gzip or a zlib header, detected
            try:
                parts.append(decoder.decompress(body, limit + 1 - size))
            except zlib.error:
                raise Undecodable(f"sent in {coding.decode('latin-1')} but corrupt") from None
            size += len(parts[-1])
            if size > limit:
                raise Undecodable(f"over {limit >> 20} MiB decoded")
            if not decoder.eof:
                raise Undecodable(f"sent in {coding.decode('latin-1')} but cut short")
            body = decoder.unused_data
        body = b"".join(parts)
    return body
