"""Unit tests of proxy/deadlines.py: tasks inside too long leave with TimeoutError, others are left alone."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.deadlines import Deadlines

SECONDS = 0.2


async def stay(deadlines: Deadlines, seconds: float) -> float:
    """Wait `seconds` inside `deadlines`; return how long the task was inside."""
    task = asyncio.current_task()
    assert task is not None
    started = time.monotonic()
    try:
        with deadlines.watch(task):
            await asyncio.sleep(seconds)
    finally:
        inside = time.monotonic() - started
    return inside


def test_a_task_inside_too_long_leaves_with_timeout_error_after_its_time_and_at_most_a_tick_more() -> None:
    async def run() -> float:
        deadlines = Deadlines(SECONDS)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await stay(deadlines, 10)
        return time.monotonic() - started

    took = asyncio.run(run())

    assert SECONDS <= took < SECONDS * 1.25 + 0.5  # one tick is a quarter of SECONDS; the rest is slack


def test_tasks_that_leave_in_time_are_not_cancelled_and_the_timer_stops() -> None:
    async def run() -> Deadlines:
        deadlines = Deadlines(SECONDS)
        for _ in range(3):
            await asyncio.gather(*(stay(deadlines, SECONDS / 4) for _ in range(10)))
        await asyncio.sleep(SECONDS)  # long enough for the timer to see nobody inside
        return deadlines

    deadlines = asyncio.run(run())

    assert not deadlines.ticking


def test_many_tasks_only_the_late_ones_time_out() -> None:
    async def run() -> list[bool]:
        deadlines = Deadlines(SECONDS)
        results = await asyncio.gather(
            *(stay(deadlines, seconds) for seconds in (0, SECONDS / 2, 10, 10)), return_exceptions=True
        )
        return [isinstance(result, TimeoutError) for result in results]

    assert asyncio.run(run()) == [False, False, True, True]


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def run() -> None:
        deadlines = Deadlines(SECONDS)
        inside = asyncio.ensure_future(stay(deadlines, 10))
        await asyncio.sleep(SECONDS / 4)
        inside.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inside

    asyncio.run(run())


def test_a_cancel_on_top_of_the_timeout_stays_a_cancel() -> None:
    """A server that stops just as a task's time runs out: the stop wins, as with asyncio.timeout()."""

    async def run() -> None:
        deadlines = Deadlines(SECONDS)
        inside = asyncio.ensure_future(stay(deadlines, 10))
        # Look once per loop turn; cancel the task again in the turn after the sweep cancelled it,
        # before the task itself runs.
        while inside.cancelling() == 0:
            await asyncio.sleep(0)
        inside.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inside

    asyncio.run(run())
