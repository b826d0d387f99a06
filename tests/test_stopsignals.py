"""The stop signals in front of a server's handlers: a force quit's calls are cut before it quits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from proxy.stopsignals import StopSignals


@pytest.fixture
def heard() -> Iterator[list[int]]:
    """The signals a server's handlers got, in order (installed for the test, then the old ones back)."""
    signals: list[int] = []

    def server(number: int, frame: FrameType | None) -> None:
        signals.append(number)

    previous = {number: signal.signal(number, server) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


async def until(check: Any) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("gave up waiting")


def test_a_sigint_after_a_first_stop_cuts_the_calls_and_then_reaches_the_server(heard: list[int]) -> None:
    recorded: list[int] = []  # for each call, how many signals the server had heard when it was recorded

    async def main() -> None:
        async def call() -> None:
            try:
                await asyncio.sleep(60)
            finally:
                recorded.append(len(heard))

        calls = [asyncio.ensure_future(call()) for _ in range(3)]
        await asyncio.sleep(0)

        def cut() -> list[asyncio.Task[Any]]:
            for task in calls:
                task.cancel()
            return calls

        stops = StopSignals(cut)
        stops.install()
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # another SIGTERM only goes on: the drain goes on
        assert heard == [signal.SIGTERM, signal.SIGTERM] and recorded == []
        signal.raise_signal(signal.SIGINT)
        assert heard == [signal.SIGTERM, signal.SIGTERM]  # not before the calls are cut and recorded
        await until(lambda: len(heard) == 3)
        stops.uninstall()
        assert recorded == [2, 2, 2]
        assert heard == [signal.SIGTERM, signal.SIGTERM, signal.SIGINT]

    asyncio.run(main())


def test_a_first_sigint_only_reaches_the_server_and_a_second_with_nothing_in_flight_at_once(
    heard: list[int],
) -> None:
    async def main() -> None:
        stops = StopSignals(lambda: [])
        stops.install()
        signal.raise_signal(signal.SIGINT)
        assert heard == [signal.SIGINT]
        signal.raise_signal(signal.SIGINT)
        await until(lambda: len(heard) == 2)
        stops.uninstall()

    asyncio.run(main())


def test_uninstall_gives_the_server_its_handlers_back(heard: list[int]) -> None:
    async def main() -> None:
        stops = StopSignals(lambda: [])
        stops.install()
        stops.uninstall()

    asyncio.run(main())
    signal.raise_signal(signal.SIGINT)
    assert heard == [signal.SIGINT]


def test_a_hangup_reaches_the_server_as_its_sigterm_unless_the_process_was_started_ignoring_it(
    heard: list[int],
) -> None:
    async def main() -> None:
        stops = StopSignals(lambda: [])
        stops.install()
        signal.raise_signal(signal.SIGHUP)
        assert heard == [signal.SIGTERM]
        stops.uninstall()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a process
        stops.install()
        signal.raise_signal(signal.SIGHUP)
        stops.uninstall()
        assert heard == [signal.SIGTERM] and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN

    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGHUP, previous)
