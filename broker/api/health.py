"""Health endpoints: is the process alive, may it take traffic, and what it holds.

`/livez` and `/readyz` are for load balancers and service managers, `/health` for people
and dashboards. None asks for a key, so none names a model, a connector or a user: the
models stay behind a key at `/v1/models`. Each answers in constant time and size,
whatever the number of models; only `/readyz` touches the store, at most once a second.
"""

from __future__ import annotations

from aiohttp import web

from broker.services import SERVICES

NO_STORE = {"Cache-Control": "no-store"}


async def livez_endpoint(request: web.Request) -> web.Response:
    """GET /livez: 200 while the process serves HTTP at all, draining or not."""
    return web.json_response({"status": "alive"}, headers=NO_STORE)


async def readyz_endpoint(request: web.Request) -> web.Response:
    """GET /readyz: 200 when the broker takes traffic; 503 while draining or while the
    store does not answer, so a load balancer sends requests elsewhere."""
    services = request.app[SERVICES]
    if services.lifecycle.draining:
        status = "draining"
    elif not await services.store_probe.answers():
        status = "store_unavailable"
    else:
        return web.json_response({"status": "ready"}, headers=NO_STORE)
    return web.json_response({"status": status}, status=503, headers=NO_STORE)


async def health_endpoint(request: web.Request) -> web.Response:
    """GET /health: counts only, for anyone; the model list is at /v1/models, behind a key."""
    services = request.app[SERVICES]
    hub, lifecycle = services.hub, services.lifecycle
    return web.json_response(
        {
            "status": "draining" if lifecycle.draining else "ok",
            "connectors": len(services.relay.links),
            "models": hub.served_count(),
            "in_flight": lifecycle.active,
        },
        headers=NO_STORE,
    )


def add_health_routes(app: web.Application) -> None:
    """Route /livez, /readyz and /health."""
    app.router.add_get("/livez", livez_endpoint)
    app.router.add_get("/readyz", readyz_endpoint)
    app.router.add_get("/health", health_endpoint)
