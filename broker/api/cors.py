"""Browsers calling the API from other origins (CORS): the allow-list, preflights, headers.

Off unless `--cors-origin` names an origin (or `*`). Only the API answers browsers: the
model endpoints, the model lists and /api/version; the portal, /relay, /health and
/metrics never do. A browser sends the key in `Authorization` or `x-api-key`, never in
a cookie, so the broker never sends `Access-Control-Allow-Credentials`: with `*` and
with a list alike, no origin can make a browser attach its cookies for the broker.

Requests that carry an `Origin` are rare and are all served by aiohttp (the express
lane leaves them to it, `broker.edge.requesthead`), so the common request pays nothing for
this: one hook on aiohttp's responses adds the headers, whether the answer is the
broker's own (errors included) or relayed from the LLM. The LLM server's own CORS
headers never pass the relay (`broker.stream.headers`): this broker's list decides.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from broker.api.responses import error_response
from shared.endpoints import MODEL_ENDPOINTS

ALLOW_METHODS: Final = "GET, POST, OPTIONS"

ALLOW_HEADERS: Final = (
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "traceparent",
    "tracestate",
)
"""Request headers a browser may always send; those a preflight asks for (SDKs add their own,
such as `x-stainless-*`) are allowed as well."""

EXPOSE_HEADERS: Final = ", ".join(
    (
        "X-Request-ID",
        "Retry-After",
        "x-should-retry",
        "openai-processing-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    )
)
"""Response headers a page's script may read (the browser hides the rest but a few)."""

MAX_AGE: Final = "7200"
"""Seconds a browser may reuse a preflight's answer (Chromium's own cap)."""

MAX_REQUESTED: Final = 64
"""Header names a preflight may ask for; past this, only `ALLOW_HEADERS` are allowed."""

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_LISTS: Final = frozenset(("/v1/models", "/api/tags", "/api/version"))
_ENDPOINTS: Final = frozenset(MODEL_ENDPOINTS)


def is_api_path(path: str) -> bool:
    """Whether browsers may call `path` (when their origin is allowed)."""
    return path in _ENDPOINTS or path in _LISTS or path.startswith("/v1/models/")


class Cors:
    """The allow-list of one broker, and what it answers browsers."""

    def __init__(self, origins: list[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.origins

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp's response signal: the CORS headers of an API answer to an allowed origin."""
        if not is_api_path(request.path):
            return
        headers = response.headers
        if not self.any:
            # The answer depends on who asks, allowed or not (or no one): caches must know.
            headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return
        headers["Access-Control-Allow-Origin"] = "*" if self.any else origin
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        """OPTIONS on an API path: a browser's preflight, answered for an allowed origin."""
        origin = request.headers.get("Origin")
        if origin is None or "Access-Control-Request-Method" not in request.headers:
            message = f"OPTIONS is not allowed on {request.path}."
            return error_response(request, 405, "method_not_allowed", message)
        if not self.allows(origin):
            message = (
                "This broker does not accept browser requests from this origin;"
                " its operator can allow it with --cors-origin."
            )
            return error_response(request, 403, "cors_origin_not_allowed", message)
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ", ".join(
            allowed_headers(request.headers.get("Access-Control-Request-Headers", ""))
        )
        response.headers["Access-Control-Max-Age"] = MAX_AGE
        response.headers.add("Vary", "Access-Control-Request-Headers")
        return response


def allowed_headers(requested: str) -> list[str]:
    """`ALLOW_HEADERS` and the well-formed names a preflight asked for, each once."""
    names = [name.strip().lower() for name in requested.split(",") if name.strip()]
    if len(names) > MAX_REQUESTED or not all(_TOKEN.fullmatch(name) for name in names):
        names = []  # a malformed ask gets the fixed list: the browser then says what is missing
    return list(dict.fromkeys((*ALLOW_HEADERS, *names)))


def setup_cors(app: web.Application, origins: list[str]) -> None:
    """Answer browsers from `origins` on the API paths (nothing changes when there are none)."""
    if not origins:
        return
    cors = Cors(origins)
    app.on_response_prepare.append(cors.on_prepare)
    for path in (*MODEL_ENDPOINTS, *sorted(_LISTS), "/v1/models/{model:.+}"):
        app.router.add_route("OPTIONS", path, cors.preflight)
