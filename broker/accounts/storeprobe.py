"""Whether the store answers: one probe at a time, its answer reused for a moment.

`/readyz` (`broker.api.health`) asks it on every poll; a load balancer polling many times a
second from many places costs the database one small read a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("remotellm.broker.health")

PROBE_TIMEOUT = 2.0
"""Seconds the store gets to answer a readiness probe before the broker counts it as down."""

PROBE_TTL = 1.0
"""Seconds a probe's answer is reused: a load balancer polling /readyz many times a second
from many places costs the database one small read a second."""


class StoreProbe:
    """Whether the store answers: `check` is run at most once per `ttl` seconds, given
    `timeout` seconds, and callers that arrive meanwhile share its answer."""

    def __init__(
        self,
        check: Callable[[], Awaitable[object]],
        *,
        timeout: float = PROBE_TIMEOUT,
        ttl: float = PROBE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._answer: tuple[float, bool] | None = None
        self._running: asyncio.Task[bool] | None = None

    async def answers(self) -> bool:
        """True when the store answered its last probe, asking again once that is stale."""
        if self._answer is not None and self._clock() - self._answer[0] < self._ttl:
            return self._answer[1]
        if self._running is None:
            self._running = asyncio.create_task(self._probe(), name="store-probe")
        # Shielded: a load balancer hanging up must not cancel the probe others wait on.
        return await asyncio.shield(self._running)

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._check()
            ok = True
        except Exception as exc:
            ok = False
            why = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        was = self._answer[1] if self._answer is not None else True
        if was and not ok:
            # The exception's text may quote a database URL; its type says enough.
            log.warning("store not answering; /readyz answers 503", error=why)
        elif ok and not was:
            log.info("store answering again; /readyz answers 200")
        self._answer = (self._clock(), ok)
        self._running = None
        return ok
