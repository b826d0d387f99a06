import hashlib

import pytest

from proxy.auth import (
    Gate,
    KeyConflict,
    client_token,
    key_id,
    query_key,
    repeated_key_header,
    without_query_key,
)
from proxy.config import AuthKey, Provider, Secret
from proxy.routing import RouteError


def test_key_id_is_a_hash_never_the_key() -> None:
    assert key_id("sk-test") == "key:" + hashlib.sha256(b"sk-test").hexdigest()[:12]
    assert "sk-test" not in key_id("sk-test")
    assert key_id(None) == "anonymous"


def test_client_token_from_bearer_or_x_api_key() -> None:
    assert client_token(b"Bearer sk-a") == "sk-a"
    assert client_token(b"bearer  sk-a ") == "sk-a"
    assert client_token(None, [b"sk-b"]) == "sk-b"
    assert client_token(b"Basic abc", [b"sk-b"]) == "sk-b"
    assert client_token(b"Basic abc") is None


def test_client_token_from_gemini_header_or_query() -> None:
    assert client_token(None, [None, b"AIza-a"]) == "AIza-a"
    assert client_token(None, [], "AIza-q") == "AIza-q"
    assert client_token(b"Bearer AIza-a", [b"AIza-a", b"AIza-a"], "AIza-a", one_key=True) == "AIza-a"
    assert client_token(b"Basic abc", [None, None, None]) is None


def test_client_token_from_azure_s_api_key_header() -> None:
    assert client_token(None, [None, None, b"azure-key"]) == "azure-key"
    gate = Gate((AuthKey("team-a", Secret("mp-a")),))
    assert admit(gate, [(b"api-key", b"mp-a")], b"", None) == "team-a"
    assert admit(Gate(()), [(b"api-key", b"azure-key")], b"", None) == key_id("azure-key")
    with pytest.raises(KeyConflict):
        admit(Gate(()), [(b"authorization", b"Bearer sk-a"), (b"api-key", b"azure-key")], b"", None)


@pytest.mark.parametrize(
    "presented",
    [
        (b"Bearer sk-a", [b"sk-b", None, None]),
        (None, [b"sk-a", b"sk-b", None]),
        (b"Bearer sk-a", [None, b"sk-b", None]),
        (None, [None, b"sk-a", b"sk-b"]),
    ],
)
def test_client_token_takes_the_first_key_or_in_pass_through_refuses_different_ones(
    presented: tuple[bytes | None, list[bytes | None]],
) -> None:
    assert client_token(*presented) == "sk-a"  # the first found
    with pytest.raises(KeyConflict) as raised:
        client_token(*presented, one_key=True)
    assert (raised.value.status, raised.value.code) == (400, "duplicate_api_key")
    assert "sk-" not in str(raised.value) and "AIza" not in str(raised.value)


@pytest.mark.parametrize("one_key", [False, True])
def test_a_query_key_that_differs_from_a_header_key_is_refused_in_either_mode(one_key: bool) -> None:
    assert client_token(None, [None, b"mp-a"], "mp-a", one_key=one_key) == "mp-a"
    with pytest.raises(KeyConflict) as raised:
        client_token(None, [None, b"mp-a"], "mp-b", one_key=one_key)
    assert raised.value.code == "duplicate_api_key" and "mp-" not in str(raised.value)
    with pytest.raises(KeyConflict):
        client_token(b"Bearer mp-a", [], "mp-b", one_key=one_key)


def test_without_query_key_keeps_every_other_parameter_as_sent() -> None:
    assert without_query_key(b"key=mp-a&alt=sse") == b"alt=sse"
    assert without_query_key(b"alt=sse&key=mp-a") == b"alt=sse"
    assert without_query_key(b"a=%2F+x&key=mp-a&&b&key") == b"a=%2F+x&&b"
    assert without_query_key(b"%6Bey=mp-a&%6B%65%79=mp-b&key=&alt=sse") == b"alt=sse"
    assert without_query_key(b"key=mp-a") == b""
    assert without_query_key(b"keys=1&monkey=2&Key=3&key%20=4") == b"keys=1&monkey=2&Key=3&key%20=4"


