"""Health endpoints: is the process alive, may it take traffic, and what it holds.

`/livez` and `/readyz` are for load balancers and service managers, `/health` for people
and dashboards. None asks for a key, so none names a model, a connector or a user: the
models stay behind a key at `/v1/models`. Each answers in constant time and size,
whatever the number of models; only `/readyz` touches the store, at most once a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from broker.keys import HUB, LIFECYCLE, STORE, STORE_PROBE

log = structlog.get_logger("remotellm.broker.health")

PROBE_TIMEOUT = 2.0
"""Seconds the store gets to answer a readiness probe before the broker counts it as down."""

PROBE_TTL = 1.0
"""Seconds a probe's answer is reused: a load balancer polling /readyz many times a second
from many places costs the database one small read a second."""

NO_STORE = {"Cache-Control": "no-store"}


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


async def livez_endpoint(request: web.Request) -> web.Response:
    """GET /livez: 200 while the process serves HTTP at all, draining or not."""
    return web.json_response({"status": "alive"}, headers=NO_STORE)


async def readyz_endpoint(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the broker takes traffic; 503 while draining or while the
    store does not answer, so a load balancer sends requests elsewhere."""
    app = request.app
    if app[LIFECYCLE].draining:
        status = "draining"
    elif not await app[STORE_PROBE].answers():
        status = "store_unavailable"
    else:
        return web.json_response({"status": "ready"}, headers=NO_STORE)
    return web.json_response({"status": status}, status=503, headers=NO_STORE)


async def health_endpoint(request: web.Request) -> web.Response:
    """GET /health: counts only, for anyone; the model list is at /v1/models, behind a key."""
    app = request.app
    hub = app[HUB]
    return web.json_response(
        {
            "status": "draining" if app[LIFECYCLE].draining else "ok",
            "connectors": len(hub.links),
            "models": hub.served_count(),
            "in_flight": app[LIFECYCLE].active,
        },
        headers=NO_STORE,
    )


def add_health_routes(app: web.Application) -> None:
    """Route /livez, /readyz and /health, with a probe of the store the app opens later."""
    app[STORE_PROBE] = StoreProbe(lambda: app[STORE].ping())
    app.router.add_get("/livez", livez_endpoint)
    app.router.add_get("/readyz", readyz_endpoint)
    app.router.add_get("/health", health_endpoint)
