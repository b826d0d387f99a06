"""Taking a provider's key out of its error answers, whatever their shape: some providers quote the key
they were sent, and a client must never learn the provider's key (issue 6, case 13).

Only an answer with a status of 400 or more from a provider with its own api_key is searched: a 2xx
passes as it came, at no cost (no provider quotes keys there).
"""

from __future__ import annotations

from proxy.config import Provider
from proxy.upstream import Headers, UpstreamResponse

REDACTED = b"[REDACTED]"


def hidden_key(provider: Provider, status: int) -> bytes | None:
    """The key an answer may quote: the provider's own, when it has one and the answer is an error."""
    if status < 400 or provider.api_key is None:
        return None
    return provider.api_key.reveal().encode("latin-1")


def redact(body: bytes, headers: Headers, secret: bytes) -> bytes:
    """`body` with every copy of `secret` replaced, its Content-Length in `headers` set to match."""
    if secret not in body:
        return body
    body = body.replace(secret, REDACTED)
    for index, (name, _) in enumerate(headers):
        if name.lower() == b"content-length":
            headers[index] = (name, str(len(body)).encode())
    return body


def without_length(headers: Headers) -> Headers:
    """`headers` without Content-Length: a body the key is taken out of as it passes changes length."""
    return [(name, value) for name, value in headers if name.lower() != b"content-length"]


class RedactedResponse:
    """An answer whose reads have every copy of the key replaced. The last len(key) - 1 bytes of a read
    wait for the next one, so that a key cut across two reads is found whole."""

    __slots__ = ("_response", "_secret", "_held", "_ended", "status", "headers")

    def __init__(self, response: UpstreamResponse, secret: bytes) -> None:
        self._response = response
        self._secret = secret
        self._held = b""
        self._ended = False
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        while not self._ended:
            chunk = await self._response.read()
            if not chunk:
                self._ended = True
                held, self._held = self._held, b""
                return held  # shorter than the key: no copy of it
            if out := self.take(chunk):
                return out
        return b""

    def take(self, chunk: bytes) -> bytes:
        """What the client may have now, `chunk` (the next bytes of the body) taken in."""
        secret = self._secret
        text = self._held + chunk if self._held else chunk
        out: list[bytes] = []
        position = 0
        # Copies found from left to right, as bytes.replace() finds them in a whole body (keys may overlap).
        while (found := text.find(secret, position)) >= 0:
            out += (text[position:found], REDACTED)
            position = found + len(secret)
        # What follows the last copy and could begin another waits for the next read.
        keep = max(position, len(text) - len(secret) + 1)
        self._held = text[keep:]
        out.append(text[position:keep])
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        self._response.close()

    def release(self) -> None:
        self._response.release()