def test_query_key_is_decoded_and_a_repeated_one_refused() -> None:
    assert query_key(b"alt=sse&key=AIza%2Bq") == "AIza+q"
    assert query_key(b"alt=sse") is None
    assert query_key(b"key=") is None
    with pytest.raises(KeyConflict, match="more than one key query parameter"):
        query_key(b"key=AIza-a&alt=sse&key=AIza-b")


def test_repeated_key_header_is_named_and_other_repeats_are_not() -> None:
    auth, other = (b"authorization", b"Bearer sk-a"), (b"accept", b"*/*")
    assert repeated_key_header([auth, other, other]) is None
    assert repeated_key_header([auth, (b"x-api-key", b"sk-a"), (b"x-goog-api-key", b"sk-a")]) is None
    assert repeated_key_header([auth, other, (b"authorization", b"Bearer sk-b")]) == "authorization"
    assert repeated_key_header([(b"x-api-key", b"sk-a"), (b"x-api-key", b"sk-a")]) == "x-api-key"
    assert repeated_key_header([(b"x-goog-api-key", b"k"), (b"x-goog-api-key", b"j")]) == "x-goog-api-key"


def test_gate_names_the_key_presented() -> None:
    gate = Gate((AuthKey("team-a", Secret("ka")), AuthKey("batch", Secret("kb"))))
    assert gate.closed
    assert gate.caller("ka") == "team-a"
    assert gate.caller("kb") == "batch"
    assert gate.caller("kc") is None
    assert gate.caller(None) is None
    assert gate.caller("") is None


def test_gate_without_keys_is_open() -> None:
    assert not Gate(()).closed


GEMINI = Provider("gemini", "https://g.example/v1beta", None, 600, "USD", True, "gemini", {})
OPENAI = Provider("openai", "https://o.example/v1", None, 600, "USD", True, "openai", {})


def admit(gate: Gate, headers: list[tuple[bytes, bytes]], query: bytes, provider: Provider | None) -> str:
    return gate.admit(headers, dict(headers), query, provider)


def test_admit_names_a_caller_by_its_key_and_reads_the_query_on_gemini_paths_only() -> None:
    open_gate, gate = Gate(()), Gate((AuthKey("team-a", Secret("mp-a")),))
    assert admit(open_gate, [(b"x-goog-api-key", b"AIza-a")], b"", GEMINI) == key_id("AIza-a")
    assert admit(open_gate, [], b"alt=sse&key=AIza-q", GEMINI) == key_id("AIza-q")
    assert admit(open_gate, [], b"key=AIza-q", OPENAI) == "anonymous"
    assert admit(gate, [(b"authorization", b"Bearer mp-a")], b"", None) == "team-a"
    assert admit(gate, [], b"key=mp-a&alt=sse", GEMINI) == "team-a"
    for provider in (OPENAI, None):
        with pytest.raises(RouteError) as refused:
            admit(gate, [], b"key=mp-a", provider)
        assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")


def test_admit_refuses_a_repeated_key_header_or_keys_that_differ() -> None:
    gate = Gate((AuthKey("team-a", Secret("mp-a")),))
    with pytest.raises(KeyConflict, match="more than one x-api-key header"):
        admit(gate, [(b"x-api-key", b"mp-a"), (b"x-api-key", b"mp-a")], b"", None)
    with pytest.raises(KeyConflict):
        admit(gate, [(b"x-goog-api-key", b"mp-b")], b"key=mp-a", GEMINI)
    with pytest.raises(KeyConflict):
        admit(Gate(()), [(b"authorization", b"Bearer sk-a"), (b"x-api-key", b"sk-b")], b"", None)
