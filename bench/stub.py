"""A stub OpenAI-compatible LLM server built for speed, run in its own process.

    python -m bench.stub [--port 0]

prints one JSON line `{"port": N}` on stdout once it listens on 127.0.0.1, and
serves until SIGTERM or SIGINT.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length request bodies,
chunked responses) on a bare `asyncio.Protocol`: no framework, no task per
request, response bytes built once and reused, SSE events sent from timer
callbacks. The benchmark wants the stub's own cost to be small and the same on
every path.

What a request gets is chosen by its last message's content, because that is
the one field every proxy (the broker, LiteLLM) forwards unchanged:
`"bench events=64 interval_ms=20 ttft_ms=0 size=1024 id=w8-3"`, with the
request's `"stream": true|false`.

* Streamed: the head at once, then `events` SSE chunks, the first after
  `ttft_ms`, then every `interval_ms` (0 = all at once), then a finish chunk and
  `data: [DONE]`. Each chunk's content is `@<index>:<time.monotonic_ns()>@`,
  taken just before it is written, so the client can compute each event's delay
  (the monotonic clock is shared by the processes of one machine).
* Not streamed: a `chat.completion` JSON body of `size` bytes after `ttft_ms`.

`GET /_stats` returns `{"requests", "disconnects": {id: monotonic_ns}}`: for
every request with an `id` whose client closed the connection before the
response was complete, when the stub saw the close. `POST /_reset` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, Final, TypeVar, cast

HEAD_LIMIT: Final = 64 * 1024
BODY_LIMIT: Final = 64 * 1024 * 1024

_SSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_CHUNK_PREFIX: Final = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"stub","choices":[{"index":0,"delta":{"content":"@'
)
_CHUNK_SUFFIX: Final = b'@"},"finish_reason":null}]}\n\n'
_FINISH: Final = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"stub","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
_TAIL: Final = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_FINISH), _FINISH)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        status.encode(),
        content_type,
        len(body),
    )
    return head + body


def _refusal(status: str) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status.encode()


def completion_body(size: int) -> bytes:
    """A valid `chat.completion` JSON document of exactly `size` bytes (or a little more)."""
    empty = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "stub",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        separators=(",", ":"),
    ).encode()
    pad = max(size - len(empty), 0)
    return empty.replace(b'"content":""', b'"content":"' + b"x" * pad + b'"')


def parse_spec(body: bytes) -> tuple[bool, dict[str, str]]:
    """(stream, options) from a chat request body; options from the last message."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return False, {}
    if not isinstance(parsed, dict):
        return False, {}
    options: dict[str, str] = {}
    messages = parsed.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, str):
            for word in content.split():
                key, sep, value = word.partition("=")
                if sep:
                    options[key] = value
    return bool(parsed.get("stream")), options


class Stats:
    """What the stub saw, for GET /_stats."""

    def __init__(self) -> None:
        self.requests = 0
        self.disconnects: dict[str, int] = {}
        self.bodies: dict[int, bytes] = {}

    def body(self, size: int) -> bytes:
        cached = self.bodies.get(size)
        if cached is None:
            cached = self.bodies[size] = _response(
                "200 OK", b"application/json", completion_body(size)
            )
        return cached


