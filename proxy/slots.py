"""At most server.upstream_pool_size calls are with providers at once (issue 6, case 18): a call waits
for a slot up to server.pool_timeout_seconds, then is answered 503 rather than left to hang."""

from __future__ import annotations

import asyncio


class UpstreamSlots:
    __slots__ = ("size", "timeout", "_free")

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._free = asyncio.Semaphore(size)

    async def take(self) -> bool:
        """One slot; False when none came free within the timeout."""
        if not self._free.locked():
            return await self._free.acquire()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._free.acquire()
        except TimeoutError:
            return False

    def give_back(self) -> None:
        self._free.release()

    @property
    def overloaded(self) -> str:
        """What a call refused for want of a slot is told."""
        return (
            f"all {self.size} upstream connections (server.upstream_pool_size) stayed busy for "
            f"{self.timeout:g} s (server.pool_timeout_seconds); retry later"
        )
