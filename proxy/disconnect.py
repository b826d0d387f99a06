"""The watch on a call's client: a call whose client went away is cancelled, and its upstream connection
closed at once, so the provider stops generating (but for the two calls DisconnectWatch names)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive

from proxy.calls import Call
from proxy.deadlines import Later

WATCH_AFTER = 0.05  # seconds a call runs before its client is watched for a disconnect
# Seconds a stream is read on for its usage after its client left with the whole answer but that usage.
USAGE_WAIT = 3.0


class DisconnectWatch:
    """Cancels a call whose client went away, so the upstream connection is closed at once.

    ASGI tells of a disconnect only through receive(), which needs a task of its own to wait on. That
    task cost a third of the proxy's own CPU per call (docs/performance.md), so it starts only once a
    call has lasted WATCH_AFTER (at most a quarter more; one timer for all calls, `Later`): a quick
    call never needs it, and a slow one, where a client may give up, is watched from then on.

    Two calls are not cancelled at once, so that they are billed as the provider counts them, not
    estimated: a chat stream whose client left after its finish chunk, where the provider has generated
    all it bills for and sends the usage chunk next (read for up to USAGE_WAIT seconds); and a streamed
    Responses call in background mode, which the provider goes on generating without its client (read to
    its end).
    """

    __slots__ = ("call", "receive", "task", "_later", "_watcher", "_wait")

    def __init__(
        self, call: Call, receive: Receive, task: asyncio.Task[Any], later: Later[DisconnectWatch]
    ) -> None:
        self.call = call
        self.receive = receive
        self.task = task
        self._later = later
        self._watcher: asyncio.Future[Message] | None = None
        self._wait: asyncio.TimerHandle | None = None
        later.add(self, task.get_loop())

    def start(self) -> None:
        self._watcher = asyncio.ensure_future(self.receive())
        self._watcher.add_done_callback(self._left)

    def _left(self, _: asyncio.Future[Message]) -> None:
        call = self.call
        if call.finished:
            return
        call.gone = True
        if call.runs_on():
            # Cutting it would not stop the provider: its stream is read to its end for the usage billed.
            return
        if call.usage_to_come():
            # A client that stops reading at the finish chunk leaves a call the provider has answered
            # whole and bills whole: its usage follows, and is read for the record rather than estimated.
            self._wait = self.task.get_loop().call_later(USAGE_WAIT, self._cut)
        else:
            self.task.cancel()

    def _cut(self) -> None:
        if not self.call.finished:
            self.task.cancel()

    def stop(self) -> None:
        self._later.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
        if self._wait is not None:
            self._wait.cancel()
