"""The aiohttp adapter of the request path: an aiohttp request as a `broker.stream.call.Call`.

Every API request the express lane leaves alone (`broker.edge.express`) is read by aiohttp
and served through `AiohttpCall`, by the same admission and drivers as the lane's.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, Final, NoReturn

import structlog
from aiohttp import web
from multidict import CIMultiDict

from broker.stream.deadline import within
from broker.stream.machine import bodiless

_DECODED: Final = frozenset({"gzip", "deflate", "br", "zstd"})
"""The request content codings aiohttp's server removes from a body itself (one of them)."""

log = structlog.get_logger("remotellm.broker.api")

REQUEST_IDS: web.RequestKey[dict[str, str]] = web.RequestKey("request_ids")
"""The fields that name each request in its log lines (set by `broker.app.correlate`): its
correlation id (`request_id`), and its trace's (`trace_id`, when it has a valid `traceparent`)."""


async def hang_up(request: web.Request, why: str) -> NoReturn:
    """Close a request's connection at once and end the request as one whose client left:
    the lost connection cancels the handler (or fails the read, where handlers are not
    cancelled)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    await request.content.readany()
    raise ConnectionResetError(why)


def _passed_on(request: web.Request) -> Mapping[str, str]:
    """The request's headers as the connector gets them: without a Content-Encoding label once
    aiohttp has decoded the body (or the local LLM would decode it again)."""
    headers = request.headers
    codings = headers.getall("Content-Encoding", ())
    if not any(coding.isascii() and coding.lower() in _DECODED for coding in codings):
        return headers
    # aiohttp decodes one coding (its C parser the last label's, its Python parser the
    # first's), and the broker reads the model from the body: a body that is passed on is
    # plain, so no label describes it (the express lane leaves such requests to aiohttp).
    kept = CIMultiDict(headers)
    kept.popall("Content-Encoding")
    return kept


class AiohttpCall:
    """A `Call` on an aiohttp request; `response` is what its handler returns.

    `body_timeout` bounds each wait for the request body, `stall_timeout` each wait for the
    client to take some of its answer (the broker's settings of those names)."""

    __slots__ = ("_body_timeout", "_headers", "_left", "_stall_timeout", "request", "response")

    def __init__(self, request: web.Request, body_timeout: float, stall_timeout: float) -> None:
        self.request = request
        self._body_timeout = body_timeout
        self._stall_timeout = stall_timeout
        self._headers = _passed_on(request)
        self.response: web.StreamResponse | None = None
        self._left: int | None = None
        """Body bytes the answer's Content-Length still owes, when it has one."""

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def target(self) -> str:
        return self.request.path_qs

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def request_id(self) -> str:
        return self.request[REQUEST_IDS]["request_id"]

    @property
    def ids(self) -> dict[str, str]:
        return self.request[REQUEST_IDS]

    async def read(self, limit: int) -> bytes | None:
        request = self.request
        if request.content_length is not None and request.content_length > limit:
            return None
        content = request.content
        body_timeout = self._body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk: bytes | None = await within(body_timeout, content.readany())
            except TimeoutError:
                chunk = None  # hung up outside the handler: it would chain the TimeoutError
            if chunk is None:
                await hang_up(request, "the request body stopped arriving")
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        response = web.Response(status=status, body=body, headers=headers)
        response.headers["X-Request-ID"] = self.request_id
        self.response = response

    async def start(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool, buffered: bool
    ) -> None:
        # A web.Response sends its head with the first body write (one system call and
        # one wake-up of the client fewer); a StreamResponse sends it at once.
        response = web.Response(status=status) if buffered else web.StreamResponse(status=status)
        response.headers.extend(headers)
        if chunked:
            response.enable_chunked_encoding()
        elif not bodiless(self.request.method, status):
            self._left = response.content_length  # a bodiless answer owes no bytes
        self.response = response
        await response.prepare(self.request)

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        if self._left is not None:
            self._left = max(self._left - len(data), 0)
        await self._taken(self.response.write(data))

    async def end(self) -> None:
        assert self.response is not None
        if self._left:
            # Shorter than announced: only a closed connection tells the client so.
            self.response.force_close()
        await self._taken(self.response.write_eof())

    async def _taken(self, write: Coroutine[Any, Any, None]) -> None:
        """Await a write (which waits while the client reads nothing): a client that takes none
        of its answer for the stall timeout is cut off, as the express lane cuts it."""
        timeout = self._stall_timeout
        stalled = False
        try:
            await within(timeout, write)
        except TimeoutError:
            stalled = True
        if stalled:
            log.warning("client took none of its answer; connection cut", stall_timeout_s=timeout)
            await hang_up(self.request, "the client took none of its answer")

    def cut(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.close()
