"""Issue 6, hostile input: huge and slow requests (11), keys (13), SSRF (14), paths (15), hop-by-hop
headers and request smuggling (16). The real proxy under uvicorn, a scripted stub behind it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import secrets
import select
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from conftest import (
    CLIENT_KEY,
    MakeConfig,
    ProxyLauncher,
    RawResponse,
    RunningProxy,
    answering,
    only,
    settled,
    wait_until,
)
from openai.types.chat import ChatCompletionMessageParam
from upstream_stub import SSE_DONE, Hangup, Reply, Stream, UpstreamStub, sse

from proxy.calls import MAX_DECODED_BODY
from proxy.protocol import MAX_HEAD
from proxy.relay import MAX_READ_BODY

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
COMPLETION = json.dumps({"id": "chatcmpl-1", "model": "gpt-4o", "choices": [], "usage": USAGE}).encode()
CHAT = json.dumps({"model": "gpt-4o", "messages": HELLO}).encode()
LIMIT = 1 << 20  # server.max_body_mb: 1
# The bound: a body over the limit is refused before more than limit + 64 KiB is read.
READ_AHEAD = 64 << 10


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw request bytes; read until the proxy closes the connection (or `timeout` passes)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and (piece := sock.recv(65536)):
                received += piece
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def head_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[0].lower()


def post(path: str, body: bytes, *extra: str) -> bytes:
    """A raw POST that asks the proxy to close the connection after answering."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {CLIENT_KEY}"]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    if not any(line.lower().startswith("connection:") for line in extra):
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- 11. Huge and slow requests -------------------------------------------------------------------


@pytest.fixture
def small_body_proxy(launch: ProxyLauncher, make_config: MakeConfig) -> RunningProxy:
    return launch(make_config(server={"max_body_mb": 1}))


def push_body(port: int, head: bytes, pieces: Iterator[bytes]) -> bytes:
    """Send `head`, then `pieces` until the proxy stops taking them; return what it answered."""
    answer: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def read() -> None:
            received = b""
            try:
                while piece := sock.recv(65536):
                    received += piece
            except OSError:
                pass
            answer.append(received)

        reader = threading.Thread(target=read)
        reader.start()
        sock.sendall(head)
        try:
            for piece in pieces:
                sock.sendall(piece)
        except OSError:
            pass  # the proxy answered and closed: the rest of the body is never read
        reader.join(30)
    assert answer, "no answer within 30 s"
    return answer[0]


