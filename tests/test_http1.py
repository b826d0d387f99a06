"""The lean HTTP/1.1 upstream client (proxy/http1.py, its pool, and proxy/connection.py, one of its
connections, tested together through the pool) against the scripted stub on loopback."""

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from conftest import answering, read_all, run_client
from upstream_stub import STRAYS, Hangup, Reply, Stream, UpstreamStub

from proxy.http1 import HTTP1Upstream
from proxy.upstream import UpstreamError, UpstreamResponse

T = TypeVar("T")
HEADERS = [(b"content-type", b"application/json"), (b"x-trace", b"abc")]


def run(work: Callable[[HTTP1Upstream], Awaitable[T]]) -> T:
    return run_client(HTTP1Upstream, work)


def test_request_bytes_and_response_reach_each_side_whole(stub: UpstreamStub) -> None:
    stub.push(
        Reply(status=201, body=b'{"ok": true}', headers=(("content-type", "application/json"), ("x-b", "2")))
    )

    async def work(client: HTTP1Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await client.send("POST", f"{stub.base_url}/chat/completions?x=1", HEADERS, b'{"a":1}', 5)
        return response.status, response.headers, await read_all(response)

    status, headers, body = run(work)
    assert (status, body) == (201, b'{"ok": true}')
    assert (b"x-b", b"2") in headers
    seen = stub.requests[0]
    assert (seen.method, seen.target.endswith("/chat/completions?x=1"), seen.body) == (
        "POST",
        True,
        b'{"a":1}',
    )
    assert (seen.header("x-trace"), seen.header("content-length")) == ("abc", "7")
    assert seen.header("host") == stub.base_url.split("//")[1].split("/")[0]


def test_keep_alive_connections_are_reused(stub: UpstreamStub) -> None:
    stub.always(Reply(body=b"{}"))

    async def work(client: HTTP1Upstream) -> int:
        for _ in range(5):
            assert await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)) == b"{}"
        return client.idle_connections

    assert run(work) == 1
    assert len(stub.requests) == 5


def test_a_body_read_whole_has_ended_and_released_its_connection_carries_the_next_call(
    stub: UpstreamStub,
) -> None:
    stub.always(Reply(body=b'{"ok": true}'))

    async def work(client: HTTP1Upstream) -> list[tuple[bool, bytes, bool]]:
        seen = []
        for _ in range(2):
            response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
            before, body = response.ended(), b""
            while len(body) < 12:  # the reply is one write: its end comes with its last bytes
                body += await response.read()
            seen.append((before, body, response.ended()))
            response.release()  # no read of b"" first: the relay does without it
        assert client.idle_connections == 1
        return seen

    assert run(work) == [(False, b'{"ok": true}', True)] * 2
    assert len(stub.requests) == 2 and not stub.requests[0].closed.is_set()


def test_a_call_after_the_provider_closed_the_idle_connection_goes_out_once_on_a_new_one(
    stub: UpstreamStub,
) -> None:
    stub.always(Reply(body=b"{}"))

    async def work(client: HTTP1Upstream) -> bytes:
        assert await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)) == b"{}"
        stub.close_connections()  # the provider's keep-alive timeout
        async with asyncio.timeout(5):
            while client.idle_connections:
                await asyncio.sleep(0.01)
        return await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5))

    assert run(work) == b"{}"
    assert len(stub.requests) == 2


def test_chunked_stream_arrives_chunk_by_chunk_and_ends(stub: UpstreamStub) -> None:
    stub.push(Stream([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"], delay=0.05))

    async def work(client: HTTP1Upstream) -> list[bytes]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return [chunk async for chunk in _chunks(response)]

    chunks = run(work)
    assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert len(chunks) == 3


async def _chunks(response: UpstreamResponse):  # type: ignore[no-untyped-def]
    while chunk := await response.read():
        yield chunk


def test_a_cut_stream_raises_upstream_reset(stub: UpstreamStub) -> None:
    stub.push(Stream([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"], cut_after=1))

    async def work(client: HTTP1Upstream) -> tuple[bytes, str]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        first = await response.read()
        with pytest.raises(UpstreamError) as raised:
            while await response.read():
                pass
        return first, raised.value.error

    assert run(work) == (b"data: 1\n\n", "upstream_reset")


def test_a_stall_before_the_head_times_out(stub: UpstreamStub) -> None:
    stub.push(Reply(body=b"{}", stall=3))

    async def work(client: HTTP1Upstream) -> tuple[str, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 0.3)
        return raised.value.error, raised.value.status

    assert run(work) == ("upstream_timeout", 504)


def test_the_timeout_counts_each_wait_for_data_not_the_whole_stream(stub: UpstreamStub) -> None:
    # Five chunks 0.2 s apart take 0.8 s in all, past the 0.5 s timeout, but no wait lasts 0.5 s.
    stub.push(Stream([b"data: %d\n\n" % i for i in range(5)], delay=0.2))

    async def work(client: HTTP1Upstream) -> bytes:
        return await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 0.5))

    assert run(work) == b"".join(b"data: %d\n\n" % i for i in range(5))


def test_a_stall_mid_stream_times_out_after_the_data_stops(stub: UpstreamStub) -> None:
    stub.push(Stream([b"data: 1\n\n", b"data: 2\n\n"], delay=3))

    async def work(client: HTTP1Upstream) -> tuple[bytes, str, float]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 0.4)
        first = await response.read()
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError) as raised:
            await response.read()
        waited = asyncio.get_running_loop().time() - started
        response.close()
        return first, raised.value.error, waited

    first, error, waited = run(work)
    assert (first, error) == (b"data: 1\n\n", "upstream_timeout")
    assert 0.35 <= waited < 2.5  # 0.4 s, with room for a busy machine


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def work(client: HTTP1Upstream) -> tuple[str, int, bool]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"http://127.0.0.1:{port}/v1/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status, raised.value.sent

    assert run(work) == ("upstream_unreachable", 502, False)


def test_hangup_without_an_answer_is_a_reset(stub: UpstreamStub) -> None:
    stub.push(Hangup())

    async def work(client: HTTP1Upstream) -> str:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return raised.value.error

    assert run(work) == "upstream_reset"


def test_closing_mid_body_drops_the_connection_and_the_next_call_gets_a_fresh_one(stub: UpstreamStub) -> None:
    gate_stream = Stream([b"data: 1\n\n", b"data: 2\n\n"], hold_after=1)
    stub.push(gate_stream, Reply(body=b"{}"))

    async def work(client: HTTP1Upstream) -> bytes:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        assert await response.read() == b"data: 1\n\n"
        response.close()
        return await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5))

    assert run(work) == b"{}"
    assert stub.requests[0].closed_early


