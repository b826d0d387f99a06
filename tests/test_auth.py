import hashlib

from proxy.auth import Gate, client_token, key_id, repeated_key_header
from proxy.config import AuthKey, Secret


def test_key_id_is_a_hash_never_the_key() -> None:
    assert key_id("sk-test") == "key:" + hashlib.sha256(b"sk-test").hexdigest()[:12]
    assert "sk-test" not in key_id("sk-test")
    assert key_id(None) == "anonymous"


def test_client_token_from_bearer_or_x_api_key() -> None:
    assert client_token(b"Bearer sk-a", None) == "sk-a"
    assert client_token(b"bearer  sk-a ", None) == "sk-a"
    assert client_token(None, b"sk-b") == "sk-b"
    assert client_token(b"Basic abc", b"sk-b") == "sk-b"
    assert client_token(b"Basic abc", None) is None


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
