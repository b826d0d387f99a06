"""Deadlines: asyncio.timeout() for many tasks at once, kept by one timer rather than one per task."""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any

Task = asyncio.Task[Any]


class Deadlines:
    """Cancels a task that has been inside `watch()` for `seconds`; it leaves with TimeoutError, as from
    asyncio.timeout(seconds).

    A timer per task costs microseconds to arm and cancel, and what this guards (reading a request
    body, issue 6 case 11) is nearly always over before a timer could fire. So entering costs a dict
    entry, and one timer ticks at least four times per `seconds` and at least once a second while any
    task is inside: a task is cancelled after `seconds`, and at most one tick later.
    """

    __slots__ = ("seconds", "_period", "_ticks", "_tick", "_inside", "_expired", "_timer")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ticks = max(4, math.ceil(seconds))
        self._period = seconds / self._ticks
        self._tick = 0
        self._inside: dict[Task, int] = {}  # task -> the tick it entered in
        self._expired: dict[Task, int] = {}  # task -> how often it had been cancelled before we did
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, task: Task) -> _Watch:
        """A context manager that watches `task` while it is inside."""
        return _Watch(self, task)

    def enter(self, task: Task) -> None:
        """Start watching `task`."""
        self._inside[task] = self._tick
        if self._timer is None:
            self._timer = task.get_loop().call_later(self._period, self._sweep, task.get_loop())

    def leave(self, task: Task) -> bool:
        """Stop watching `task`; True when its time ran out and it was cancelled by us alone."""
        if self._inside.pop(task, None) is not None:
            return False
        return task.uncancel() <= self._expired.pop(task)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick += 1
        # A task that entered in tick t (after sweep t, before sweep t + 1) has been inside for
        # `seconds` at sweep t + 1 + _ticks, as sweeps are at least a period apart.
        last = self._tick - self._ticks - 1
        for task in [task for task, tick in self._inside.items() if tick <= last]:
            del self._inside[task]
            self._expired[task] = task.cancelling()
            task.cancel()
        self._timer = loop.call_later(self._period, self._sweep, loop) if self._inside else None


class _Watch:
    __slots__ = ("deadlines", "task")

    def __init__(self, deadlines: Deadlines, task: Task) -> None:
        self.deadlines = deadlines
        self.task = task

    def __enter__(self) -> None:
        self.deadlines.enter(self.task)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # Our cancel becomes TimeoutError, unless another came on top of it (a server stopping).
        if self.deadlines.leave(self.task) and kind is asyncio.CancelledError:
            raise TimeoutError from error
