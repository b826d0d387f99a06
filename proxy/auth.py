"""Who is calling: the configured key a call presents, or a hash of the client's own key. Never the key."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qs, unquote_plus

from proxy.config import AuthKey, Provider
from proxy.routing import RouteError

# Every header a client may put its key in: each is forwarded to the provider in pass-through mode, and
# never behind auth.keys or to a provider with its own key. `api-key` is Azure OpenAI's (the AzureOpenAI
# client sends its key there).
KEY_HEADERS = (b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key")
_KEY_VALUE_HEADERS = KEY_HEADERS[1:]  # the key as the whole value: all but Authorization


@functools.lru_cache(maxsize=1024)
def key_id(token: str | None) -> str:
    """The user_id of a pass-through caller: "key:" + 12 hex of the key's SHA-256, or "anonymous"."""
    if not token:
        return "anonymous"
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class KeyConflict(RouteError):
    """A request presents more than one key: the provider might spend one while the record names another."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "duplicate_api_key", message)


_DIFFERENT_KEYS = (
    "the request presents different keys (in Authorization, x-api-key, x-goog-api-key, api-key or the key "
    "query parameter); send one key"
)


def client_token(
    authorization: bytes | None,
    keys: Iterable[bytes | None] = (),
    query_key: str | None = None,
    *,
    one_key: bool = False,
) -> str | None:
    """The key a client presented, as `Authorization: Bearer ...`, the value of a header that holds a key
    whole (`keys`: `x-api-key`, `x-goog-api-key`, `api-key`) or the `key` query parameter (Google's APIs
    take it, and `x-goog-api-key`), the first found. With one_key
    (pass-through, where every one of them reaches the provider), KeyConflict when two differ. A query
    key must match a header key in either mode: a Gemini client sends its key in one place, so two
    different ones are refused rather than one chosen for it."""
    token = None
    if authorization:
        scheme, _, bearer = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and bearer.strip():
            token = bearer.strip()
    for value in keys:
        if value and (other := value.decode("latin-1").strip()):
            token = _one(token, other, one_key)
    return _one(token, query_key, True) if query_key else token


def _one(token: str | None, other: str, one_key: bool) -> str:
    if token is None:
        return other
    if one_key and other != token:
        raise KeyConflict(_DIFFERENT_KEYS)
    return token


def query_key(query: bytes) -> str | None:
    """The `key` query parameter, decoded as the provider reads it; KeyConflict when there are several."""
    keys = parse_qs(query.decode("latin-1")).get("key")
    if keys is not None and len(keys) > 1:
        raise KeyConflict("the request has more than one key query parameter; send one key")
    return keys[0] if keys else None


def gemini_query(user: str, query: bytes, forwarding: bool, checked: bool) -> tuple[str, bytes]:
    """The caller and the query to send, for a call to a Gemini provider, whose APIs read a `key` query
    parameter as a key to spend, like the key headers. It goes on only where the client's key headers
    do (`forwarding`: pass-through to a provider without its own api_key), and must then be the key the
    call is recorded under: `checked` when admit() read it (the path named the provider); else, on /v1/
    where the body's model chose Google, it must be the header's key and names a caller who sent none.
    """
    if not forwarding:
        return user, without_query_key(query)
    in_query = None if checked else query_key(query)
    if in_query is None:
        return user, query
    named = key_id(in_query)
    if user not in ("anonymous", named):
        raise KeyConflict(_DIFFERENT_KEYS)
    return named, query


def without_query_key(query: bytes) -> bytes:
    """The query with every `key` parameter taken out, the others kept byte for byte and in order."""
    return b"&".join(part for part in query.split(b"&") if not _names_key(part))


def _names_key(part: bytes) -> bool:
    name = part.partition(b"=")[0]
    # Decoded as query_key() decodes it, so that `k%65y=` is taken out as surely as it is read.
    return name == b"key" or (b"%" in name and unquote_plus(name.decode("latin-1")) == "key")


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

    def admit(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        header: Mapping[bytes, bytes],
        query: bytes,
        provider: Provider | None,
    ) -> str:
        """The user_id of a call, from its headers (all of them, and the last value of each by name), its
        query and the provider its path names. RouteError 401 when no configured key is presented behind
        auth.keys; KeyConflict when the keys presented disagree."""
        # `header` keeps a repeated header's last value, where every one is forwarded: a call with
        # two keys could be recorded under one and spend the other (a comparison when none repeats).
        if len(header) < len(headers) and (repeated := repeated_key_header(headers)) is not None:
            raise KeyConflict(f"the request has more than one {repeated} header; send one key")
        # Google's APIs also take a key as `?key=`: the client's own key, forwarded with the query,
        # or behind auth.keys its proxy key, which the meter takes out of the query.
        passing = not self._keys
        in_query = None
        if query and provider and provider.kind == "gemini":
            in_query = query_key(query)
        token = client_token(
            header.get(b"authorization"),
            [header.get(name) for name in _KEY_VALUE_HEADERS],
            in_query,
            one_key=passing,
        )
        user = key_id(token) if passing else self.caller(token)
        if user is None:
            raise RouteError(
                401,
                "invalid_api_key",
                "a valid proxy key is required: send it as Authorization: Bearer, x-api-key, "
                "x-goog-api-key or api-key",
            )
        return user

    def caller(self, token: str | None) -> str | None:
        """The name of the configured key presented, or None. Compares every key: no early exit."""
        digest = hashlib.sha256((token or "").encode()).digest()
        found = None
        for expected, name in self._keys:
            if hmac.compare_digest(digest, expected) and token:
                found = name
        return found
