"""The server protocol: bounded reads, a response head going out with the bytes that follow it, and a
lost connection told to every call on it."""

import asyncio
import json
import socket
from typing import Any, cast

from conftest import CLIENT_KEY, WAIT_SECONDS, RunningProxy, only
from upstream_stub import SSE_DONE, Stream, UpstreamStub, sse
from uvicorn.config import Config
from uvicorn.server import ServerState

from proxy.protocol import BODY_HIGH_WATER, READ_SIZE, ServerProtocol, _HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        self.writes.append(b"<paused>")


def holding(fake: FakeTransport) -> _HeadHoldingTransport:
    return _HeadHoldingTransport(cast(asyncio.Transport, fake), asyncio.get_running_loop())


def test_a_head_and_its_body_go_out_in_one_write() -> None:
    async def main() -> list[bytes]:
        fake = FakeTransport()
        transport = holding(fake)
        transport.write(HEAD)
        assert fake.writes == []
        transport.write(b"{}")
        await asyncio.sleep(0)  # the flush scheduled for the head finds nothing left
        return fake.writes

    assert asyncio.run(main()) == [HEAD + b"{}"]


def test_a_head_with_nothing_after_it_goes_out_on_the_loops_next_turn() -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        fake = FakeTransport()
        transport = holding(fake)
        transport.write(HEAD)
        before = list(fake.writes)
        await asyncio.sleep(0)
        return before, fake.writes

    assert asyncio.run(main()) == ([], [HEAD])


def test_body_bytes_are_written_at_once_and_close_sends_a_held_head_first() -> None:
    async def main() -> tuple[list[bytes], bool]:
        fake = FakeTransport()
        transport = holding(fake)
        transport.write(b"5\r\nchunk\r\n")
        transport.write(HEAD)
        transport.close()
        return fake.writes, fake.closed

    assert asyncio.run(main()) == ([b"5\r\nchunk\r\n", HEAD], True)


def test_a_head_is_dropped_when_the_connection_closed_under_it() -> None:
    async def main() -> list[bytes]:
        fake = FakeTransport()
        transport = holding(fake)
        transport.write(HEAD)
        fake.closed = True  # the client went away before the loop's next turn
        await asyncio.sleep(0)
        return fake.writes

    assert asyncio.run(main()) == []


def test_everything_else_is_the_real_transports() -> None:
    async def main() -> tuple[Any, bool, list[bytes]]:
        fake = FakeTransport()
        transport = holding(fake)
        transport.pause_reading()
        return transport.get_extra_info("peername"), transport.is_closing(), fake.writes

    assert asyncio.run(main()) == (("127.0.0.1", 5000), False, [b"<paused>"])


def serving(app: Any) -> ServerProtocol:
    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    return ServerProtocol(config=config, server_state=ServerState(), app_state={})


def deliver(protocol: ServerProtocol, data: bytes) -> None:
    """What the event loop does with `data` arriving on the socket: read after read into get_buffer."""
    while data:
        buffer = protocol.get_buffer(-1)
        taken = data[: len(buffer)]
        buffer[: len(taken)] = taken
        protocol.buffer_updated(len(taken))
        data = data[len(taken) :]


def test_reads_are_bounded_and_reading_pauses_once_the_unread_body_passes_its_mark() -> None:
    async def main() -> tuple[int, list[int]]:
        requests: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            requests.append(scope)
            await asyncio.Event().wait()  # never reads the body

        fake = FakeTransport()
        paused_at: list[int] = []
        fake.pause_reading = lambda: paused_at.append(unread[0])  # type: ignore[method-assign]
        protocol = serving(app)
        protocol.connection_made(cast(asyncio.Transport, fake))
        deliver(protocol, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        unread = [0]
        piece = b"x" * 1000
        while not paused_at:
            unread[0] += len(piece)
            deliver(protocol, b"%x\r\n%s\r\n" % (len(piece), piece))
        await asyncio.sleep(0)
        assert [scope["method"] for scope in requests] == ["POST"]
        return len(protocol.get_buffer(-1)), paused_at

    size, paused_at = asyncio.run(main())
    assert size == READ_SIZE == 16 << 10
    # reading pauses at the first piece that takes the unread body past 40 KiB, and only then
    assert paused_at == [41_000] and BODY_HIGH_WATER == 40_960


def chat_request(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (CLIENT_KEY.encode(), len(data), data)
    )


def test_a_client_that_leaves_with_a_request_pipelined_has_the_call_in_flight_cut_and_recorded(
    proxy: RunningProxy, stub: UpstreamStub
) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    first = sse({"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    held = Stream([first, SSE_DONE], hold_after=1)  # the provider is still generating
    stub.push(held)
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        # The next call goes out before this one is answered, on the same connection (pipelining).
        streamed = chat_request({"model": "gpt-4o-mini", "messages": messages, "stream": True})
        client.sendall(streamed + chat_request({"model": "gpt-4o-mini", "messages": messages}))
        received = b""
        while b"data: " not in received:
            received += client.recv(65536)
    seen = only(stub.wait_requests(1))
    try:
        # The provider is hung up on, as for any call whose client left, and the call recorded as left.
        assert seen.closed.wait(WAIT_SECONDS) and seen.closed_early
        record = only(proxy.wait_records(1))
    finally:
        held.gate.set()
    assert (record["status_code"], record["error"]) == (499, "client_disconnected")
    assert len(stub.requests) == 1  # the pipelined call never started: its client is gone
    assert "Exception in ASGI application" not in proxy.log()
