"""The broker's application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.accounts.credentials import Credentials
from broker.accounts.ledger import UsageLedger
from broker.accounts.limits import KeyLimiter, Limiter
from broker.accounts.principals import Accounts, Limits
from broker.accounts.store import Store, database_url
from broker.accounts.storeprobe import StoreProbe
from broker.api.cors import setup_cors
from broker.api.endpoints import (
    model_endpoint,
    models_endpoint,
    ollama_tags_endpoint,
    ollama_version_endpoint,
    proxy_endpoint,
)
from broker.api.health import add_health_routes
from broker.api.pairing import setup_pairing
from broker.api.responses import error_response
from broker.edge.aiohttpcall import REQUEST_IDS
from broker.lifecycle import Lifecycle
from broker.metrics import Metrics
from broker.portal.views import setup_portal
from broker.relay.admission import Relay
from broker.relay.hub import Hub
from broker.relay.link import go_away_all
from broker.relay.socket import UPGRADE_HINT
from broker.services import SERVICES, Services
from broker.settings import BrokerSettings
from broker.stream.call import request_id_of
from shared.endpoints import MODEL_ENDPOINTS
from shared.settings import secret_values
from shared.tracecontext import trace_fields

log = structlog.get_logger("remotellm.broker")


@web.middleware
async def correlate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request a correlation id, in its logs and its response; errors as JSON."""
    request_id = request_id_of(request.headers)
    if request.path == "/relay":
        # A connector's link lives for hours: its log lines are not about one request.
        request[REQUEST_IDS] = {"request_id": request_id}
        response = await _json_errors(request, handler)
    else:
        # Computed once: the request path names the request with these too (`Call.ids`).
        ids = {"request_id": request_id, **trace_fields(request.headers.get("traceparent"))}
        request[REQUEST_IDS] = ids
        with structlog.contextvars.bound_contextvars(**ids):
            response = await _json_errors(request, handler)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404 and 405 in the same JSON shape as every other error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "method_not_allowed"
        message = (
            f"There is no endpoint at {request.path}."
            if exc.status == 404
            else f"{request.method} is not allowed on {request.path}."
        )
        return error_response(request, exc.status, code, message)


async def relay_later(request: web.Request) -> web.StreamResponse:
    """GET /relay that reached aiohttp: a later request on a connection aiohttp serves.

    The front sends a connection whose first request is the upgrade straight to the
    relay (see front.py); a proxy that reuses a pooled connection sends it here, and
    the relay takes the connection over. Anything else (a browser) is told what this is.
    """
    if "websocket" in request.headers.get("Upgrade", "").lower():
        return await request.app[SERVICES].relay.take_over(request)
    return error_response(request, 426, "upgrade_required", f"{UPGRADE_HINT}.")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICES].metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: open the Redis client's pool (it connects on its first command)."""
    services = app[SERVICES]
    url = services.settings.redis_url
    if url is None:
        yield
        return
    from broker.cluster.redisclient import open_redis

    redis = open_redis(url.get_secret_value())
    services.opened_redis(redis)
    try:
        yield
    finally:
        await redis.aclose()


async def _cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: announce this broker's connectors and follow the other brokers'."""
    services = app[SERVICES]
    member = services.cluster
    if member is None:
        yield
        return
    member.start(services.redis, services.hub)
    try:
        yield
    finally:
        await member.stop()


async def _connectors_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # Any connector still attached at cleanup is told to come back later, not dropped.
    await go_away_all([*app[SERVICES].relay.links], "broker stopping")


REVOCATION_CHECK = 5.0
"""Seconds between checks of the connected connectors' tokens and access rules."""


async def _watch_revoked_connectors(services: Services, every: float | None = None) -> None:
    """Send away connectors whose token was revoked (by the admin CLI, say) while connected,
    and apply the access rules as the store has them now (every `REVOCATION_CHECK` s, read
    at each turn)."""
    while True:
        await asyncio.sleep(REVOCATION_CHECK if every is None else every)
        await services.changes.check_connectors()


