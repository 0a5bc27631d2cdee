"""A wake-up for one waiting task, set from protocol callbacks.

A protocol's callbacks (`data_received`, `connection_lost`) cannot await; the one task
reading from it waits here until a callback says something changed, then looks again.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until the next `wake()` (one waiter at a time)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
