"""Health endpoints: is the process alive, may it take traffic, and what it holds.

`/livez` and `/readyz` are for load balancers and service managers, `/health` for people
and dashboards. None asks for a key, so none names a model, a connector or a user: the
models stay behind a key at `/v1/models`. Each answers in constant time and size,
whatever the number of models; only `/readyz` touches the store, at most once a second.
"""

from __future__ import annotations

import os

from aiohttp import web

from broker.services import SERVICES, Services

NO_STORE = {"Cache-Control": "no-store"}


async def livez_endpoint(request: web.Request) -> web.Response:
    """GET /livez: 200 while the process serves HTTP at all, draining or not."""
    return web.json_response({"status": "alive"}, headers=NO_STORE)


async def readyz_endpoint(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the broker takes traffic; 503 while draining or while the
    store does not answer, so a load balancer sends requests elsewhere. In cluster mode,
    `changes` says whether other brokers' changes reach this one now (`live`) or only by
    its periodic checks (`polling`, Redis unreachable), and `limits` where the limits are
    counted (`shared` in Redis, or `local` to this instance): still ready either way."""
    services = request.app[SERVICES]
    if services.lifecycle.draining:
        status = "draining"
    elif not await services.store_probe.answers():
        status = "store_unavailable"
    else:
        return web.json_response({"status": "ready", **_cluster(services)}, headers=NO_STORE)
    return web.json_response({"status": status, **_cluster(services)}, status=503, headers=NO_STORE)


def _cluster(services: Services) -> dict[str, str]:
    """The cluster's fields of /readyz (none for a single broker)."""
    if not services.settings.cluster or not services.started:
        return {}
    fields = {"limits": "shared" if services.limiter.shared else "local"}
    hearing = services.changes.publisher.hearing
    if hearing is not None:
        fields["changes"] = "live" if hearing else "polling"
    return fields


async def health_endpoint(request: web.Request) -> web.Response:
    """GET /health: counts and the process id, for anyone; the model list is at /v1/models,
    behind a key."""
    services = request.app[SERVICES]
    hub, lifecycle = services.hub, services.lifecycle
    return web.json_response(
        {
            "status": "draining" if lifecycle.draining else "ok",
            "connectors": len(services.relay.links),
            "models": hub.served_count(),
            "in_flight": lifecycle.active,
            # Tells apart the processes behind one address (`serve --workers N`, a cluster).
            "pid": os.getpid(),
        },
        headers=NO_STORE,
    )


def add_health_routes(app: web.Application) -> None:
    """Route /livez, /readyz and /health."""
    app.router.add_get("/livez", livez_endpoint)
    app.router.add_get("/readyz", readyz_endpoint)
    app.router.add_get("/health", health_endpoint)
