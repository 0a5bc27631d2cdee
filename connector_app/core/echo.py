"""A built-in stand-in for an LLM server: the `echo` model repeats the last user message.

The demo serves it when no local LLM server answers, so the whole path can be
tried on any machine. It speaks the OpenAI chat-completions dialect, streamed
(word by word, as SSE) or not.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

MODEL = "echo"
DELAY = web.AppKey("delay", float)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
    return ""


def _error(status: int, message: str) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return web.json_response(body, status=status)


async def _models(_request: web.Request) -> web.Response:
    model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "remotellm"}
    return web.json_response({"object": "list", "data": [model]})


async def _chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "The body must be JSON.")
    if not isinstance(body, dict) or body.get("model") != MODEL:
        return _error(404, f"This server only has the model '{MODEL}'.")
    words = _last_user_text(body).split() or ["(nothing", "to", "echo)"]
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
    usage = {
        "prompt_tokens": len(words),
        "completion_tokens": len(words),
        "total_tokens": 2 * len(words),
    }
    if not body.get("stream"):
        message = {"role": "assistant", "content": " ".join(words)}
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )
    return await _stream(request, body, words, ident, created, usage)


async def _stream(
    request: web.Request,
    body: dict[str, Any],
    words: list[str],
    ident: str,
    created: int,
    usage: dict[str, int],
) -> web.StreamResponse:
    """The answer as OpenAI-style SSE chunks, one word per chunk, `DELAY` apart."""
    delay: float = request.app[DELAY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": MODEL}
        chunk["choices"] = choices
        chunk.update(extra or {})
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    # With include_usage every chunk carries "usage": null but the last, as OpenAI's do.
    nothing: dict[str, Any] = {"usage": None} if with_usage else {}
    for i, word in enumerate(words):
        text = word if i == 0 else " " + word
        await event([{"index": 0, "delta": {"content": text}, "finish_reason": None}], nothing)
        await asyncio.sleep(delay)
    await event([{"index": 0, "delta": {}, "finish_reason": "stop"}], nothing)
    if with_usage:
        await event([], {"usage": usage})
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_echo_app(delay: float = 0.05) -> web.Application:
    """An OpenAI-compatible app serving the `echo` model; `delay` is seconds between words."""
    app = web.Application()
    app[DELAY] = delay
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    return app
