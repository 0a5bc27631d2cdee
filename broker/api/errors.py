"""Error responses in the shape each client family expects.

OpenAI-style endpoints get `{"error": {"message", "type", "param", "code"}}`;
the Anthropic Messages endpoint gets `{"type": "error", "error": {"type", "message"}}`;
Ollama's native endpoints get `{"error": "message"}`. Status codes are the same for all.
Plain values, no server: the stream's rules (`broker.stream.machine`) write errors with
these too; `broker.api.responses` makes aiohttp responses of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Literal

Dialect = Literal["openai", "anthropic", "ollama"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def dialect_for(path: str) -> Dialect:
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def error_body(
    dialect: Dialect, status: int, code: str, message: str, param: str | None = None
) -> dict[str, Any]:
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if dialect == "ollama":
        return {"error": message}
    kind = _OPENAI_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_parts(
    path: str,
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    param: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """The headers and JSON body of an error for a request to `path`.

    503s and 429s say when to retry; other 4xx say not to.
    """
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    elif 400 <= status < 500 and status not in (408, 409, 429):
        headers["x-should-retry"] = "false"
    body = json.dumps(error_body(dialect_for(path), status, code, message, param)).encode()
    return headers, body


def error_bytes(status: int, code: str, message: str, headers: Iterable[str] = ()) -> bytes:
    """A complete HTTP/1.1 error response (OpenAI shape) for a connection about to close.

    For the relay's upgrade, which is answered without an aiohttp request.
    """
    body = json.dumps(error_body("openai", status, code, message)).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(["x-should-retry: false"] if 400 <= status < 500 else []),
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def stream_error(content_type: str, dialect: Dialect, code: str, message: str) -> bytes | None:
    """Bytes that end a started stream with an error the client will raise, if it has a way."""
    body = error_body(dialect, 502, code, message)
    if content_type.startswith("text/event-stream"):
        if dialect == "anthropic":
            return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    if content_type.startswith("application/x-ndjson"):
        return json.dumps(body).encode() + b"\n"
    return None
