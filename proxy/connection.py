"""One keep-alive HTTP/1.1 connection to a provider, as an asyncio protocol with httptools' parser: the
request written in one piece, the answer's head, then its body as it arrives, with flow control and a
read timeout; and `Exchange`, one call's handle on it. The pool of them is proxy/http1.py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol, cast

import httptools

from proxy.upstream import Headers, UpstreamError

_HIGH_WATER = 256 * 1024  # stop reading from the provider while this much body waits for the client


class Pool(Protocol):
    """Where a connection goes back when its call is done with it, and leaves when it closes."""

    def put(self, connection: Connection) -> None: ...

    def forget(self, connection: Connection) -> None: ...


class _Surplus(Exception):
    """Bytes after the end of an answer, before the next request: no call's answer."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to one origin; it is also the response of the call it carries."""

    def __init__(self, pool: Pool, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: Headers = []
        self.timeout = 0.0
        self.head_only = False
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        # One timer per call, not per read (a stream waits once per event): each wait only moves the
        # deadline, and the timer, when it fires early, sets itself again for the deadline.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._paused = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._error: UpstreamError | None = None
        self._done = True  # no call on it: it may sit in the pool

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self._done:
            # Nothing was asked on an idle connection: these bytes answer no call, and the next call
            # must not take them for its answer (another call's data, a wrong record).
            self._close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._complete:
                self._fail(UpstreamError("upstream_bad_response", 502, f"the provider sent bad HTTP: {exc}"))
            # Else the answer was whole and more bytes followed it (on_message_begin): the call keeps
            # its answer, and the connection, whose framing cannot be trusted, is closed.
            self._close()
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream_bad_response", 502, "the provider switched protocols (101)"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._done:
            self.pool.forget(self)
            return
        if not self._complete:
            # A body without length or chunking ends with the connection, unless the connection failed
            # (a reset): then it is cut (RFC 9112 section 6.3), not whole.
            if self._until_close and exc is None:
                self._complete = True
                self._wake()
            elif self._error is None:  # a close that follows the parser's error leaves its error the call's
                self._fail(
                    UpstreamError("upstream_reset", 502, "the provider closed the connection mid-response")
                )

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # A second answer to one request: raising stops the parser before it reads a byte of it.
            raise _Surplus

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows on the same connection
            # (RFC 9110 15.2). Taken for the answer, it left the real one to be served to the next call.
            # A 101 makes the parser raise: nothing we send asks for an upgrade.
            self.headers = []
            return
        self.status = status
        self._keep_alive = self.parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self.head_only:
            self._complete = True
            self._keep_alive = False  # the parser would wait for a body a HEAD response does not have
        elif status not in (204, 304):
            names = {name.lower() for name, _ in self.headers}
            self._until_close = b"content-length" not in names and b"transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._queued += len(body)
        if self._queued > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.status:  # the end of an interim answer
            return
        self._complete = True
        self._wake()

    # one call

    async def start(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._done = False
        self._head = loop.create_future()
        assert self.transport is not None
        self.transport.write(request)
        await self._wait(self._head)

    async def read(self) -> bytes:
        while True:
            if self._body:
                chunk = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._queued = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                self.release()
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._wait(self._waiter)

    @property
    def ended(self) -> bool:
        """The whole body is in and taken: the next read() returns b"" at once."""
        return self._complete and not self._body

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        self._stop_timer()
        if self._complete and self._keep_alive and self.transport is not None and not self._body:
            self._reset()
            self.pool.put(self)
        else:
            self._close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._stop_timer()
            self._close()

    # internals

    async def _wait(self, future: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._time_out)
        await future

    def _time_out(self) -> None:
        self._timer = None
        # The future waited on: a read's once the head is in, else the head's.
        reading = self._waiter is not None
        future = self._waiter if reading else self._head
        if future is None or future.done():
            return  # not waiting now: the next wait sets a timer
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._time_out)
            return
        what = "no data from the provider in" if reading else "the provider did not answer in"
        future.set_exception(UpstreamError("upstream_timeout", 504, f"{what} {self.timeout:g} s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _reset(self) -> None:
        self.status = 0
        self.headers = []
        self.head_only = False
        self._head = self._waiter = None
        self._complete = self._keep_alive = self._until_close = False
        self._error = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.pool.forget(self)


class Exchange:
    """One call's handle on its connection; once it lets go, closing it cannot touch the next call's."""

    __slots__ = ("_connection", "status", "headers")

    def __init__(self, connection: Connection) -> None:
        self._connection: Connection | None = connection
        self.status = connection.status
        self.headers = connection.headers

    async def read(self) -> bytes:
        if self._connection is None:
            return b""
        chunk = await self._connection.read()
        if not chunk:
            self._connection = None  # it went back to the pool, or was closed
        return chunk

    def ended(self) -> bool:
        return self._connection is None or self._connection.ended

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
