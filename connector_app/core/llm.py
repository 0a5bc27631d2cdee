"""The HTTP client for the local LLM server: pooled, streaming, never buffering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from connector_app.core.pool import Connection, Listener, Pool, Response
from shared.http1 import HTTPError
from shared.protocol import Headers


class LocalLLM:
    """Talks to one local server (Ollama, llama.cpp, vLLM, LM Studio) at `base_url`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = 10.0,
        limit: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        # Generations may take many minutes; only connecting is bounded here.
        self._pool = Pool(self.base_url, limit=limit, connect_timeout=connect_timeout)

    async def close(self) -> None:
        await self._pool.close()

    def _headers(self, headers: Iterable[tuple[str, str]]) -> Headers:
        out = [(k, v) for k, v in headers if k.lower() not in ("authorization", "accept-encoding")]
        # Bytes pass through unchanged; we ask for identity so they stay readable.
        out.append(("Accept-Encoding", "identity"))
        if self._api_key:
            out.append(("Authorization", f"Bearer {self._api_key}"))
        return tuple(out)

    def request(
        self, method: str, path: str, headers: Headers, body: bytes
    ) -> AbstractAsyncContextManager[Response]:
        """Send one request; use as `async with llm.request(...) as response`."""
        return self._pool.request(method, path, self._headers(headers), body)

    def start_nowait(
        self, method: str, path: str, headers: Headers, body: bytes, listener: Listener
    ) -> Connection | None:
        """Send one request at once on a kept-alive connection, or None (see `Pool`)."""
        return self._pool.start_nowait(method, path, self._headers(headers), body, listener)

    def finish(self, connection: Connection) -> None:
        """Hand back a connection from `start_nowait` when its exchange is over."""
        self._pool.finish(connection)

    async def get_json(self, path: str, timeout: float = 5.0) -> Any:
        """GET a JSON document (used for discovery); raises on any failure."""
        async with asyncio.timeout(timeout), self.request("GET", path, (), b"") as response:
            if response.status >= 400:
                raise HTTPError(f"GET {path} answered {response.status}")
            return json.loads(await response.body())
