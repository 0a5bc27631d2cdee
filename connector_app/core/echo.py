"""A built-in stand-in for an LLM server: the `echo` model repeats the last user message.

The demo serves it when no local LLM server answers, so the whole path can be tried on
any machine, with any client: it answers every endpoint the broker relays, each in its
own family's shape (`connector_app.core.echoformats`, `connector_app.core.echoollama`):
OpenAI's chat completions,
completions, responses and embeddings, Anthropic's messages, and Ollama's chat,
generate, embed, embeddings and show; streamed word by word (SSE or NDJSON) or whole.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

from aiohttp import web

from connector_app.core import echoformats as f
from connector_app.core import echoollama as ollama
from connector_app.core.echoformats import Ask, Family, Other

FAMILIES: Final = {
    "/v1/chat/completions": Family(
        "chatcmpl-", False, f.messages_text, f.chat_whole, f.chat_stream
    ),
    "/v1/completions": Family(
        "cmpl-", False, f.prompt_text, f.completion_whole, f.completion_stream
    ),
    "/v1/responses": Family("resp_", False, f.input_text, f.responses_whole, f.responses_stream),
    "/v1/messages": Family("msg_", False, f.messages_text, f.messages_whole, f.messages_stream),
    "/api/chat": Family("", True, f.messages_text, ollama.chat_whole, ollama.chat_stream),
    "/api/generate": Family("", True, f.prompt_text, ollama.generate_whole, ollama.generate_stream),
}
"""The text-generating endpoints, by path."""

OTHERS: Final[dict[str, Other]] = {
    "/v1/embeddings": f.openai_embeddings,
    "/api/embed": ollama.embed,
    "/api/embeddings": ollama.embeddings,
    "/api/show": ollama.show,
}
"""The endpoints answered with one JSON object, by path."""

MODEL = "echo"
DELAY = web.AppKey("delay", float)


def _error(path: str, status: int, message: str) -> web.Response:
    """An error in the shape the endpoint's clients read."""
    body: dict[str, Any]
    if path.startswith("/api/"):
        body = {"error": message}
    elif path == "/v1/messages":
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        code = "model_not_found" if status == 404 else None
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    return web.json_response(body, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object naming the echo model, or the error to answer."""
    try:
        body = await request.json()
    except ValueError:
        return _error(request.path, 400, "The body must be JSON.")
    if isinstance(body, dict) and request.path == "/api/show" and "model" not in body:
        body["model"] = body.get("name")  # an older Ollama client's spelling
    if not isinstance(body, dict) or body.get("model") != MODEL:
        return _error(request.path, 404, f"This server only has the model '{MODEL}'.")
    return body


async def _models(_request: web.Request) -> web.Response:
    model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "remotellm"}
    return web.json_response({"object": "list", "data": [model]})


async def _generate(request: web.Request) -> web.StreamResponse:
    """A text-generating endpoint: the last user text back, whole or streamed."""
    family: Family = FAMILIES[request.path]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    words = family.text(body).split() or ["(nothing", "to", "echo)"]
    ident = f"{family.prefix}{uuid.uuid4().hex[:24]}" if family.prefix else ""
    ask = Ask(MODEL, words, ident, int(time.time()), body)
    stream = body.get("stream", family.streams_by_default)
    if not stream:
        return web.json_response(family.whole(ask))
    return await _stream(request, family, ask)


async def _stream(request: web.Request, family: Family, ask: Ask) -> web.StreamResponse:
    """The answer one word per event, `DELAY` apart."""
    delay = request.app[DELAY]
    streamed = family.streamed(ask)
    response = web.StreamResponse(headers={"Content-Type": streamed.content_type})
    await response.prepare(request)
    for event in streamed.head:
        await response.write(event)
    for i, piece in enumerate(streamed.pieces):
        if i:
            await asyncio.sleep(delay)
        await response.write(piece)
    for event in streamed.tail:
        await response.write(event)
    await response.write_eof()
    return response


async def _other(request: web.Request) -> web.Response:
    """Embeddings and model details: one JSON object."""
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response(OTHERS[request.path](body, MODEL))


def create_echo_app(delay: float = 0.05) -> web.Application:
    """An LLM server with only the `echo` model; `delay` is seconds between streamed words."""
    app = web.Application()
    app[DELAY] = delay
    app.router.add_get("/v1/models", _models)
    for path in FAMILIES:
        app.router.add_post(path, _generate)
    for path in OTHERS:
        app.router.add_post(path, _other)
    return app