def test_interim_responses_are_skipped_and_the_connection_serves_the_next_call(stub: UpstreamStub) -> None:
    early_hints = (103, (("link", "</style.css>; rel=preload"),))
    stub.push(
        Reply(status=201, body=b'{"n": 1}', interim=[(100, ()), early_hints], stall=0.2),
        Reply(body=b'{"n": 2}'),
    )

    async def work(client: HTTP1Upstream) -> list[tuple[int, bool, bytes]]:
        answers = []
        for _ in range(2):
            response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
            linked = any(name == b"link" for name, _ in response.headers)
            answers.append((response.status, linked, await read_all(response)))
        assert client.idle_connections == 1
        return answers

    assert run(work) == [(201, False, b'{"n": 1}'), (200, False, b'{"n": 2}')]
    assert len(stub.requests) == 2


def test_a_101_switching_protocols_is_a_bad_response(stub: UpstreamStub) -> None:
    upgrade = (101, (("upgrade", "h2c"), ("connection", "upgrade")))
    stub.push(Reply(body=b"{}", interim=[upgrade], stall=0.2))

    async def work(client: HTTP1Upstream) -> tuple[str, int, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status, client.idle_connections

    assert run(work) == ("upstream_bad_response", 502, 0)


def test_a_large_body_is_read_whole_with_flow_control(stub: UpstreamStub) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, past the high-water mark
    stub.push(Reply(body=body, headers=(("content-type", "application/octet-stream"),)))

    async def work(client: HTTP1Upstream) -> bytes:
        response = await client.send("GET", f"{stub.base_url}/files/f/content", [], b"", 5)
        parts = []
        while chunk := await response.read():
            parts.append(chunk)
            await asyncio.sleep(0)
        return b"".join(parts)

    assert run(work) == body
    assert stub.requests[0].header("content-length") is None


@pytest.mark.parametrize("case", STRAYS, ids=list(STRAYS))
def test_bytes_after_an_answer_close_the_connection_and_never_reach_the_next_call(
    stub: UpstreamStub, case: str
) -> None:
    stub.push(STRAYS[case], Reply(body=b'{"n": 2}'))

    async def call(client: HTTP1Upstream) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return response.status, response.headers, await read_all(response)

    async def work(client: HTTP1Upstream) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        first = await call(client)
        for _ in range(500):  # the client closes the connection once the stray bytes are in (5 s at most)
            if stub.requests[0].closed.is_set():
                break
            await asyncio.sleep(0.01)
        return [first, await call(client)]

    (status, headers, body), second = run(work)
    assert (status, body, (b"x-stray", b"1") in headers) == (200, b'{"n": 1}', False)
    assert (second[0], second[2]) == (200, b'{"n": 2}')
    assert len(stub.requests) == 2


def test_broken_framing_in_the_heads_own_write_is_a_bad_response_not_a_reset() -> None:
    """The parser's error came first, then the close that follows it: that close left the call's error
    as upstream_reset, when the bad chunk arrived before the call read its body."""
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n"

    async def work(client: HTTP1Upstream) -> tuple[bytes, str]:
        response = await client.send("POST", f"http://127.0.0.1:{port}/x", HEADERS, b"{}", 5)
        await asyncio.sleep(0.1)  # the close is in too
        first = await response.read()
        with pytest.raises(UpstreamError) as raised:
            await response.read()
        return first, raised.value.error

    with answering(head) as port:
        assert run(work) == (b"hello", "upstream_bad_response")
