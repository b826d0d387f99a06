"""uvicorn's HTTP/1.1 server protocol (httptools), with a response's head written together with its body.

uvicorn writes a response's status line and headers the moment the app sends `http.response.start`,
and the body in a second write: two system calls and two TCP segments for every answer, where nginx
sends one. Here the head waits for the next write on its connection and goes out with it; if none
comes before the event loop's next turn (a stream whose first event is still upstream), it goes
alone then, so no head waits longer than that.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "  # how every status line uvicorn writes begins


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


class HeadHoldingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a transport that writes each response's head with its body."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        held = _HeadHoldingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, held))
