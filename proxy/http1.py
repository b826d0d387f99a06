"""A lean pooled HTTP/1.1 client for the upstream leg: the pool of keep-alive connections
(proxy/connection.py) per origin, and the request bytes.

It does only what a reverse proxy needs: one request written in one piece, the response head, then
the body as it arrives, with flow control, a read timeout and keep-alive reuse. Measured on the
benchmark machine it costs about a tenth of the CPU of aiohttp's ClientSession per call
(docs/performance.md), which is most of what a metering proxy adds to a call.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from proxy.connection import Connection, Exchange
from proxy.upstream import Headers, UpstreamError, UpstreamResponse


class HTTP1Upstream:
    """Pooled keep-alive connections per origin; only ever to the URLs the meter builds from base_url."""

    def __init__(self, pool_size: int = 1000) -> None:
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.pool_size = pool_size

    async def send(
        self, method: str, url: str, headers: Headers, body: bytes, timeout: float
    ) -> UpstreamResponse:
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        origin = _origin(scheme, authority)
        request = _request_bytes(
            method.encode(), (slash + path).encode("latin-1"), authority.encode(), headers, body
        )
        connection = self._take(origin)
        if connection is None:
            connection = await self._connect(origin, timeout)
        connection.timeout = timeout
        connection.head_only = method == "HEAD"
        # Sent once, whatever happens next: a reused connection that breaks before any answer may still have
        # delivered the whole request, which the provider then bills (docs/reliability.md, retries).
        try:
            await connection.start(request)
        except BaseException:
            connection.close()
            raise
        return Exchange(connection)

    @property
    def idle_connections(self) -> int:
        """Open connections waiting in the pool for the next call."""
        return sum(len(idle) for idle in self._idle.values())

    def _take(self, origin: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    async def _connect(self, origin: tuple[str, str, int], timeout: float) -> Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl = self._ssl or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: Connection(self, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError as exc:
            raise UpstreamError(
                "upstream_timeout", 504, f"could not connect to the provider in {timeout:g} s", sent=False
            ) from exc
        except OSError as exc:
            raise UpstreamError(
                "upstream_unreachable", 502, f"cannot connect to the provider: {exc}", sent=False
            ) from exc
        return protocol

    def put(self, connection: Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) < self.pool_size:
            idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    async def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()


def _origin(scheme: str, authority: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an authority such as api.openai.com, 127.0.0.1:8080 or [::1]:8080."""
    if authority.startswith("["):
        host, _, after = authority[1:].partition("]")
        port_text = after[1:]
    else:
        host, _, port_text = authority.partition(":")
    return scheme, host, int(port_text) if port_text else (443 if scheme == "https" else 80)


def _request_bytes(method: bytes, target: bytes, host: bytes, headers: Headers, body: bytes) -> bytes:
    lines: list[Any] = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if body or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)