def test_chunked_body_over_the_limit_is_refused_before_much_more_than_the_limit_is_read(
    small_body_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    probe = small_body_proxy.probe()
    before = probe.bytes_read()
    piece = b"x" * (64 << 10)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = push_body(
        small_body_proxy.port, head, (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(160))
    )
    read = probe.bytes_read() - before

    assert status_of(answer) == 413
    assert b"connection: close" in head_of(answer)
    print(f"\n[case 11] 10 MB chunked body, limit 1 MiB: the proxy read limit + {read - LIMIT} bytes")
    assert read <= LIMIT + READ_AHEAD
    assert stub.requests == [] and small_body_proxy.records() == []


def test_declared_length_over_the_limit_is_refused_without_reading_the_body(
    small_body_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    probe = small_body_proxy.probe()
    before = probe.bytes_read()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (
        10 * LIMIT
    )
    answer = push_body(small_body_proxy.port, head, (b"x" * (64 << 10) for _ in range(160)))
    read = probe.bytes_read() - before

    assert status_of(answer) == 413
    assert b"connection: close" in head_of(answer)
    print(f"\n[case 11] Content-Length 10 MiB, limit 1 MiB: the proxy read {read} bytes")
    assert read <= READ_AHEAD
    assert stub.requests == [] and small_body_proxy.records() == []


HUGE_HEADS = {
    # 8 MiB each, sent until the proxy stops taking them
    "one header value": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", b"a" * 65536),
    "many headers": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-A: b\r\n" * 8192),
    "a long URL": (b"POST /v1/chat/completions?", b"a" * 65536),
}


@pytest.mark.parametrize("case", HUGE_HEADS, ids=list(HUGE_HEADS))
def test_a_request_head_over_the_limit_gets_431_after_little_more_than_it_is_read(
    proxy: RunningProxy, stub: UpstreamStub, case: str
) -> None:
    probe = proxy.probe()
    before = probe.bytes_read()
    head, piece = HUGE_HEADS[case]
    answer = push_body(proxy.port, head, (piece for _ in range((8 << 20) // len(piece))))
    read = probe.bytes_read() - before

    assert status_of(answer) == 431
    assert b"connection: close" in head_of(answer)
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert (error["code"], error["type"]) == ("head_too_large", "invalid_request_error")
    print(f"\n[case 11] an 8 MiB request head ({case}): the proxy read {read} bytes")
    assert read <= MAX_HEAD + READ_AHEAD
    proxy.wait_log("refused a request head over 64 KiB from 127.0.0.1: 431")
    assert stub.requests == [] and proxy.records() == []


def test_a_request_head_under_the_limit_is_served(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.always(Reply(body=COMPLETION))
    large = "a" * (MAX_HEAD - 8192)
    response = proxy.post_json(
        "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, {"x-large": large}
    )

    assert response.status == 200
    assert stub.requests[0].header("x-large") == large


def test_slow_and_lying_clients_hold_a_connection_not_the_worker(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Slow-loris bodies, a Content-Length larger than the body sent, headers never finished: calls
    from other clients are answered meanwhile, and each held connection is let go when its client leaves."""
    stub.always(Reply(body=COMPLETION))
    proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})  # pools one connection
    probe = proxy.probe()
    baseline = settled(probe.sockets)
    answered = []
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port))) for _ in range(60)]
        for n, sock in enumerate(slow):
            if n % 3 == 0:  # headers never finished
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            else:  # a body that trickles (n % 3 == 1) or that stops short of its Content-Length
                sock.sendall(
                    post("/v1/chat/completions", CHAT).replace(b"Length: %d" % len(CHAT), b"Length: 9999")
                )
        wait_until(lambda: probe.sockets() >= baseline + len(slow), "the proxy to take every slow connection")
        for _ in range(20):
            for sock in slow[1::3]:
                sock.sendall(b" ")  # one more byte of the slow body
            started = time.monotonic()
            response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
            answered.append(time.monotonic() - started)
            assert response.status == 200
    print(f"\n[case 11] with {len(slow)} slow connections open, calls took at most {max(answered):.3f} s")

    wait_until(lambda: probe.sockets() <= baseline, "the proxy to let the slow connections go")
    assert len(stub.requests) == 21
    assert len(proxy.wait_records(21)) == 21


BODY_TIMEOUT = 1.0  # server.body_timeout_seconds in the tests below
SLACK = 4.0  # seconds added to a time bound before a test fails on it: the machine may be busy


@pytest.fixture
def impatient_proxy(launch: ProxyLauncher, make_config: MakeConfig) -> RunningProxy:
    return launch(make_config(server={"body_timeout_seconds": BODY_TIMEOUT}))


@dataclass
class Trickled:
    answer: bytes
    answered_after: float  # seconds from the end of the head to the answer's first byte
    closed_after: float | None  # ... to the proxy closing the connection; None: still open at the end


def trickle(port: int, head: bytes, body: bytes, every: float, within: float) -> Trickled:
    """Send `head`, then `body` one byte every `every` seconds, until the proxy closes the connection or
    `within` seconds have passed; read what the proxy answers meanwhile."""
    answer = b""
    answered_after = closed_after = None
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        started = time.monotonic()
        pending = body
        while time.monotonic() - started < within:
            if select.select([sock], [], [], every)[0]:
                try:
                    piece = sock.recv(65536)
                except ConnectionResetError:
                    piece = b""
                if not piece:
                    closed_after = time.monotonic() - started
                    break
                if not answer:
                    answered_after = time.monotonic() - started
                answer += piece
            elif pending:
                with contextlib.suppress(OSError):  # the proxy may have closed meanwhile
                    sock.sendall(pending[:1])
                pending = pending[1:]
    assert answered_after is not None, f"no answer within {within} s"
    return Trickled(answer, answered_after, closed_after)


SLOW_BODIES = {
    # a byte every 0.2 s: the whole body would take 15 s
    "slow-loris body": (len(CHAT), CHAT),
    "Content-Length larger than the body sent": (len(CHAT) + 100, CHAT[:10]),
    "Content-Length and no body at all": (len(CHAT), b""),
}


@pytest.mark.parametrize("case", SLOW_BODIES, ids=list(SLOW_BODIES))
def test_a_body_that_does_not_arrive_whole_in_time_gets_408_and_its_connection_closed(
    impatient_proxy: RunningProxy, stub: UpstreamStub, case: str
) -> None:
    length, sent = SLOW_BODIES[case]
    head = post("/v1/chat/completions", b"").replace(b"Content-Length: 0", b"Content-Length: %d" % length)
    got = trickle(impatient_proxy.port, head, sent, every=0.2, within=BODY_TIMEOUT + SLACK + 5)
    closed = "never" if got.closed_after is None else f"after {got.closed_after:.2f} s"
    print(
        f"\n[case 11] {case}, body_timeout_seconds {BODY_TIMEOUT:g}: "
        f"answered after {got.answered_after:.2f} s, closed {closed}"
    )

    assert status_of(got.answer) == 408
    assert b"connection: close" in head_of(got.answer)
    error = json.loads(got.answer.partition(b"\r\n\r\n")[2])["error"]
    assert (error["code"], error["type"]) == ("body_timeout", "invalid_request_error")
    assert "server.body_timeout_seconds" in error["message"]
    assert BODY_TIMEOUT <= got.answered_after < BODY_TIMEOUT + SLACK
    assert got.closed_after is not None and got.closed_after < BODY_TIMEOUT + SLACK
    impatient_proxy.wait_log("refused POST /v1/chat/completions: 408")
    assert stub.requests == [] and impatient_proxy.records() == []


def test_a_body_that_comes_in_pieces_within_the_body_timeout_is_served(
    impatient_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.always(Reply(body=COMPLETION))
    request = post("/v1/chat/completions", CHAT)
    head, body = request[: -len(CHAT)], CHAT
    with socket.create_connection(("127.0.0.1", impatient_proxy.port), timeout=10) as sock:
        sock.sendall(head)
        for piece in (body[:10], body[10:20], body[20:]):
            time.sleep(BODY_TIMEOUT / 5)
            sock.sendall(piece)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece

    assert status_of(answer) == 200
    assert len(stub.requests) == 1 and len(impatient_proxy.wait_records(1)) == 1


# --- 13. Keys ---------------------------------------------------------------------------------------

CLIENT_CANARY = "sk-canary-client-" + secrets.token_hex(12)
WRONG_CANARY = "sk-canary-wrong-" + secrets.token_hex(12)
UPSTREAM_CANARY = "sk-canary-upstream-" + secrets.token_hex(12)
CANARIES = (CLIENT_CANARY, WRONG_CANARY, UPSTREAM_CANARY)


def echo(status: int, key: str) -> Reply:
    """An upstream error that quotes the key it was sent, as some providers' 401s do."""
    body = {"error": {"message": f"Incorrect API key provided: {key}. Check {key} again.", "code": "bad_key"}}
    return Reply(status=status, body=json.dumps(body).encode())


def assert_no_canary(proxy: RunningProxy) -> None:
    places = {
        "records": proxy.records_path.read_text(),
        "server log": proxy.log(),
        "/health": json.dumps(proxy.health()),
    }
    for where, text in places.items():
        for canary in CANARIES:
            assert canary not in text, f"a key leaked into the {where}"


def test_no_key_reaches_records_log_or_health_and_echoed_provider_keys_are_redacted(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub
) -> None:
    config = make_config(
        auth={"keys": [{"name": "team-a", "key": "${CANARY_CLIENT_KEY}"}]},
        providers={"openai": {"api_key": "${CANARY_UPSTREAM_KEY}"}},
    )
    proxy = launch(config, env={"CANARY_CLIENT_KEY": CLIENT_CANARY, "CANARY_UPSTREAM_KEY": UPSTREAM_CANARY})
    client = {"authorization": f"Bearer {CLIENT_CANARY}"}
    payload = {"model": "gpt-4o", "messages": HELLO}
    untouched = Reply(status=429, body=b'{"error": {"message": "slow down", "code": "rate_limit"}}')
    stub.push(
        Reply(body=COMPLETION),
        Stream([sse({"id": "c", "choices": [], "usage": USAGE}), SSE_DONE]),
        echo(401, UPSTREAM_CANARY),
        echo(400, UPSTREAM_CANARY),
        untouched,
    )

    assert proxy.post_json("/v1/chat/completions", payload, client).status == 200
    assert proxy.post_json("/v1/chat/completions", {**payload, "stream": True}, client).status == 200
    unauthorized = proxy.post_json("/v1/chat/completions", payload, client)
    bad_request = proxy.post_json("/openai/v1/files", payload, client)  # not metered: redacted all the same
    limited = proxy.post_json("/v1/chat/completions", payload, client)
    refused = proxy.post_json("/v1/chat/completions", payload, {"authorization": f"Bearer {WRONG_CANARY}"})

    assert [seen.header("authorization") for seen in stub.requests] == [f"Bearer {UPSTREAM_CANARY}"] * 5
    for response, status in ((unauthorized, 401), (bad_request, 400)):
        assert response.status == status
        assert UPSTREAM_CANARY.encode() not in response.body
        assert response.json()["error"]["message"] == (
            "Incorrect API key provided: [REDACTED]. Check [REDACTED] again."
        )
        assert response.header("content-length") == str(len(response.body))
    assert (limited.status, limited.body) == (429, untouched.body)
    assert refused.status == 401 and len(stub.requests) == 5
    records = proxy.wait_records(5)
    assert {record["user_id"] for record in records} == {"team-a"}
    assert_no_canary(proxy)


def test_pass_through_keys_are_hashed_and_the_clients_own_key_echoed_back_is_left_alone(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.push(Reply(body=COMPLETION), echo(401, CLIENT_CANARY))
    client = {"authorization": f"Bearer {CLIENT_CANARY}"}
    payload = {"model": "gpt-4o", "messages": HELLO}

    assert proxy.post_json("/v1/chat/completions", payload, client).status == 200
    echoed = proxy.post_json("/v1/chat/completions", payload, client)

    assert (echoed.status, echoed.body) == (401, echo(401, CLIENT_CANARY).body)  # the client's own key
    assert [seen.header("authorization") for seen in stub.requests] == [f"Bearer {CLIENT_CANARY}"] * 2
    records = proxy.wait_records(2)
    assert all(record["user_id"].startswith("key:") for record in records)
    for where, text in {"records": proxy.records_path.read_text(), "server log": proxy.log()}.items():
        assert CLIENT_CANARY not in text, f"the client's key leaked into the {where}"
    assert CLIENT_CANARY not in json.dumps(proxy.health())


REDACTED = b"[REDACTED]"
CANARY_BYTES = UPSTREAM_CANARY.encode()
JSON_HEAD = (("content-type", "application/json"),)


@pytest.fixture(params=["http1", "aiohttp"])
def keyed_proxy(
    request: pytest.FixtureRequest, launch: ProxyLauncher, make_config: MakeConfig
) -> RunningProxy:
    """The proxy in front of a provider with its own api_key (a canary), through either upstream client."""
    config = make_config(
        server={"upstream_client": request.param}, providers={"openai": {"api_key": "${CANARY_UPSTREAM_KEY}"}}
    )
    return launch(config, env={"CANARY_UPSTREAM_KEY": UPSTREAM_CANARY})


def cut_in_the_key(body: bytes, status: int, headers: tuple[tuple[str, str], ...]) -> Stream:
    """`body` as two chunked writes a moment apart, the provider key cut between them."""
    at = body.index(CANARY_BYTES) + len(CANARY_BYTES) // 2
    return Stream([body[:at], body[at:]], status=status, headers=headers, delay=0.05)


def assert_redacted(response: RawResponse, status: int, body: bytes) -> None:
    """The answer the client got is `body` with every copy of the key replaced, its length (if any) true."""
    assert (response.status, response.body) == (status, body.replace(CANARY_BYTES, REDACTED))
    assert response.header("content-length") in (None, str(len(response.body)))


def test_a_streamed_error_has_the_provider_key_taken_out_even_cut_across_reads(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    event = b"event: error\ndata: " + echo(401, UPSTREAM_CANARY).body + b"\n\n"
    stub.always(cut_in_the_key(event, 401, (("content-type", "text/event-stream"),)))
    payload = {"model": "gpt-4o", "messages": HELLO, "stream": True}

    metered = keyed_proxy.post_json("/v1/chat/completions", payload)
    passed_through = keyed_proxy.post_json("/openai/v1/files", payload)
    with keyed_proxy.client() as client, pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)

    nothing_billed = {"total_cost": 0.0, "currency": "USD", "input_tokens": 0, "output_tokens": 0}
    cost = b": meterproxy-cost " + json.dumps(nothing_billed).encode() + b"\n\n"
    # The error chunk is the stream's last event: the cost comment goes just before it.
    assert_redacted(metered, 401, cost + event)
    assert_redacted(passed_through, 401, event)
    assert raised.value.body == cost.decode() + event.replace(CANARY_BYTES, REDACTED).decode().strip()
    assert [record["status_code"] for record in keyed_proxy.wait_records(3)] == [401] * 3
    assert_no_canary(keyed_proxy)


def test_an_error_too_large_to_read_whole_has_the_provider_key_taken_out_as_it_passes(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    body = b'{"error": {"message": "' + b"x" * MAX_READ_BODY + b" is not a key: " + CANARY_BYTES + b'"}}'
    stub.push(cut_in_the_key(body, 400, JSON_HEAD), Reply(status=400, body=body))
    payload = {"model": "gpt-4o", "messages": HELLO}

    chunked = keyed_proxy.post_json("/v1/chat/completions", payload)
    with_length = keyed_proxy.post_json("/v1/chat/completions", payload)

    assert_redacted(chunked, 400, body)
    assert_redacted(with_length, 400, body)


def test_a_compressed_error_is_searched_decoded_and_one_that_cannot_be_is_withheld(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Asked for identity, a provider may still compress: a body that quotes the key goes decoded (every
    client takes identity), one without it as it came, one in a coding the proxy cannot read not at all."""
    quoting = echo(401, UPSTREAM_CANARY).body
    other = b'{"error": {"message": "slow down", "code": "rate_limit"}}'

    event = b"event: error\ndata: " + quoting + b"\n\n"
    other_gzipped = gzip.compress(other, mtime=0)  # one body: gzip stamps the second it was made

    def encoded(coding: str, body: bytes, status: int = 401, kind: str = "application/json") -> Reply:
        return Reply(status=status, body=body, headers=(("content-type", kind), ("content-encoding", coding)))

    stub.push(
        encoded("gzip", gzip.compress(quoting)),
        encoded("deflate", zlib.compress(quoting)),
        encoded("gzip", gzip.compress(event), kind="text/event-stream"),
        encoded("gzip", other_gzipped, 429),
        encoded("br", quoting),  # no decoder for it here: it cannot be searched
        encoded("gzip", gzip.compress(quoting)),
    )
    payload = {"model": "gpt-4o", "messages": HELLO}

    gzipped = keyed_proxy.post_json("/v1/chat/completions", payload)
    deflated = keyed_proxy.post_json("/openai/v1/files", payload)
    streamed = keyed_proxy.post_json("/v1/chat/completions", {**payload, "stream": True})
    untouched = keyed_proxy.post_json("/v1/chat/completions", payload)
    withheld = keyed_proxy.post_json("/v1/chat/completions", payload)
    with keyed_proxy.client() as client, pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)

    for response, body in ((gzipped, quoting), (deflated, quoting), (streamed, event)):
        assert_redacted(response, 401, body)
        assert response.header("content-encoding") is None
    assert (untouched.status, untouched.body) == (429, other_gzipped)
    assert untouched.header("content-encoding") == "gzip"
    assert withheld.status == 401 and withheld.header("content-encoding") is None
    assert withheld.json()["error"]["code"] == "upstream_error_withheld"
    assert withheld.header("content-length") == str(len(withheld.body))
    assert "Incorrect API key provided: [REDACTED]." in str(raised.value)
    assert_no_canary(keyed_proxy)


def test_an_error_answers_headers_have_the_provider_key_taken_out(
    keyed_proxy: RunningProxy, stub: UpstreamStub
) -> None:
    quoting = echo(401, UPSTREAM_CANARY).body
    challenge = f'Bearer error="invalid_token", error_description="{UPSTREAM_CANARY} is revoked"'
    named = f"x-{UPSTREAM_CANARY}"
    quoted = (("www-authenticate", challenge), ("x-request-key", UPSTREAM_CANARY), (named, "1"))
    stub.push(
        Reply(status=401, body=quoting, headers=(*JSON_HEAD, *quoted)),
        cut_in_the_key(quoting, 401, (*JSON_HEAD, *quoted)),  # chunked, no Content-Length
        cut_in_the_key(quoting, 401, (("content-type", "text/event-stream"), *quoted)),  # not metered
    )
    payload = {"model": "gpt-4o", "messages": HELLO}
    paths = ["/v1/chat/completions", "/v1/chat/completions", "/openai/v1/files"]

    answers = [keyed_proxy.post_json(path, payload) for path in paths]

    for response in answers:
        assert_redacted(response, 401, quoting)
        assert response.header("www-authenticate") == challenge.replace(UPSTREAM_CANARY, "[REDACTED]")
        assert response.header("x-request-key") == "[REDACTED]"
        assert all(
            UPSTREAM_CANARY.lower() not in f"{name}: {value}".lower() for name, value in response.headers
        )


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 40%s\r\n\r\n", b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %s\r\n\r\n"],
    ids=["in-the-status-line", "in-a-header"],
)
@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_bad_http_that_quotes_the_provider_key_is_a_502_without_it(
    launch: ProxyLauncher, make_config: MakeConfig, head: bytes, client: str
) -> None:
    """aiohttp quotes the bytes it could not parse in its errors, and the proxy quotes the error."""
    with answering(head % CANARY_BYTES) as port:
        openai_ = {"base_url": f"http://127.0.0.1:{port}/v1", "api_key": "${CANARY_UPSTREAM_KEY}"}
        config = make_config(server={"upstream_client": client}, providers={"openai": openai_})
        proxy = launch(config, env={"CANARY_UPSTREAM_KEY": UPSTREAM_CANARY})
        response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert response.status == 502 and response.json()["error"]["code"] == "upstream_bad_response"
    assert CANARY_BYTES not in response.body
    proxy.wait_records(1)
    assert_no_canary(proxy)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 40%s\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %s\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nX-Key: %s" + b"x" * 9000 + b"\r\n\r\n",
    ],
    ids=["in-the-status-line", "in-a-header", "in-a-header-too-long"],
)
def test_bad_http_that_quotes_a_pass_through_clients_key_keeps_it_out_of_the_log(
    launch: ProxyLauncher, make_config: MakeConfig, head: bytes
) -> None:
    """The client's own key goes upstream in pass-through, and a provider's head may quote it back: the
    key must not reach the server log by way of aiohttp's error, which quotes the bytes it refused, in
    more than one shape (the default client's errors quote none, and it takes a header of any length)."""
    with answering(head % CLIENT_CANARY.encode()) as port:
        openai_ = {"base_url": f"http://127.0.0.1:{port}/v1"}
        proxy = launch(make_config(server={"upstream_client": "aiohttp"}, providers={"openai": openai_}))
        payload = {"model": "gpt-4o", "messages": HELLO}
        response = proxy.post_json(
            "/v1/chat/completions", payload, {"authorization": f"Bearer {CLIENT_CANARY}"}
        )

    assert response.status == 502 and response.json()["error"]["code"] == "upstream_bad_response"
    assert response.json()["error"]["message"].startswith("openai: the provider sent bad HTTP: ")
    [record] = proxy.wait_records(1)
    assert record["user_id"] == "key:" + hashlib.sha256(CLIENT_CANARY.encode()).hexdigest()[:12]
    assert_no_canary(proxy)


def answered_bad_http(launch: ProxyLauncher, make_config: MakeConfig, client: str, *answer: bytes) -> None:
    """A chat call to a provider that answers with `answer` (see `answering`) is a 502
    upstream_bad_response, recorded so with costs null, whichever upstream client reads it."""
    with answering(*answer) as port:
        provider = {"base_url": f"http://127.0.0.1:{port}/v1"}
        proxy = launch(make_config(server={"upstream_client": client}, providers={"openai": provider}))
        response = proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})

    assert (response.status, response.json()["error"]["code"]) == (502, "upstream_bad_response")
    record = proxy.wait_records(1)[0]
    assert (record["status_code"], record["error"], record["total_cost"]) == (
        502,
        "upstream_bad_response",
        None,
    )
    assert "Traceback" not in proxy.log()


@pytest.mark.parametrize("char", [b"\x01", b"\x1b", b"\x7f"], ids=["SOH", "ESC", "DEL"])
@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_a_header_value_with_a_control_character_is_a_502_not_a_dropped_connection(
    launch: ProxyLauncher, make_config: MakeConfig, char: bytes, client: str
) -> None:
    """aiohttp's parser lets such a value through and the server refuses to send it on: the client's
    connection was closed with no answer, and the log had a traceback where the default client gives a 502."""
    head = b"HTTP/1.1 200 OK\r\nx-trace: a%sb\r\ncontent-length: %d\r\n\r\n%s" % (
        char,
        len(COMPLETION),
        COMPLETION,
    )
    answered_bad_http(launch, make_config, client, head)


@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_a_switch_of_protocols_nothing_asked_for_is_a_502(
    launch: ProxyLauncher, make_config: MakeConfig, client: str
) -> None:
    """Nothing the proxy sends asks for an upgrade: a 101 is no answer to the call. aiohttp hands it over
    as the answer, and the server then closed the client's connection unanswered."""
    head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    answered_bad_http(launch, make_config, client, head, COMPLETION)


@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_a_key_in_the_query_stays_out_of_the_log_when_the_provider_answers_garbage(
    launch: ProxyLauncher, make_config: MakeConfig, bad_http_port: int, client: str
) -> None:
    # aiohttp quotes the request's URL, query and all, in some of its errors.
    gemini = {
        "kind": "gemini",
        "base_url": f"http://127.0.0.1:{bad_http_port}/v1beta/openai",
        "models": {"gemini-2.5-flash": {"pricing": {"input": 0.30, "output": 2.50}}},
    }
    proxy = launch(make_config(server={"upstream_client": client}, providers={"gemini": gemini}))
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()
    response = proxy.request(
        "POST",
        f"/gemini/v1beta/models/gemini-2.5-flash:generateContent?key={CLIENT_CANARY}",
        body,
        {"content-type": "application/json"},
    )

    assert response.status == 502 and CLIENT_CANARY.encode() not in response.body
    [record] = proxy.wait_records(1)
    hashed = "key:" + hashlib.sha256(CLIENT_CANARY.encode()).hexdigest()[:12]
    assert (record["status_code"], record["user_id"]) == (502, hashed)
    assert_no_canary(proxy)


FORGED = '{"dropped_record": {"user_id": "team-b", "total_cost": 99.0}}'


def test_a_client_cannot_write_lines_of_its_own_into_the_server_log(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Dropped records are recovered from the log, so a line a client writes there could bill another
    team: a newline in a path or a model name stays escaped in every line naming it."""
    line = "%0A" + FORGED.replace(" ", "%20").replace('"', "%22")
    stub.push(Reply(body=b'{"choices": []}'), Hangup())
    refused = proxy.post_json(f"/nope{line}/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO})
    unpriced = proxy.post_json("/openai/v1/chat/completions", {"model": f"x\n{FORGED}", "messages": HELLO})
    failed = proxy.post_json(f"/openai/v1/files{line}", {"purpose": "batch"})

    assert (refused.status, unpriced.status, failed.status) == (404, 200, 502)
    log = proxy.wait_log("-> openai: ")
    assert [text for text in log.splitlines() if text.startswith('{"dropped_record"')] == []
    assert "refused POST /nope%0A" in log and "no price for model 'x\\n{" in log


def test_long_model_names_are_shortened_in_the_log_and_not_kept(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Each model without a price is named in the log once, so the proxy remembers the names it warned
    of: a client sending a new long name with each call must not make it keep them all."""
    stub.always(Reply(status=401, body=b'{"error": {"message": "Incorrect API key provided", "code": null}}'))
    probe = proxy.probe()
    names = [f"openai/{n}-" + "x" * (2 << 20) for n in range(21)]
    proxy.post_json("/v1/chat/completions", {"model": names[0], "messages": HELLO})  # warms the process up
    before = probe.rss_kib()
    for name in names[1:]:
        assert proxy.post_json("/v1/chat/completions", {"model": name, "messages": HELLO}).status == 401
    grown = probe.rss_kib() - before
    print(f"\n[case 11] 20 unpriced model names of 2 MiB each: the proxy grew by {grown} KiB")

    warnings = [line for line in proxy.wait_log("'20-xxx").splitlines() if "no price for model" in line]
    assert len(warnings) == 21 and max(len(line) for line in warnings) < 500
    assert grown < 10 << 10  # KiB: the names kept would be 40 MiB


def test_a_long_model_name_no_provider_serves_is_shortened_in_the_refusal_and_its_log_line(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """A model name is the client's, as long as the body allows: the line logging its refusal shows a
    part of it, as every line naming a model does, never a megabyte per call."""
    name = "nowhere/" + "x" * (1 << 20)
    refused = proxy.post_json("/v1/chat/completions", {"model": name, "messages": HELLO})

    assert refused.status == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert len(refused.body) < 1000 and "'nowhere/xxx" in refused.json()["error"]["message"]
    [line] = [line for line in proxy.wait_log("refused POST").splitlines() if "refused POST" in line]
    assert len(line) < 1000 and "'nowhere/xxx" in line
    assert stub.requests == []


# --- 14. No SSRF ------------------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[UpstreamStub]:
    """A second upstream that nothing may ever make the proxy contact."""
    with UpstreamStub() as server:
        yield server


def test_nothing_in_a_request_makes_the_proxy_contact_another_host(
    proxy: RunningProxy, stub: UpstreamStub, elsewhere: UpstreamStub
) -> None:
    evil = f"http://127.0.0.1:{elsewhere.port}"
    elsewhere.always(Reply(body=COMPLETION))
    stub.always(Reply(body=COMPLETION))
    stub.push(
        Reply(status=302, headers=(("location", f"{evil}/v1/chat/completions"),)),
        Reply(status=307, headers=(("location", f"{evil}/v1/chat/completions"),)),
    )
    redirected = [
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}) for _ in "ab"
    ]
    assert [response.status for response in redirected] == [302, 307]  # passed back, not followed
    assert redirected[0].header("location") == f"{evil}/v1/chat/completions"

    bodies = [
        {"model": "gpt-4o", "messages": HELLO, "api_base": f"{evil}/v1", "base_url": f"{evil}/v1"},
        {"model": f"{evil}/v1/chat/completions", "messages": HELLO},
        {"model": f"openai/{evil}/v1", "messages": HELLO},
        {"model": "gpt-4o", "messages": HELLO, "url": evil, "baseURL": evil, "api_base_url": evil},
    ]
    for body in bodies:
        proxy.post_json("/v1/chat/completions", body)
        proxy.post_json("/openai/v1/chat/completions", body)
    elsewhere_host = f"127.0.0.1:{elsewhere.port}"
    for headers in (
        {"host": elsewhere_host},
        {"x-forwarded-host": elsewhere_host, "forwarded": f"host={elsewhere_host}"},
    ):
        proxy.post_json("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, headers)
    absolute = exchange(proxy.port, post(f"{evil}/v1/chat/completions", CHAT))  # absolute-form target

    assert status_of(absolute) == 200
    assert elsewhere.requests == []
    assert stub.requests, "the configured upstream was never called"
    assert all(seen.target.startswith("/v1/") for seen in stub.requests)
    assert {seen.header("host") for seen in stub.requests} == {f"127.0.0.1:{stub.port}"}


# --- 15. Paths --------------------------------------------------------------------------------------

HOSTILE_PATHS = [
    "/openai/v1/../admin",
    "/openai/v1/../../admin",
    "/openai/v1/chat/../../admin",
    "/openai/v1/chat/completions/..",
    "/openai/v1/./chat/completions",
    "/openai/v1/%2e%2e/admin",
    "/openai/v1/%2E%2E/admin",
    "/openai/v1/.%2e/admin",
    "/openai/v1/%252e%252e/admin",
    "/openai/v1/..%2fadmin",
    "/openai/v1/..%2Fadmin",
    "/openai/v1/..%5cadmin",
    "/openai/v1//admin",
    "/openai//v1/chat/completions",
    "//openai/v1/chat/completions",
    "/openai/v1/\\..\\admin",
    "/openai/v1/..\\admin",
    "/openai/%2e%2e/v1/chat/completions",
    "/v1/../openai/v1/admin",
    "/v1/%2e%2e/admin",
    "/%2e%2e/v1/chat/completions",
    "/openai/v1/a/..;/admin",
    "/openai/v1/a/..%3B/admin",
    "/openai/v1/chat/..;x=1/..;/admin",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_refused_or_stay_under_base_url(
    proxy: RunningProxy, stub: UpstreamStub, path: str
) -> None:
    stub.always(Reply(body=COMPLETION))
    answer = exchange(proxy.port, post(path, CHAT))

    status = status_of(answer)
    assert status in (400, 404) or stub.requests, answer[:300]
    for seen in stub.requests:
        segments = seen.target.split("?")[0].split("/")
        assert seen.target.startswith("/v1/") and ".." not in segments and "" not in segments[1:], seen.target
        assert "%2e" not in seen.target.lower() and "\\" not in seen.target, seen.target
        assert ";" not in seen.target and "%3b" not in seen.target.lower(), seen.target


# --- 16. Hop-by-hop headers, smuggling, Content-Encoding ----------------------------------------


def test_hop_by_hop_and_spoofed_headers_never_reach_the_upstream(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    stub.always(Reply(body=COMPLETION))
    hostile = [
        "Connection: close, Authorization, X-Secret-Hop",
        "X-Secret-Hop: 1",
        "TE: trailers, deflate",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
        "Proxy-Connection: keep-alive",
        "Keep-Alive: timeout=99",
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-Host: attacker.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Port: 8443",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Server: attacker.example",
        "X-Real-IP: 203.0.113.7",
        "Forwarded: for=203.0.113.7",
        "X-End-To-End: kept",
    ]
    answer = exchange(proxy.port, post("/v1/chat/completions", CHAT, *hostile))

    assert status_of(answer) == 200
    seen = stub.requests[-1]
    names = seen.header_names()
    dropped = {line.split(":")[0].lower() for line in hostile} - {"connection", "x-end-to-end"}
    assert not names & dropped, names & dropped
    assert seen.header("authorization") is None  # named in Connection: hop-by-hop for this request
    assert seen.header("x-end-to-end") == "kept"
    assert seen.header("connection") in (None, "keep-alive")
    record = proxy.wait_records(1)[0]
    assert record["ip_address"] == "127.0.0.1"  # the socket's address, never a forwarding header


def test_a_method_override_never_reaches_the_upstream(proxy: RunningProxy, stub: UpstreamStub) -> None:
    # A GET to a provider's path is forwarded as is, unmetered: with an override a provider that honours
    # it would run it as the POST of a billed call.
    stub.always(Reply(body=COMPLETION))
    overrides = ["X-HTTP-Method-Override: POST", "X-HTTP-Method: POST", "X-Method-Override: POST"]
    body = CHAT
    request = (
        b"GET /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + "".join(f"{line}\r\n" for line in overrides).encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    answer = exchange(proxy.port, request)

    assert status_of(answer) == 200
    assert only(stub.requests).method == "GET"
    assert not only(stub.requests).header_names() & {line.split(":")[0].lower() for line in overrides}


def test_upgrade_requests_never_reach_the_upstream(proxy: RunningProxy, stub: UpstreamStub) -> None:
    stub.always(Reply(body=COMPLETION))
    h2c = exchange(
        proxy.port, post("/v1/chat/completions", CHAT, "Connection: Upgrade, close", "Upgrade: h2c")
    )
    websocket = exchange(
        proxy.port,
        b"GET /openai/v1/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )

    assert status_of(h2c) == 400 and status_of(websocket) == 403
    assert stub.requests == []


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    ),
    "transfer-encoding and content-length": (
        b"Transfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\n"
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    ),
    "two content-lengths": b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    "obfuscated transfer-encoding": (
        b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", SMUGGLING, ids=list(SMUGGLING))
def test_ambiguous_request_framing_gets_400_and_no_upstream_call(
    proxy: RunningProxy, stub: UpstreamStub, case: str
) -> None:
    stub.always(Reply(body=COMPLETION))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    answer = exchange(proxy.port, head + SMUGGLING[case], timeout=5)

    assert status_of(answer) == 400
    assert answer.count(b"HTTP/1.1 ") == 1, "a smuggled second request was answered"
    assert b"connection: close" in head_of(answer)
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert (error["code"], error["type"]) == ("invalid_http", "invalid_request_error")
    assert stub.requests == []


def test_content_encoding_sent_to_the_client_matches_the_body(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Bodies are passed on compressed as the upstream sent them (even though the proxy asks for
    identity), with the upstream's Content-Encoding; a body the proxy edits is never labelled compressed."""
    gzipped = gzip.compress(COMPLETION)
    stream = [sse({"id": "c", "choices": [{"delta": {"content": "hi"}}]}), SSE_DONE]
    gzipped_stream = gzip.compress(b"".join(stream))
    stub.push(
        Reply(body=gzipped, headers=(("content-type", "application/json"), ("content-encoding", "gzip"))),
        Stream(
            [gzipped_stream[:20], gzipped_stream[20:]],
            headers=(("content-type", "text/event-stream"), ("content-encoding", "gzip")),
        ),
        Stream(stream),
    )
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True}).encode()
    plain = exchange(proxy.port, post("/v1/chat/completions", CHAT))
    compressed_stream = exchange(proxy.port, post("/v1/chat/completions", body))
    plain_stream = exchange(proxy.port, post("/v1/chat/completions", body))

    assert [seen.header("accept-encoding") for seen in stub.requests] == ["identity"] * 3
    assert b"content-encoding: gzip" in head_of(plain)
    assert plain.partition(b"\r\n\r\n")[2] == gzipped
    assert b"content-encoding: gzip" in head_of(compressed_stream)
    assert gzip.decompress(dechunk(compressed_stream.partition(b"\r\n\r\n")[2])) == b"".join(stream)
    assert b"content-encoding" not in head_of(plain_stream)
    records = proxy.wait_records(3)
    assert records[0]["input_tokens"] == USAGE["prompt_tokens"]  # read through the gzip


def test_a_compressed_answer_is_read_as_a_client_decodes_it_or_passed_on_unread(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    """Every coding a client undoes is undone to read the usage (x-gzip, gzip in members, codings in
    layers); a body that cannot be decoded here (br, or too large decoded) goes on as it came, its call
    recorded without usage and said so in the log, never as a bad answer."""
    half = len(COMPLETION) // 2
    padded = COMPLETION[:-1] + b" " * MAX_DECODED_BODY + b"}"  # 64 MiB of spaces: JSON, 64 KiB gzipped
    readable = {
        "x-gzip": gzip.compress(COMPLETION),
        "gzip": gzip.compress(COMPLETION[:half]) + gzip.compress(COMPLETION[half:]),  # two members
        "deflate, gzip": gzip.compress(zlib.compress(COMPLETION)),
        "gzip,identity": gzip.compress(COMPLETION),
    }
    unreadable = {"br": b"\x1b\x00\xf8", "gzip": gzip.compress(padded)}
    answers = [*readable.items(), *unreadable.items()]
    for coding, body in answers:
        stub.push(
            Reply(body=body, headers=(("content-type", "application/json"), ("content-encoding", coding)))
        )
    responses = [exchange(proxy.port, post("/v1/chat/completions", CHAT)) for _ in answers]

    for response, (coding, body) in zip(responses, answers, strict=True):
        assert status_of(response) == 200
        assert f"content-encoding: {coding}".encode() in head_of(response)
        assert response.partition(b"\r\n\r\n")[2] == body  # the bytes as the provider sent them
    records = proxy.wait_records(len(answers))
    read = [(r["error"], r["usage_source"], r["input_tokens"], r["total_cost"]) for r in records]
    assert read == [(None, "provider", 5, 8.25e-05)] * len(readable) + [(None, "none", 0, None)] * 2
    br, large = (record["proxy_request_id"] for record in records[-2:])
    proxy.wait_log(f"the answer of {br} was sent in br, which cannot be decoded here, passed on unread")
    proxy.wait_log(f"the answer of {large} was over 64 MiB decoded, passed on unread")


def dechunk(body: bytes) -> bytes:
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return data
        data, body = data + body[:size], body[size + 2 :]


@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_an_answer_nobody_asked_for_never_reaches_the_next_caller(
    launch: ProxyLauncher, make_config: MakeConfig, stub: UpstreamStub, client: str
) -> None:
    """A provider that sends a second answer after the first one (a framing bug, a stray response) must
    not have it served to the next call on its connection: another caller's data, billed to that call."""
    other = json.dumps({"id": "chatcmpl-other", "model": "gpt-4o", "choices": [], "usage": USAGE}).encode()
    stray = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(other),
        other,
    )
    second = json.dumps({"id": "chatcmpl-2", "model": "gpt-4o", "choices": [], "usage": USAGE}).encode()
    stub.push(Reply(body=COMPLETION, stray=stray), Reply(body=second))
    payload = {"model": "gpt-4o", "messages": HELLO}
    proxy = launch(make_config(server={"upstream_client": client}))

    first = proxy.post_json("/v1/chat/completions", payload, {"authorization": "Bearer sk-tenant-a"})
    # Sent to the proxy before the next call is: it is in the proxy's socket before that call is read.
    assert stub.requests[0].strayed.wait(5)
    after = proxy.post_json("/v1/chat/completions", payload, {"authorization": "Bearer sk-tenant-b"})

    assert (first.status, first.body) == (200, COMPLETION)
    assert (after.status, after.body) == (200, second)
    one, two = proxy.wait_records(2)
    assert (one["request_id"], two["request_id"]) == ("chatcmpl-1", "chatcmpl-2")
    assert len(stub.requests) == 2
