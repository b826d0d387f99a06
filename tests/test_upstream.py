"""The upstream seam and its aiohttp client, against the scripted stub on loopback."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from conftest import free_port, read_all, run_client
from upstream_stub import STRAYS, Hangup, Reply, Stream, UpstreamStub

from proxy.aiohttpclient import AiohttpUpstream
from proxy.upstream import Headers, UpstreamError, end_to_end

T = TypeVar("T")
HEADERS = [(b"content-type", b"application/json"), (b"x-trace", b"abc")]


def run(work: Callable[[AiohttpUpstream], Awaitable[T]]) -> T:
    return run_client(AiohttpUpstream, work)


@pytest.mark.parametrize("case", STRAYS, ids=list(STRAYS))
def test_bytes_after_an_answer_never_reach_the_next_call(stub: UpstreamStub, case: str) -> None:
    stub.push(STRAYS[case], Reply(body=b'{"n": 2}'))

    async def call(client: AiohttpUpstream) -> tuple[int, Headers, bytes]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return response.status, response.headers, await read_all(response)

    async def work(client: AiohttpUpstream) -> list[tuple[int, Headers, bytes]]:
        first = await call(client)
        if STRAYS[case].stray:
            # The stub sets the event after its write, so the bytes are in this loop's socket by then,
            # and the loop reads them before it resumes this coroutine.
            assert await asyncio.to_thread(stub.requests[0].strayed.wait, 5)
        return [first, await call(client)]

    (status, headers, body), second = run(work)
    assert (status, body, (b"x-stray", b"1") in headers) == (200, b'{"n": 1}', False)
    assert (second[0], second[2]) == (200, b'{"n": 2}')
    assert len(stub.requests) == 2


def test_a_head_that_is_not_http_is_a_bad_response(bad_http_port: int) -> None:
    async def work(client: AiohttpUpstream) -> tuple[str, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"http://127.0.0.1:{bad_http_port}/v1/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status

    assert run(work) == ("upstream_bad_response", 502)


def test_end_to_end_drops_hop_by_hop_headers_and_those_connection_names() -> None:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"x-private", b"1"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"content-length", b"2"),
        (b"x-request-id", b"r1"),
    ]

    assert end_to_end(headers, also_drop=frozenset({b"content-length"})) == [
        (b"Content-Type", b"application/json"),
        (b"x-request-id", b"r1"),
    ]


def test_request_and_response_reach_each_side_whole(stub: UpstreamStub) -> None:
    stub.push(
        Reply(status=201, body=b'{"ok": true}', headers=(("content-type", "application/json"), ("x-b", "2")))
    )

    async def work(client: AiohttpUpstream) -> tuple[int, Headers, bytes]:
        response = await client.send("POST", f"{stub.base_url}/chat/completions?x=1", HEADERS, b'{"a":1}', 5)
        return response.status, response.headers, await read_all(response)

    status, headers, body = run(work)
    assert (status, body, (b"x-b", b"2") in headers) == (201, b'{"ok": true}', True)
    seen = stub.requests[0]
    assert (seen.method, seen.target, seen.body) == ("POST", "/v1/chat/completions?x=1", b'{"a":1}')
    assert (seen.header("x-trace"), seen.header("user-agent"), seen.header("accept-encoding")) == (
        "abc",
        None,
        None,
    )


def test_a_released_connection_carries_the_next_call(stub: UpstreamStub) -> None:
    stub.always(Reply(body=b"{}"))

    async def work(client: AiohttpUpstream) -> list[bytes]:
        bodies = []
        for _ in range(3):
            response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
            bodies.append(await read_all(response))
            response.release()
        return bodies

    assert run(work) == [b"{}"] * 3
    assert len(stub.requests) == 3
    assert not any(seen.closed.is_set() for seen in stub.requests[:2])  # the first two stayed open


def test_a_body_read_whole_has_ended(stub: UpstreamStub) -> None:
    stub.always(Reply(body=b'{"ok": true}'))

    async def work(client: AiohttpUpstream) -> tuple[bool, bytes, bool]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        before, body = response.ended(), b""
        while len(body) < 12:
            body += await response.read()
        ended = response.ended()
        response.release()
        return before, body, ended

    assert run(work) == (False, b'{"ok": true}', True)


def test_closing_a_response_mid_stream_drops_its_connection(stub: UpstreamStub) -> None:
    stream = Stream([b"data: 1\n\n", b"data: 2\n\n"], hold_after=1)
    stub.push(stream, Reply(body=b"{}"))

    async def work(client: AiohttpUpstream) -> tuple[bytes, bytes]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        first = await response.read()
        response.close()
        assert await asyncio.to_thread(stub.requests[0].closed.wait, 5)
        return first, await read_all(await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5))

    assert run(work) == (b"data: 1\n\n", b"{}")
    assert stub.requests[0].closed_early


def test_an_unreachable_provider_is_upstream_unreachable() -> None:
    port = free_port()

    async def work(client: AiohttpUpstream) -> tuple[str, int, bool]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"http://127.0.0.1:{port}/v1/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status, raised.value.sent

    assert run(work) == ("upstream_unreachable", 502, False)


def test_no_head_in_time_is_upstream_timeout(stub: UpstreamStub) -> None:
    stub.push(Reply(body=b"{}", stall=60))  # ends early when the client leaves

    async def work(client: AiohttpUpstream) -> tuple[str, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 0.2)
        return raised.value.error, raised.value.status

    assert run(work) == ("upstream_timeout", 504)


def test_no_body_data_in_time_is_upstream_timeout(stub: UpstreamStub) -> None:
    stub.push(Stream([b"data: 1\n\n", b"data: 2\n\n"], hold_after=1))  # held until the client leaves

    async def work(client: AiohttpUpstream) -> tuple[bytes, str, int]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 0.2)
        first = await response.read()
        with pytest.raises(UpstreamError) as raised:
            await response.read()
        response.close()
        return first, raised.value.error, raised.value.status

    assert run(work) == (b"data: 1\n\n", "upstream_timeout", 504)


def test_a_provider_hanging_up_before_answering_is_upstream_reset(stub: UpstreamStub) -> None:
    stub.push(Hangup())

    async def work(client: AiohttpUpstream) -> tuple[str, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status

    assert run(work) == ("upstream_reset", 502)


def test_a_cut_body_is_upstream_reset(stub: UpstreamStub) -> None:
    stub.push(Stream([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"], cut_after=1))

    async def work(client: AiohttpUpstream) -> tuple[bytes, str, int]:
        response = await client.send("POST", f"{stub.base_url}/x", HEADERS, b"{}", 5)
        first = await response.read()
        with pytest.raises(UpstreamError) as raised:
            await read_all(response)
        response.close()
        return first, raised.value.error, raised.value.status

    assert run(work) == (b"data: 1\n\n", "upstream_reset", 502)
