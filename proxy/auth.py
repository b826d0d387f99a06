"""Who is calling: the configured key a call presents, or a hash of the client's own key. Never the key."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable

from proxy.config import AuthKey

# Every header a client may put its key in: each is forwarded to the provider in pass-through mode.
KEY_HEADERS = (b"authorization", b"x-api-key", b"x-goog-api-key")


@functools.lru_cache(maxsize=1024)
def key_id(token: str | None) -> str:
    """The user_id of a pass-through caller: "key:" + 12 hex of the key's SHA-256, or "anonymous"."""
    if not token:
        return "anonymous"
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def client_token(authorization: bytes | None, api_key: bytes | None) -> str | None:
    """The key a client presented, as `Authorization: Bearer ...` or `x-api-key`."""
    if authorization:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key:
        return api_key.decode("latin-1").strip() or None
    return None


def repeated_key_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The name of a key header a request carries more than once, else None."""
    names = [name for name, _ in headers]
    return next((name.decode() for name in KEY_HEADERS if names.count(name) > 1), None)


class Gate:
    """Checks presented keys against auth.keys in constant time; open when no keys are configured."""

    def __init__(self, keys: tuple[AuthKey, ...]) -> None:
        self._keys = [(hashlib.sha256(key.key.reveal().encode()).digest(), key.name) for key in keys]

    @property
    def closed(self) -> bool:
        return bool(self._keys)

    def caller(self, token: str | None) -> str | None:
        """The name of the configured key presented, or None. Compares every key: no early exit."""
        digest = hashlib.sha256((token or "").encode()).digest()
        found = None
        for expected, name in self._keys:
            if hmac.compare_digest(digest, expected) and token:
                found = name
        return found
