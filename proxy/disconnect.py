"""The watch on a call's client: a call whose client went away is cancelled, and its upstream connection
closed at once, so the provider stops generating."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive

from proxy.calls import Call
from proxy.deadlines import Later

WATCH_AFTER = 0.05  # seconds a call runs before its client is watched for a disconnect


class DisconnectWatch:
    """Cancels a call whose client went away, so the upstream connection is closed at once.

    ASGI tells of a disconnect only through receive(), which needs a task of its own to wait on. That
    task cost a third of the proxy's own CPU per call (docs/performance.md), so it starts only once a
    call has lasted WATCH_AFTER (at most a quarter more; one timer for all calls, `Later`): a quick
    call never needs it, and a slow one, where a client may give up, is watched from then on.
    """

    __slots__ = ("call", "receive", "task", "_later", "_watcher")

    def __init__(
        self, call: Call, receive: Receive, task: asyncio.Task[Any], later: Later[DisconnectWatch]
    ) -> None:
        self.call = call
        self.receive = receive
        self.task = task
        self._later = later
        self._watcher: asyncio.Future[Message] | None = None
        later.add(self, task.get_loop())

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self.receive())
        self._watcher.add_done_callback(self._left)

    def _left(self, _: asyncio.Future[Message]) -> None:
        if not self.call.finished:
            self.call.gone = True
            self.task.cancel()

    def stop(self) -> None:
        self._later.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
