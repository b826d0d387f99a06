"""The aiohttp client behind `Upstream` (`server.upstream_client: aiohttp`, one pooled session per
process); the default client, meterproxy's own HTTP/1.1 pool, is proxy/http1.py.

Only this module imports aiohttp. Its errors become UpstreamError here and nowhere else
(after httpx's map_httpcore_exceptions): timeout -> 504, anything else -> 502.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from proxy.upstream import Headers, UpstreamError, UpstreamResponse


def _described(exc: BaseException) -> str:
    """An aiohttp error for the log and the client, without the URL some of them quote (its query may
    carry a key, Gemini's `?key=`) or the bytes of a head its parser refused."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{exc.status}, {_reason(exc.message)}"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return str(exc)


_QUOTED = re.compile(r"b?['\"]")  # where a Python literal (str or bytes) begins
# What no field value may hold (RFC 9110 section 5.5): a control character other than HTAB, and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _reason(message: str) -> str:
    """The reason of aiohttp's parser for refusing a head, without the bytes it quotes: the provider's head
    may echo a key it was sent, a pass-through client's own, which the log must not hold. The parser
    quotes them in several shapes (after a colon and a blank line, or inline: a bad status line, a line
    over 8190 bytes), each as a Python literal, so everything from the first quote on is left out."""
    before = _QUOTED.split(message, maxsplit=1)[0]
    return " ".join(before.split()).rstrip(":")


def _refused(response: aiohttp.ClientResponse) -> str | None:
    """Why a head aiohttp took is no answer, as http1.py's parser has it; None: it is one."""
    if response.status == 101:
        # Nothing we send asks for an upgrade; aiohttp hands the 101 over as the answer (other 1xx it skips).
        return "the provider switched protocols (101)"
    if response.status < 100:
        return f"the provider sent bad HTTP: status {response.status}"
    # aiohttp's parser takes a header value with a control character, which the server then refuses to
    # send on: the client's connection was dropped unanswered.
    if any(_CONTROL.search(value) for _, value in response.raw_headers):
        return "the provider sent bad HTTP: a control character in a header value"
    return None


class _AiohttpResponse:
    __slots__ = ("_response", "status", "headers", "_timeout", "_lost", "_error")

    def __init__(self, response: aiohttp.ClientResponse, timeout: float) -> None:
        self._response = response
        self._timeout = timeout
        self.status = response.status
        self.headers: Headers = list(response.raw_headers)
        self._error: UpstreamError | None = None
        # Told when the connection goes (None: it has gone already, or the body is in whole).
        self._lost: asyncio.Future[None] | None = None
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            self._lost = connection.protocol.closed
            if self._lost is None:
                self._connection_lost()
            else:
                self._lost.add_done_callback(self._connection_lost)

    async def read(self) -> bytes:
        try:
            chunk = await self._response.content.readany()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(
                "upstream_timeout", 504, f"no data from the provider in {self._timeout:g} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                "upstream_reset", 502, f"the provider broke off the response: {_described(exc)}"
            ) from exc
        if not chunk and self._error is not None:
            raise self._error
        return chunk

    def ended(self) -> bool:
        return self._error is None and self._response.content.at_eof()

    def close(self) -> None:
        self._forget()
        self._response.close()

    def release(self) -> None:
        self._forget()
        self._response.release()

    def _connection_lost(self, lost: asyncio.Future[None] | None = None) -> None:
        """The connection has gone: a body that ends with its connection is cut, not whole, when the
        connection was reset (RFC 9112 section 6.3), where aiohttp ends it as at a close. A body still
        unfinished then, but not failed, is one aiohttp's parser gave up on (a chunk size that is not a
        number, after a good chunk): it tells the connection, not the body's reader, who waited for more
        until the client left. Either way read() raises once the bytes before the fault are taken, as
        http1.py's does."""
        reset = lost is not None and not lost.cancelled() and lost.exception() is not None
        content = self._response.content
        if content.exception() is not None:
            return
        if not content.is_eof():
            self._error = UpstreamError(
                "upstream_bad_response", 502, "the provider sent bad HTTP in its body"
            )
            content.feed_eof()  # wakes the reader
        elif reset and self._until_close():
            self._error = UpstreamError(
                "upstream_reset", 502, "the provider reset the connection mid-response"
            )

    def _until_close(self) -> bool:
        """Whether the body ends with its connection: it has neither a length nor chunks."""
        if self._response.method == "HEAD" or self.status in (204, 304):
            return False
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _forget(self) -> None:
        # A pooled connection carries many calls: each call's callback goes with it.
        if self._lost is not None:
            self._lost.remove_done_callback(self._connection_lost)
            self._lost = None


class _Pool(aiohttp.TCPConnector):
    """aiohttp's connection pool, minus connections the provider sent bytes on after an answer."""

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        # aiohttp parses what arrives on an idle pooled connection (a second answer to one request, a body
        # longer than its Content-Length) and queues it: the next call on it, maybe another caller's, was
        # answered with it (aio-libs/aiohttp#13656). Checked where a call takes a connection, as bytes can
        # come any time after the answer; closing every connection instead (force_close) costs a connect,
        # and a TLS handshake, per call. `_get` is aiohttp's (3.11 on): tests/test_upstream.py pins it down.
        while (connection := await super()._get(key, traces)) is not None:
            if connection.protocol is not None and not connection.protocol.should_close:
                return connection
            connection.close()
        return None


class AiohttpUpstream:
    """One pooled aiohttp session for the process; connections are reused across calls."""

    def __init__(self, pool_size: int = 1000) -> None:
        connector = _Pool(limit=pool_size, ttl_dns_cache=300, enable_cleanup_closed=True)
        # auto_decompress off: bodies reach the client byte for byte, with their own Content-Encoding.
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def send(
        self, method: str, url: str, headers: Headers, body: bytes, timeout: float
    ) -> UpstreamResponse:
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeout, sock_read=timeout
            )
        try:
            response = await self._session.request(
                method,
                URL(url, encoded=True),
                headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
                data=body or None,
                allow_redirects=False,
                timeout=client_timeout,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamError(
                "upstream_timeout", 504, f"could not connect to the provider in {timeout:g} s", sent=False
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(
                "upstream_timeout", 504, f"the provider did not answer in {timeout:g} s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                "upstream_unreachable", 502, f"cannot connect to the provider: {_described(exc)}", sent=False
            ) from exc
        except aiohttp.ClientResponseError as exc:  # a head aiohttp's parser refused, as http1.py's
            raise UpstreamError(
                "upstream_bad_response", 502, f"the provider sent bad HTTP: {_described(exc)}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                "upstream_reset", 502, f"the provider closed the connection: {_described(exc)}"
            ) from exc
        refused = _refused(response)
        if refused is not None:
            response.close()
            raise UpstreamError("upstream_bad_response", 502, refused)
        return _AiohttpResponse(response, timeout)

    async def close(self) -> None:
        await self._session.close()
        # Let the connector's transports finish closing (aiohttp docs: graceful shutdown).
        await asyncio.sleep(0)
