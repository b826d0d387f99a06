"""Taking a provider's key out of its error answers, whatever their shape: some providers quote the key
they were sent, and a client must never learn the provider's key (issue 6, case 13).

Only an answer with a status of 400 or more from a provider with its own api_key is searched: a 2xx
passes as it came, at no cost (no provider quotes keys there).

A compressed error (the proxy asks for identity, but a provider may compress all the same) is searched
decoded. Asking for identity only on such calls would not help: a client's 2xx would change too.
"""

from __future__ import annotations

from proxy.codings import Undecodable, compressed, decoded
from proxy.config import Provider
from proxy.errors import error_body
from proxy.upstream import Headers, UpstreamError, UpstreamResponse

REDACTED = b"[REDACTED]"
MAX_DECODED = 16 << 20  # an error larger than this decoded is not searched, but withheld: errors are small
_WITHHELD = (
    "the provider's error body is compressed in a way the proxy cannot read (an unknown Content-Encoding, "
    "a corrupt body, or too large), so the provider's key cannot be taken out of it: it is withheld"
)


def hidden_key(provider: Provider, status: int) -> bytes | None:
    """The key an answer may quote: the provider's own, when it has one and the answer is an error."""
    if status < 400 or provider.api_key is None:
        return None
    return provider.api_key.reveal().encode("latin-1")


def redact_headers(headers: Headers, secret: bytes) -> Headers:
    """An error's headers with every copy of `secret` in a value replaced; a header whose name holds it
    goes (no name could hold `[REDACTED]`)."""
    return [
        (name, value.replace(secret, REDACTED) if secret in value else value)
        for name, value in headers
        if secret not in name
    ]


def without_key(exc: UpstreamError, provider: Provider) -> UpstreamError:
    """`exc` with the provider's key taken out of its message, which the client and the log get: aiohttp
    quotes the bytes of a head it could not parse, a key the provider put there too."""
    if provider.api_key is None or (secret := provider.api_key.reveal()) not in str(exc):
        return exc
    return UpstreamError(exc.error, exc.status, str(exc).replace(secret, REDACTED.decode()), sent=exc.sent)


def redact(body: bytes, headers: Headers, secret: bytes, status: int) -> bytes:
    """A whole error body with every copy of `secret` replaced, `headers` set to match. A compressed body
    is searched decoded: one without the key goes as it came, one with it goes decoded (every client
    takes identity), and one that cannot be decoded here is withheld."""
    codings = compressed(headers)
    if codings:
        try:
            plain = decoded(body, codings, MAX_DECODED)
        except Undecodable:
            return withheld(headers, status)
        if secret not in plain:
            return body
        body = plain
        headers[:] = _without(headers, b"content-encoding")
    elif secret not in body:
        return body
    body = body.replace(secret, REDACTED)
    headers[:] = [*_without(headers, b"content-length"), (b"content-length", str(len(body)).encode())]
    return body


def withheld(headers: Headers, status: int) -> bytes:
    """The body that stands for an error the key cannot be looked for in (an OpenAI-shaped one of the
    proxy's own; the status and the provider's other headers stay), `headers` set to match."""
    body = error_body(status, "upstream_error_withheld", _WITHHELD)
    kept = _without(headers, b"content-encoding", b"content-length", b"content-type")
    headers[:] = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return body


def without_length(headers: Headers) -> Headers:
    """`headers` without Content-Length: a body the key is taken out of as it passes changes length."""
    return _without(headers, b"content-length")


def _without(headers: Headers, *names: bytes) -> Headers:
    return [(name, value) for name, value in headers if name.lower() not in names]


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

    def ended(self) -> bool:
        return False  # the bytes held back for the key's search come with the next read

    def close(self) -> None:
        self._response.close()

    def release(self) -> None:
        self._response.release()