class StubConnection(asyncio.Protocol):
    """One client connection: parse requests one after another, answer each."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.gone = False
        self.timer: asyncio.TimerHandle | None = None
        self.stream_id = ""
        self.keep_alive = True
        # Streaming state: next index, count, first emit time (loop clock), interval.
        self.index = 0
        self.count = 0
        self.first_at = 0.0
        self.interval = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def eof_received(self) -> bool | None:
        self._gone()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    # -- requests -----------------------------------------------------------------

    def _gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        now = time.monotonic_ns()
        if self.busy and self.stream_id:
            self.stats.disconnects[self.stream_id] = now
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.busy = False

    def _next_request(self) -> None:
        while not self.busy and not self.gone:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > HEAD_LIMIT:
                    self._reply(_refusal("431 Too Large"), close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.partition(" ")[0]
            length = 0
            self.keep_alive = True
            for line in lines[1:]:
                name, _, value = line.partition(":")
                lowered = name.strip().lower()
                if lowered == "content-length":
                    length = int(value.strip())
                elif lowered == "connection" and value.strip().lower() == "close":
                    self.keep_alive = False
                elif lowered == "transfer-encoding":
                    self._reply(_refusal("411 Length Required"), close=True)
                    return
            if length > BODY_LIMIT:
                self._reply(_refusal("413 Too Large"), close=True)
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._dispatch(method, path, body)

    def _reply(self, data: bytes, close: bool = False) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close or not self.keep_alive:
            self.transport.close()
            self.gone = True

    def _dispatch(self, method: str, path: str, body: bytes) -> None:
        stats = self.stats
        if method == "POST" and path.endswith("/chat/completions"):
            stats.requests += 1
            stream, options = parse_spec(body)
            self.stream_id = options.get("id", "")
            ttft = float(options.get("ttft_ms", "0")) / 1000
            if stream:
                self._start_stream(options, ttft)
            elif ttft > 0:
                self.busy = True
                size = int(options.get("size", "1024"))
                self.timer = self.loop.call_later(ttft, self._send_body, size)
            else:
                self._reply(stats.body(int(options.get("size", "1024"))))
            return
        path = path.partition("?")[0]
        if method == "GET" and path == "/_stats":
            payload = {"requests": stats.requests, "disconnects": stats.disconnects}
            self._reply(_response("200 OK", b"application/json", json.dumps(payload).encode()))
        elif method == "POST" and path == "/_reset":
            stats.requests = 0
            stats.disconnects.clear()
            self._reply(_response("200 OK", b"application/json", b"{}"))
        elif method == "GET" and path in ("/v1/models", "/models"):
            models = b'{"object":"list","data":[{"id":"stub","object":"model","owned_by":"bench"}]}'
            self._reply(_response("200 OK", b"application/json", models))
        elif method == "GET" and path == "/health":
            self._reply(_response("200 OK", b"application/json", b'{"status":"ok"}'))
        else:
            self._reply(_response("404 Not Found", b"application/json", b'{"error":"no"}'))

    def _send_body(self, size: int) -> None:
        self.timer = None
        self.busy = False
        if not self.gone:
            self._reply(self.stats.body(size))
            self._next_request()

    # -- streaming ----------------------------------------------------------------

    def _start_stream(self, options: dict[str, str], ttft: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.index = 0
        self.count = int(options.get("events", "16"))
        self.interval = float(options.get("interval_ms", "0")) / 1000
        self.transport.write(_SSE_HEAD)
        self.first_at = self.loop.time() + ttft
        if ttft > 0:
            self.timer = self.loop.call_at(self.first_at, self._emit)
        else:
            self._emit()

    def _emit(self) -> None:
        self.timer = None
        if self.gone or self.transport is None:
            return
        write = self.transport.write
        if self.interval <= 0:
            # Back to back: build everything at once, one write.
            parts = [
                _chunk(_CHUNK_PREFIX + b"%d:%d" % (i, time.monotonic_ns()) + _CHUNK_SUFFIX)
                for i in range(self.index, self.count)
            ]
            write(b"".join(parts))
            self.index = self.count
        else:
            write(
                _chunk(_CHUNK_PREFIX + b"%d:%d" % (self.index, time.monotonic_ns()) + _CHUNK_SUFFIX)
            )
            self.index += 1
        if self.index < self.count:
            # Absolute schedule: a late callback does not push the later events back.
            when = self.first_at + self.index * self.interval
            self.timer = self.loop.call_at(when, self._emit)
            return
        write(_TAIL)
        self.busy = False
        self.stream_id = ""
        if not self.keep_alive:
            self.transport.close()
            self.gone = True
            return
        self._next_request()


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:`port`, print the port as JSON, serve until signalled."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(
        lambda: StubConnection(stats), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stub", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
