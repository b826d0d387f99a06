"""The HTTP/1.1 server protocol uvicorn runs for every client connection.

It is uvicorn's own (httptools) protocol with five changes, all below the app:

- Reads are bounded. uvloop reads up to 256,000 bytes from a socket at a time and uvicorn reads on
  until more than 64 KiB of a request body wait unread, so a proxy refusing a body over its limit
  could already have taken in about 314 KiB more. Here every socket read takes at most `READ_SIZE`
  bytes and reading pauses once more than `BODY_HIGH_WATER` bytes of body wait unread: the proxy
  holds at most their sum (56 KiB) beyond what it has looked at (issue 6, case 11).
- Request heads are bounded. uvicorn's httptools protocol takes a request line and headers of any
  size, and httptools joins a header value's pieces anew at every read: a client sending a head
  without end makes the process hold every byte (about 16 bytes of memory per byte, for many small
  headers) and spend CPU that grows with the square of the head's size. Here a head over `MAX_HEAD`
  gets a 431 and its connection is closed, having taken in at most one read more than that.
- Its refusals are OpenAI-shaped: a request its parser cannot read gets `{"error": {...}}` with a
  400, where uvicorn answers in plain text; SDKs read the error from that JSON.
- A response's head is written together with its body. uvicorn writes the status line and headers
  the moment the app sends `http.response.start`, and the body in a second write: two system calls
  and two TCP segments for every answer, where nginx sends one. Here the head waits for the next
  write on its connection and goes out with it; if none comes before the event loop's next turn (a
  stream whose first event is still upstream), it goes alone then, so no head waits longer than that.
- A lost connection is told to every request on it not yet answered. uvicorn tells only the latest
  one, which with pipelining is a request queued behind the call being answered: that call never
  learnt its client had left (its provider went on generating, its record said it was answered, and
  its writes to the closed connection raised).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.errors import error_body

log = logging.getLogger("meterproxy")

READ_SIZE = 16 << 10  # the most one socket read takes in
BODY_HIGH_WATER = 40 << 10  # unread request body (bytes) past which reading pauses
MAX_HEAD = 64 << 10  # the largest request head (request line and headers) taken, in bytes
_HEAD = b"HTTP/1.1 "  # how every status line uvicorn writes begins

# Every read lands here and is copied out at once (uvloop and asyncio call get_buffer, read, then
# buffer_updated, with nothing in between), so one buffer serves every connection of the process's
# event loop. uvicorn runs one event loop per process.
_read_buffer = memoryview(bytearray(READ_SIZE))


class _HeadHoldingTransport:
    """The connection's transport, holding a response head back until what follows it is written."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing heads with bodies, pausing at a smaller unread body,
    refusing a request head over MAX_HEAD, answering errors of its own in OpenAI's shape, and telling
    a lost connection to every request on it not yet answered."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        held = _HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, held))
        self.heading = True  # the next bytes are a request head's
        self.head_size = 0  # bytes taken in since that head began (and a read's worth before)
        # Requests still unanswered when a later one was read on the connection (pipelined): uvicorn
        # tells a lost connection only to the latest.
        self.earlier: list[RequestResponseCycle] = []

    def connection_lost(self, exc: Exception | None) -> None:
        for cycle in self.earlier:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()  # wakes the call's wait on receive(): its client has left
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.heading and not self.transport.is_closing():
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._refuse_head()

    def on_headers_complete(self) -> None:
        self.heading = False
        earlier = self.cycle
        super().on_headers_complete()
        if earlier is not None and not earlier.response_complete and earlier is not self.cycle:
            self.earlier = [cycle for cycle in self.earlier if not cycle.response_complete]
            self.earlier.append(earlier)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.heading, self.head_size = True, 0

    def _refuse_head(self) -> None:
        client = self.client[0] if self.client else "?"
        log.warning("refused a request head over %d KiB from %s: 431", MAX_HEAD >> 10, client)
        self._refuse(431, "head_too_large", f"the request line and headers are over {MAX_HEAD >> 10} KiB")

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request its parser refuses (ambiguous framing, a malformed header), in
        # plain text there: every error the proxy answers is OpenAI-shaped, for the SDKs to read.
        self._refuse(400, "invalid_http", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer an OpenAI-shaped error and close the connection."""
        if self.cycle is None or self.cycle.response_complete:  # else an answer is on its way: cut it
            body = error_body(status, code, message)
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(), len(body), body)
            )
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        cycle = self.cycle
        if not cycle.response_complete and len(cycle.body) > BODY_HIGH_WATER:
            self.flow.pause_reading()


class ServerProtocol(asyncio.BufferedProtocol):
    """Takes a connection's bytes in at most `READ_SIZE` at a time and hands them to the HTTP protocol.

    uvloop lets a protocol choose its read size only if it is not an `asyncio.Protocol`, and
    uvicorn's are, hence this protocol in front of it. uvicorn constructs it with its own arguments.
    """

    __slots__ = ("_http",)

    def __init__(self, **uvicorn_arguments: Any) -> None:
        self._http = _HttpProtocol(**uvicorn_arguments)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._http.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._http.connection_lost(exc)

    def eof_received(self) -> None:
        self._http.eof_received()

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._http.data_received(_read_buffer[:nbytes].tobytes())
