"""The stop signals as the calls in flight see them: a force quit records them before it ends them.

uvicorn takes a SIGINT that comes after a first SIGTERM or SIGINT for a force quit (uvicorn/server.py
`handle_exit`, "CTRL+C to force quit"): it stops waiting for the calls in flight and ends without
cancelling them, the process dying of the SIGTERM it raises again (a worker's supervisor sends one
to each worker), so those calls never reach the `finally` that records them. Here such a SIGINT first
cuts every call in flight, each recorded with `error: shutdown` as when server.drain_seconds runs
out, and reaches the server once they have ended.

A hangup (SIGHUP: the terminal closed, or `kill -HUP`) stops the server as SIGTERM does. uvicorn left it
to its default, which killed the process at once: the calls in flight were cut and never recorded. A
hangup ignored when the process started (`nohup`) stays ignored. (With --workers, the supervisor takes
SIGHUP to replace the workers; a worker taking one from a closed terminal stops as SIGTERM stops it.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("meterproxy")

Handler = Callable[[int, FrameType | None], object]
QUIT_WAIT = 1.0  # seconds the cut calls have to end (their 503s sent) before the server quits anyway
_STOPS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Stands in front of the server's SIGINT and SIGTERM handlers while the app runs."""

    def __init__(self, cut: Callable[[], list[asyncio.Task[Any]]]) -> None:
        self.cut = cut
        self.stopping = False
        self._servers: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quitting: asyncio.Future[Any] | None = None
        self._hangup = False  # SIGHUP is taken for a stop

    def install(self) -> None:
        """Take the signals from the server's handlers (called in the app's lifespan, in its loop)."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread gets signals: an app served from another one has no stop of ours
        self._loop = asyncio.get_running_loop()
        for number in _STOPS:
            handler = signal.getsignal(number)
            if callable(handler):  # a server's; without one, a signal does what it did before
                self._servers[number] = handler
                signal.signal(number, self._received)
        if signal.SIGTERM in self._servers and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            self._hangup = True
            signal.signal(signal.SIGHUP, self._hung_up)

    def uninstall(self) -> None:
        for number, handler in self._servers.items():
            signal.signal(number, handler)
        self._servers.clear()
        if self._hangup:
            self._hangup = False
            signal.signal(signal.SIGHUP, signal.SIG_DFL)

    def _hung_up(self, number: int, frame: FrameType | None) -> None:
        if self._loop is not None:  # logged from the loop: this handler may have interrupted a log write
            self._loop.call_soon_threadsafe(log.info, "hangup (SIGHUP): stopping as on SIGTERM")
        self._received(signal.SIGTERM, frame)

    def _received(self, number: int, frame: FrameType | None) -> None:
        if self.stopping and number == signal.SIGINT and self._loop is not None:
            # In the loop, not in this handler, which may have interrupted any of the loop's code.
            self._loop.call_soon_threadsafe(self._quit, number, frame)
            return
        self.stopping = True
        self._servers[number](number, frame)

    def _quit(self, number: int, frame: FrameType | None) -> None:
        """Cut the calls in flight; tell the server of its force quit once they have ended."""
        cut = self.cut()
        if not cut:
            self._servers[number](number, frame)
            return
        self._quitting = asyncio.ensure_future(asyncio.wait(cut, timeout=QUIT_WAIT))
        self._quitting.add_done_callback(lambda _: self._servers[number](number, frame))
