"""The broker's serving state: accepting, draining, and the requests still in flight."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = _InFlight(self)

    @property
    def active(self) -> int:
        return self._active

    def request(self) -> _InFlight:
        """Count one API request as in flight while the `with` block runs."""
        return self._in_flight

    def started(self) -> None:
        """Count one request in flight, until `ended` (what `request()` does around a block)."""
        self._active += 1
        self._idle.clear()

    def ended(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new requests; wait up to `grace` s for the others. True if all finished."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class _InFlight:
    """`Lifecycle.request()`: a plain context manager, a third of the cost of a generator-based
    one (it runs on every request). It keeps no state of its own, so one serves every request."""

    __slots__ = ("_lifecycle",)

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle

    def __enter__(self) -> None:
        self._lifecycle.started()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lifecycle.ended()
