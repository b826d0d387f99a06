"""A scripted HTTP/1.1 upstream on loopback: each call is answered as the test scripted it, and every
request is kept with its exact bytes and with when (and whether early) the client closed the connection.

It runs its own event loop in a background thread, so a test drives the proxy with blocking clients while
the stub streams, stalls or cuts connections. Raw asyncio rather than a web framework: a test needs to
control each chunk on the wire and to see the moment the proxy hangs up.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

Header = tuple[str, str]

# A waiting stub re-checks a test's gate this often; the gate is a threading.Event set from the test thread.
_GATE_POLL_SECONDS = 0.01
# A stray answer follows the real one this much later, so that it arrives in a read of its own.
_STRAY_SECONDS = 0.05


@dataclass(frozen=True)
class Reply:
    """A whole response sent with its Content-Length, `stall` seconds after the request arrived.

    `interim`: 1xx responses, (status, headers) each, sent as soon as the request has arrived.
    `stray`: bytes sent a moment after the response, in a write of their own: an answer nobody asked for.
    """

    status: int = 200
    body: bytes = b""
    headers: Sequence[Header] = (("content-type", "application/json"),)
    stall: float = 0.0
    interim: Sequence[tuple[int, Sequence[Header]]] = ()
    stray: bytes = b""


@dataclass(frozen=True)
class Stream:
    """A chunked response, one chunk per write, `delay` seconds apart.

    `hold_after=n`: after n chunks, wait until the test sets `gate` (or the client leaves).
    `cut_after=n`: after n chunks, close the connection without the terminating chunk, so the body is
    incomplete: what the proxy sees when an upstream goes away mid-stream.
    """

    chunks: Sequence[bytes]
    status: int = 200
    headers: Sequence[Header] = (("content-type", "text/event-stream"),)
    delay: float = 0.0
    stall: float = 0.0
    hold_after: int | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    cut_after: int | None = None


@dataclass(frozen=True)
class Hangup:
    """Close the connection without answering, `stall` seconds after the request arrived."""

    stall: float = 0.0


Script = Reply | Stream | Hangup
# Chooses the answer from the request itself: for load tests whose calls arrive in no fixed order.
Responder = Callable[["SeenRequest"], Script]

NO_SCRIPT = Reply(status=599, body=b'{"stub": "no script for this request"}')


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE event carrying `payload` as compact JSON, the way OpenAI frames stream chunks."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# A second response after an answer: sent in the answer's own write (beyond its Content-Length), or a
# moment later on the same connection. A client must never take it for the next call's answer.
STRAY_BODY = b'{"stray": true}'
STRAY = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-stray: 1\r\n\r\n%s" % (len(STRAY_BODY), STRAY_BODY)
STRAYS = {
    "in the answer's write": Reply(
        body=b'{"n": 1}' + STRAY, headers=(("content-type", "application/json"), ("content-length", "8"))
    ),
    "a moment after the answer": Reply(body=b'{"n": 1}', stray=STRAY),
}


@dataclass
class SeenRequest:
    """One request as the stub received it, and what became of its connection."""

    method: str
    target: str
    headers: list[Header]
    body: bytes
    answered: threading.Event = field(default_factory=threading.Event)
    strayed: threading.Event = field(default_factory=threading.Event)  # its Reply's stray bytes were sent
    closed: threading.Event = field(default_factory=threading.Event)
    closed_early: bool = False
    closed_at: float | None = None

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def header_names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(asyncio.Protocol):
    def __init__(self, stub: UpstreamStub) -> None:
        self.stub = stub
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.gone = asyncio.Event()
        self.hung_up_by_us = False
        self.current: SeenRequest | None = None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stub._connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.arrived.set()

    def eof_received(self) -> None:
        self._client_left()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_left()
        self.stub._connections.discard(self)

    def _client_left(self) -> None:
        if self.gone.is_set():
            return
        self.gone.set()
        self.arrived.set()
        if self.current is not None and not self.hung_up_by_us:
            self.current.closed_early = not self.current.answered.is_set()
            self.current.closed_at = time.monotonic()
            self.current.closed.set()

    def hang_up(self) -> None:
        self.hung_up_by_us = True
        if self.transport is not None:
            self.transport.close()

    async def serve(self) -> None:
        while True:
            head = await self._read_until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = [
                (name, value.strip()) for name, _, value in (line.partition(":") for line in lines[1:])
            ]
            seen = SeenRequest(method=method, target=target, headers=headers, body=b"")
            body = await self._read_body(seen)
            if body is None:
                return
            seen.body = body
            self.current = seen
            self.stub._record(seen)
            if not await self._answer(self.stub._script_for(seen), seen):
                return
            if (seen.header("connection") or "").lower() == "close":
                self.hang_up()
                return

    async def _read_until(self, marker: bytes) -> bytes | None:
        while (end := self.buffer.find(marker)) < 0:
            if self.gone.is_set():
                return None
            self.arrived.clear()
            await self.arrived.wait()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def _read_exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if self.gone.is_set():
                return None
            self.arrived.clear()
            await self.arrived.wait()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _read_body(self, seen: SeenRequest) -> bytes | None:
        if "chunked" in (seen.header("transfer-encoding") or "").lower():
            body = bytearray()
            while True:
                size_line = await self._read_until(b"\r\n")
                if size_line is None:
                    return None
                size = int(size_line.split(b";")[0], 16)
                chunk = await self._read_exactly(size + 2)
                if chunk is None:
                    return None
                if size == 0:
                    return bytes(body)
                body += chunk[:-2]
        return await self._read_exactly(int(seen.header("content-length") or 0))

    async def _left_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the client leaves; True if it left."""
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _held_until_open(self, gate: threading.Event) -> bool:
        """Wait until the test opens `gate`; True if the client left first."""
        while not gate.is_set():
            if await self._left_within(_GATE_POLL_SECONDS):
                return True
        return False

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def _answer(self, script: Script, seen: SeenRequest) -> bool:
        """Send the scripted response; True if the connection stays open for another request."""
        if isinstance(script, Reply):
            for status, headers in script.interim:
                self._write(_head(status, headers))
        if script.stall and await self._left_within(script.stall):
            return False
        if isinstance(script, Hangup):
            self.hang_up()
            return False
        if isinstance(script, Reply):
            length = (
                () if _has(script.headers, "content-length") else (("content-length", str(len(script.body))),)
            )
            self._write(_head(script.status, [*script.headers, *length]) + script.body)
            seen.answered.set()
            if script.stray:
                if await self._left_within(_STRAY_SECONDS):
                    return False
                self._write(script.stray)
                seen.strayed.set()
            return True
        self._write(_head(script.status, [*script.headers, ("transfer-encoding", "chunked")]))
        for index, chunk in enumerate(script.chunks):
            if not await self._before_chunk(script, index):
                return False
            self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if not await self._before_chunk(script, len(script.chunks)):
            return False
        self._write(b"0\r\n\r\n")
        seen.answered.set()
        return True

    async def _before_chunk(self, script: Stream, index: int) -> bool:
        """Pause, hold or cut before chunk `index` as scripted; False when the stream is over."""
        if index and index < len(script.chunks) and script.delay and await self._left_within(script.delay):
            return False
        if index == script.hold_after and await self._held_until_open(script.gate):
            return False
        if index == script.cut_after:
            self.hang_up()
            return False
        return not self.gone.is_set()


