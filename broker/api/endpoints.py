"""The public HTTP API: OpenAI-, Anthropic- and Ollama-compatible endpoints.

Requests are forwarded unchanged to a connector serving their `model`; the
upstream's status, headers and body come back unchanged and unbuffered. Only
routing and auth headers change. This module authenticates, admits (body size,
model, limits) and lists models; the trip itself (routing, relaying, streaming
back) is `broker.stream.trip`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from broker.accounts.credentials import presented_key
from broker.accounts.principals import Denied, Principal
from broker.api import admission
from broker.api.responses import error_response
from broker.edge.aiohttpcall import AiohttpCall
from broker.services import SERVICES, Services
from broker.stream.books import MAX_LOGGED_MODEL
from broker.stream.ticket import user_of
from shared.endpoints import is_relayable
from shared.text import shown

log = structlog.get_logger("remotellm.broker.api")


async def _authenticate(request: web.Request, services: Services) -> Principal | web.Response:
    """The caller behind the request's API key, or the error response to send."""
    found = await services.accounts.authenticate(presented_key(request.headers))
    if isinstance(found, Denied):
        return error_response(request, found.status, found.code, found.message)
    return found


def _visible(principal: Principal, services: Services) -> dict[str, float]:
    """The models served now that the key may use, through connectors that admit its user."""
    models = services.hub.models_for(user_of(principal))
    allowed = principal.limits.models
    if allowed is None:
        return models
    return {model: seen for model, seen in models.items() if model in allowed}


OLLAMA_VERSION: Final = "0.12.6"
"""The Ollama version whose API the broker's /api/* endpoints follow (the version in Ollama's own
API reference for GET /api/version), for clients that check it before they connect."""


def _model_object(model: str, first_seen: float) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": int(first_seen), "owned_by": "remotellm"}


async def models_endpoint(request: web.Request) -> web.Response:
    """GET /v1/models: every model a connected connector serves right now (that the key may use)."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
    if isinstance(principal, web.Response):
        return principal
    data = [
        _model_object(model, first_seen)
        for model, first_seen in _visible(principal, services).items()
    ]
    return web.json_response({"object": "list", "data": data})


async def model_endpoint(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one model of the list, or 404 `model_not_found`."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
    if isinstance(principal, web.Response):
        return principal
    model = request.match_info["model"]
    first_seen = _visible(principal, services).get(model)
    if first_seen is None:
        message = (
            f"The model '{model[:MAX_LOGGED_MODEL]}' is not served here right now."
            " GET /v1/models lists the models available now."
        )
        return error_response(request, 404, "model_not_found", message, param="model")
    return web.json_response(_model_object(model, first_seen))


async def ollama_version_endpoint(_request: web.Request) -> web.Response:
    """GET /api/version: the Ollama API version the /api/* endpoints follow (no key, as Ollama)."""
    return web.json_response({"version": OLLAMA_VERSION})


async def ollama_tags_endpoint(request: web.Request) -> web.Response:
    """GET /api/tags: the same models in Ollama's shape, for Ollama clients."""
    services = request.app[SERVICES]
    principal = await _authenticate(request, services)
    if isinstance(principal, web.Response):
        return principal
    models = [
        {
            "name": model,
            "model": model,
            "modified_at": datetime.fromtimestamp(first_seen, UTC).isoformat(),
            "size": 0,
            "digest": "",
            "details": {},
        }
        for model, first_seen in _visible(principal, services).items()
    ]
    return web.json_response({"models": models})


async def proxy_endpoint(request: web.Request) -> web.StreamResponse:
    """POST to a model endpoint that aiohttp read (the express lane serves the others)."""
    target = request.path_qs
    if not is_relayable(request.method, target):
        # aiohttp routes on the decoded path (`/v1/chat/completion%73` is `.../completions`
        # to it), but the target goes on as sent and the connector judges that: only a path
        # that is an endpoint as sent is routed, so both ends agree on every request.
        path = shown(target.partition("?")[0], 100)
        return error_response(request, 404, "not_found", f"There is no endpoint at {path}.")
    services = request.app[SERVICES]
    settings = services.settings
    call = AiohttpCall(request, settings.body_timeout, settings.stall_timeout)
    await admission.serve(services, call)
    return call.response or web.Response(status=499)
