"""The HTTP client for the local LLM server: pooled, streaming, never buffering."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

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
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, enable_cleanup_closed=False),
            # Generations may take many minutes; only connecting is bounded here.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
            # Bytes pass through unchanged; we ask for identity so they stay readable.
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [(k, v) for k, v in headers if k.lower() != "authorization"]
        out.append(("Accept-Encoding", "identity"))
        if self._api_key:
            out.append(("Authorization", f"Bearer {self._api_key}"))
        return out

    def request(
        self, method: str, path: str, headers: Headers, body: bytes
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """Send one request; use as `async with llm.request(...) as response`."""
        return self._session.request(
            method,
            self.base_url + path,
            headers=self._headers(headers),
            data=body,
            allow_redirects=False,
        )

    async def get_json(self, path: str, timeout: float = 5.0) -> Any:
        """GET a JSON document (used for discovery); raises on any failure."""
        async with self._session.get(
            self.base_url + path,
            headers=self._headers(()),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            response.raise_for_status()
            return await response.json(content_type=None)
