"""Error responses as aiohttp responses, for the endpoints aiohttp serves."""

from __future__ import annotations

from aiohttp import web

from broker.api.errors import error_parts


def error_response(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    param: str | None = None,
) -> web.Response:
    """A complete error response in the dialect of the request's endpoint."""
    headers, body = error_parts(
        request.path, status, code, message, retry_after=retry_after, param=param
    )
    return web.Response(status=status, body=body, headers=headers)
