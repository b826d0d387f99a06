"""The seam every upstream call goes through (`Upstream`), its errors and the header rules of a hop.
Behind it: meterproxy's own HTTP/1.1 pool (proxy/http1.py, the default) or aiohttp's
(proxy/aiohttpclient.py, `server.upstream_client: aiohttp`).
"""

from __future__ import annotations

from typing import Protocol

from proxy.records import CallError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1, plus the proxy-only headers; names listed in Connection are added per message.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"proxy-connection",
    }
)


def end_to_end(
    headers: Headers, also_drop: frozenset[bytes] = frozenset(), drop_prefix: bytes | None = None
) -> Headers:
    """Headers without hop-by-hop ones (and any the Connection header names), without also_drop and
    without those whose lowercased name starts with drop_prefix."""
    drop = HOP_BY_HOP | also_drop
    for name, value in headers:
        if name.lower() == b"connection":
            drop = drop | {token.strip().lower() for token in value.split(b",")}
    if drop_prefix is None:
        return [(name, value) for name, value in headers if name.lower() not in drop]
    return [
        (name, value)
        for name, value in headers
        if (lowered := name.lower()) not in drop and not lowered.startswith(drop_prefix)
    ]


def body_headers(headers: Headers) -> tuple[bool, int | None, bytes]:
    """What a response's headers say of its body: whether it is an event stream (media types ignore
    case), its Content-Length (None: not given, or not a number), its Content-Encoding lowercased (of
    every line, joined)."""
    content_type = encoding = b""
    length: int | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = value
        elif lowered == b"content-length" and value.isdigit():
            length = int(value)
        elif lowered == b"content-encoding":  # several lines list the codings in the order applied
            encoding = encoding + b"," + value.lower() if encoding else value.lower()
    return content_type.lower().startswith(b"text/event-stream"), length, encoding


class UpstreamError(Exception):
    """The upstream could not be reached, timed out, or broke off; `error` names which for the record.
    `sent` is False when the request never left (no connection could be made): nothing was billed."""

    def __init__(self, error: CallError, status: int, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.error: CallError = error
        self.status = status
        self.sent = sent


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    async def read(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end. Raises UpstreamError."""
        ...

    def ended(self) -> bool:
        """The whole body is in and read: read() would return b"" at once. False when that is not known."""
        ...

    def close(self) -> None:
        """Stop reading and drop the connection (the provider stops generating)."""
        ...

    def release(self) -> None:
        """The body was read whole: hand the connection back to the pool."""
        ...


class Upstream(Protocol):
    async def send(
        self, method: str, url: str, headers: Headers, body: bytes, timeout: float
    ) -> UpstreamResponse:
        """Send a request; return once the response headers are in. Raises UpstreamError."""
        ...

    async def close(self) -> None: ...
