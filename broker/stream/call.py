"""One API call as the request path sees it: what the client asked, and the means to answer.

Admission (`broker.api.admission`) and the stream's drivers (`broker.stream.trip`,
`broker.stream.callbacktrip`) work against `Call`, so the same code serves a request whichever
server read it: aiohttp (`broker.edge.aiohttpcall.AiohttpCall`) or the express lane
(`broker.edge.expresscall.ExpressCall`). Writes raise ConnectionError once the client has gone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final, Protocol

_SAFE_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    given = headers.get("X-Request-ID", "")
    return given if _SAFE_REQUEST_ID.match(given) else f"req_{os.urandom(16).hex()}"


class Call(Protocol):
    """One API request and the means to answer it (once: a reply, or start, writes and end)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """The path, without the query."""

    @property
    def target(self) -> str:
        """The path and the query, as forwarded to the connector."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The request's headers, looked up without regard to case."""

    @property
    def request_id(self) -> str: ...

    @property
    def ids(self) -> dict[str, str]:
        """The fields that name the request in its log lines: `request_id`, and `trace_id`
        when its `traceparent` is valid (computed once per request)."""

    async def read(self, limit: int) -> bytes | None:
        """The whole request body, or None when it is larger than `limit` bytes."""

    async def reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Answer with a complete response (an error, before anything else was sent)."""

    async def start(
        self, status: int, headers: list[tuple[str, str]], *, chunked: bool, buffered: bool
    ) -> None:
        """Send the head of a relayed response.

        `chunked`: the body's length is not known, so it goes in chunks. `buffered`: more
        is already here, so the head may wait to leave with the first body bytes.
        """

    async def write(self, data: bytes) -> None:
        """Send body bytes; returns once the client's connection can take more."""

    async def end(self) -> None:
        """The body is complete."""

    def cut(self) -> None:
        """Close the client's connection: a started body cannot be completed."""