async def _events_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode: tell the other brokers of changes made here, and follow theirs."""
    services = app[SERVICES]
    if services.settings.redis_url is None:
        yield
        return
    from broker.cluster.events import Events

    events = Events(services.redis, services.changes)
    services.changes.publisher = events
    events.start()
    try:
        yield
    finally:
        await events.close()


async def _accounts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store (creating and migrating it), and the ledger that writes usage to it."""
    services = app[SERVICES]
    settings = services.settings
    store = await Store.open(database_url(settings.data_dir, settings.database_url))
    defaults = Limits(
        rpm=settings.key_rpm,
        concurrency=settings.key_concurrency,
        daily_tokens=settings.key_daily_tokens,
    )
    ledger = UsageLedger(store)
    limiter: KeyLimiter
    if settings.cluster:
        from broker.cluster.limits import SharedLimiter

        shared = SharedLimiter(services.redis, store.usage.tokens_since)
        shared.start()
        limiter = shared
    else:
        limiter = Limiter(store.usage.tokens_since)
    services.opened(
        store=store,
        accounts=Accounts(store, services.user_keys, defaults),
        limiter=limiter,
        ledger=ledger,
        # Looked up on each probe, not bound now: a test may stand in for the store's ping.
        store_probe=StoreProbe(lambda: store.ping()),
    )
    ledger.start()
    watcher = asyncio.create_task(_watch_revoked_connectors(services), name="revoked-connectors")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # After the drain: every finished request's row is written before the store closes.
        try:
            if settings.cluster:
                await shared.close()  # its releases sent while Redis is still open
            await ledger.close()
        finally:
            await store.close()


async def drain(app: web.Application) -> None:
    """Finish in-flight requests (bounded by the grace), then send connectors away.

    Runs before aiohttp's own shutdown: once that starts, upgraded connections stop
    reading, so the connectors' responses could no longer arrive.
    """
    services = app[SERVICES]
    lifecycle, grace = services.lifecycle, services.settings.shutdown_grace
    log.info("draining", in_flight=lifecycle.active, grace_s=grace)
    if not await lifecycle.drain(grace):
        log.warning("grace period over; abandoning requests", in_flight=lifecycle.active)
    await go_away_all([*services.relay.links], "broker shutting down")


def build_services(settings: BrokerSettings) -> Services:
    """Every dependency of a broker with these settings; the store's parts open at start-up."""
    metrics = Metrics()
    hub = Hub(on_forget=metrics.forget, max_user_share=settings.max_user_share)
    connector_tokens = Credentials(secret_values(settings.connector_token))

    def store() -> Store:
        return services.store  # opened at start-up, long after the relay is made

    relay = Relay(
        hub,
        metrics,
        connector_tokens,
        store,
        settings.heartbeat,
        read_groups=settings.portal and settings.gitlab_read_groups,
    )
    services = Services(
        settings=settings,
        metrics=metrics,
        hub=hub,
        relay=relay,
        lifecycle=Lifecycle(),
        user_keys=Credentials(secret_values(settings.user_api_key)),
        connector_tokens=connector_tokens,
    )
    if settings.cluster:
        from broker.cluster.member import Member

        assert settings.cluster_secret is not None  # the settings require it with redis_url
        services.cluster = Member(
            settings.cluster_secret.get_secret_value(), settings.internal_url, settings.idle_timeout
        )
    return services


def create_app(settings: BrokerSettings) -> web.Application:
    """Build a broker application from its settings. Nothing runs until it is started."""
    app = web.Application(middlewares=[correlate], client_max_size=settings.max_body_size)
    app[SERVICES] = build_services(settings)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_accounts_ctx)
    app.cleanup_ctx.append(_events_ctx)
    app.cleanup_ctx.append(_cluster_ctx)
    app.cleanup_ctx.append(_connectors_ctx)
    for path in MODEL_ENDPOINTS:
        app.router.add_post(path, proxy_endpoint)
    app.router.add_get("/v1/models", models_endpoint)
    # Model ids may hold '/' and ':' (`org/model:tag`): the id is the rest of the path.
    app.router.add_get("/v1/models/{model:.+}", model_endpoint)
    app.router.add_get("/api/tags", ollama_tags_endpoint)
    app.router.add_get("/api/version", ollama_version_endpoint)
    app.router.add_get("/relay", relay_later)
    if settings.cluster:
        from broker.api.hop import hop_endpoint
        from broker.cluster.forwarding import HOP_PATH

        app.router.add_post(HOP_PATH, hop_endpoint)
    add_health_routes(app)
    app.router.add_get("/metrics", metrics_endpoint)
    setup_pairing(app)
    setup_portal(app, settings)
    setup_cors(app, settings.cors_origin)
    return app
