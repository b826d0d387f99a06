"""Deadlines: asyncio.timeout() for many tasks at once, kept by one timer rather than one per task;
and `Later`, the one-timer mechanism under them, for anything else that waits a fixed time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

Task = asyncio.Task[Any]
Item = TypeVar("Item")


class Later(Generic[Item]):
    """Calls `due(item)` for each item still waiting `seconds` after it was added, by one timer for all.

    A timer per item costs microseconds to arm and cancel, and the items here nearly always leave
    long before their time. So adding costs a dict entry, and one timer ticks `ticks` times per
    `seconds` while any item waits: `due(item)` runs between `seconds` and `seconds` plus a tick after
    the item was added.
    """

    __slots__ = ("_due", "_period", "_ticks", "_tick", "_waiting", "_timer")

    def __init__(self, seconds: float, due: Callable[[Item], None], ticks: int = 4) -> None:
        self._due = due
        self._ticks = ticks
        self._period = seconds / ticks
        self._tick = 0
        self._waiting: dict[Item, int] = {}  # item -> the tick it was added in
        self._timer: asyncio.TimerHandle | None = None

    @property
    def ticking(self) -> bool:
        return self._timer is not None

    def add(self, item: Item, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[item] = self._tick
        if self._timer is None:
            self._timer = loop.call_later(self._period, self._sweep, loop)

    def discard(self, item: Item) -> bool:
        """Stop waiting for `item`; False when it was not waiting (its time came, or it never was)."""
        return self._waiting.pop(item, None) is not None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick += 1
        # An item added in tick t (after sweep t, before sweep t + 1) has waited `seconds` at sweep
        # t + 1 + _ticks, as sweeps are at least a period apart.
        last = self._tick - self._ticks - 1
        for item in [item for item, tick in self._waiting.items() if tick <= last]:
            del self._waiting[item]
            self._due(item)
        self._timer = loop.call_later(self._period, self._sweep, loop) if self._waiting else None


class Deadlines:
    """Cancels a task that has been inside `watch()` for `seconds`; it leaves with TimeoutError, as from
    asyncio.timeout(seconds).

    What this guards (reading a request body, issue 6 case 11) is nearly always over before a timer
    could fire, so entering costs a dict entry (`Later`); its timer ticks at least four times per
    `seconds` and at least once a second while any task is inside: a task is cancelled after
    `seconds`, and at most one tick later.
    """

    __slots__ = ("seconds", "_later", "_expired")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._later: Later[Task] = Later(seconds, self._expire, ticks=max(4, math.ceil(seconds)))
        self._expired: dict[Task, int] = {}  # task -> how often it had been cancelled before we did

    @property
    def ticking(self) -> bool:
        return self._later.ticking

    def watch(self, task: Task) -> _Watch:
        """A context manager that watches `task` while it is inside."""
        return _Watch(self, task)

    def enter(self, task: Task) -> None:
        """Start watching `task`."""
        self._later.add(task, task.get_loop())

    def leave(self, task: Task) -> bool:
        """Stop watching `task`; True when its time ran out and it was cancelled by us alone."""
        if self._later.discard(task):
            return False
        return task.uncancel() <= self._expired.pop(task)

    def _expire(self, task: Task) -> None:
        self._expired[task] = task.cancelling()
        task.cancel()


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
