"""The upstream seam and its aiohttp client, against the scripted stub on loopback."""

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from upstream_stub import Reply, UpstreamStub

from proxy.upstream import AiohttpUpstream, Headers, UpstreamError, UpstreamResponse

T = TypeVar("T")
HEADERS = [(b"content-type", b"application/json"), (b"x-trace", b"abc")]


def run(work: Callable[[AiohttpUpstream], Awaitable[T]]) -> T:
    async def main() -> T:
        client = AiohttpUpstream()
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


async def read_all(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


STRAY_BODY = b'{"stray": true}'
STRAY = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-stray: 1\r\n\r\n%s" % (len(STRAY_BODY), STRAY_BODY)
STRAYS = {
    "in the answer's write": Reply(
        body=b'{"n": 1}' + STRAY, headers=(("content-type", "application/json"), ("content-length", "8"))
    ),
    "a moment after the answer": Reply(body=b'{"n": 1}', stray=STRAY),
}


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


@pytest.fixture
def bad_http_port() -> Iterator[int]:
    """A loopback server that answers every request with a head that is not HTTP, and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nthis is not a header\r\ncontent-length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way (Linux)
    server.close()
    thread.join(5)


def test_a_head_that_is_not_http_is_a_bad_response(bad_http_port: int) -> None:
    async def work(client: AiohttpUpstream) -> tuple[str, int]:
        with pytest.raises(UpstreamError) as raised:
            await client.send("POST", f"http://127.0.0.1:{bad_http_port}/v1/x", HEADERS, b"{}", 5)
        return raised.value.error, raised.value.status

    assert run(work) == ("upstream_bad_response", 502)
