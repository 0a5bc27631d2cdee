"""A stub OpenAI/Ollama-compatible LLM server for tests, run on loopback in-process.

Behaviour is chosen per request by an `x_stub` object in the JSON body (the relay
forwards bodies unchanged, so the stub sees it): `{"mode": "events", "events": N,
"gated": true}` and so on. Everything the stub receives is recorded.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

CHAT_BODY = (
    b'{"id":"chatcmpl-stub","object":"chat.completion","created":1700000000,"model":"stub-model",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the stub."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
)


ECHOED = (
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)
"""Endpoints where the stub answers with the path and body it received."""


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "stub-model",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class StubLLM:
    models: list[str] = field(default_factory=lambda: ["stub-model"])
    seen: list[Seen] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    """Index of each SSE event, appended right after it was written."""
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    override: dict[str, Any] = field(default_factory=dict)
    """Options applied to every chat request, over the request's own `x_stub`."""
    openai_models: bool = True
    """False makes GET /v1/models a 404, as on an Ollama without the OpenAI layer."""
    tls: ssl.SSLContext | None = None
    """A server context: the stub then serves https://."""
    runner: web.AppRunner | None = None
    url: str = ""

    def gate(self, i: int) -> asyncio.Event:
        return self.gates.setdefault(i, asyncio.Event())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/v1/chat/completions", self._chat)
        for path in ECHOED:
            app.router.add_post(path, self._echo)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/v1/messages", self._messages)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers), body))
        self.started.set()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        options = parsed.get("x_stub", {}) if isinstance(parsed, dict) else {}
        return {**options, **self.override}

    async def _echo(self, request: web.Request) -> web.Response:
        await self._record(request)
        seen = self.seen[-1]
        return web.json_response({"path": seen.path, "body": json.loads(seen.body)})

    async def _models(self, _request: web.Request) -> web.Response:
        if not self.openai_models:
            raise web.HTTPNotFound()
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _tags(self, _request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": m} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        options = await self._record(request)
        mode = options.get("mode", "json")
        try:
            extra = options.get("headers", {})  # more response headers, in these two modes
            if mode == "json":
                return web.Response(body=CHAT_BODY, content_type="application/json", headers=extra)
            if mode == "status":
                body = {"error": {"message": "stub says no", "type": "invalid_request_error"}}
                return web.json_response(body, status=int(options["status"]), headers=extra)
            if mode == "partial":
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                await response.write(sse_event(0) + b'data: {"id":"chatcmpl-stub","obj')
                assert request.transport is not None
                request.transport.close()
                return response
            if mode == "sized_partial":
                # An SSE answer that announces its length, then dies one event in.
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                response.content_length = len(sse_event(0) + SSE_DONE)
                await response.prepare(request)
                await response.write(sse_event(0))
                assert request.transport is not None
                request.transport.close()
                return response
            if mode == "big":
                return web.Response(body=b"x" * int(options["size"]), content_type="text/plain")
            if mode == "hang":
                await asyncio.sleep(3600)
            return await self._events(request, options)
        except asyncio.CancelledError:
            self.disconnected.set()
            raise

    async def _events(self, request: web.Request, options: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        count = int(options.get("events", 5))
        interval = float(options.get("interval", 0))
        for i in range(count):
            if options.get("gated") and i > 0:
                await self.gate(i - 1).wait()
            await response.write(sse_event(i))
            self.written.append(i)
            if options.get("break_after") == i:
                assert request.transport is not None
                request.transport.close()
                return response
            if interval:
                await asyncio.sleep(interval)
        if options.get("hang_at_end"):
            await asyncio.sleep(3600)
        if options.get("usage"):  # as with stream_options.include_usage
            usage = {"prompt_tokens": 11, "completion_tokens": count, "total_tokens": 11 + count}
            chunk = {"id": "chatcmpl-stub", "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for word in ("Hello", " there"):
            line = {"model": "stub-model", "message": {"role": "assistant", "content": word}}
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write(json.dumps({"model": "stub-model", "done": True}).encode() + b"\n")
        await response.write_eof()
        return response

    async def _messages(self, request: web.Request) -> web.Response:
        await self._record(request)
        body = {
            "id": "msg_stub",
            "type": "message",
            "role": "assistant",
            "model": "stub-model",
            "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        return web.json_response(body)