def _has(headers: Sequence[Header], name: str) -> bool:
    return any(key.lower() == name for key, _ in headers)


def _head(status: int, headers: Sequence[Header]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Scripted"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class UpstreamStub:
    """The stub server: `push()` scripts for the next calls, `always()` for every call after them."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstream-stub", daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._scripts: deque[Script] = deque()
        self._default: Script | Responder = NO_SCRIPT
        self._requests: list[SeenRequest] = []
        self.keep_requests = True  # False: count requests without keeping them (long load tests)
        self.request_count = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.port = 0

    @property
    def base_url(self) -> str:
        """What a provider's `base_url` is set to, to reach this stub."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        self._server = self._call(self._loop.create_server(lambda: _Connection(self), "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> UpstreamStub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [connection.task for connection in self._connections if connection.task is not None]
        for connection in list(self._connections):
            connection.hang_up()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def push(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order."""
        with self._lock:
            self._scripts.extend(scripts)

    def always(self, script: Script | Responder) -> None:
        """Answer every request that finds no pushed script with this one (or with what it returns)."""
        with self._lock:
            self._default = script

    def _script_for(self, seen: SeenRequest) -> Script:
        with self._lock:
            script = self._scripts.popleft() if self._scripts else self._default
        return script if isinstance(script, Reply | Stream | Hangup) else script(seen)

    def close_connections(self) -> None:
        """Close every connection from the proxy, as a provider closes keep-alive connections left idle."""
        self._call(self._close_connections())

    async def _close_connections(self) -> None:
        for connection in list(self._connections):
            connection.hang_up()

    @property
    def open_connections(self) -> int:
        """Connections from the proxy that are open right now."""
        return len(self._connections)

    def _record(self, seen: SeenRequest) -> None:
        with self._arrived:
            self.request_count += 1
            if self.keep_requests:
                self._requests.append(seen)
            self._arrived.notify_all()

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[SeenRequest]:
        """Block until at least `count` requests arrived; fail the test if they did not in time."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(f"the stub saw {len(self._requests)} requests, expected {count}")
            return list(self._requests)
