"""Finding local LLM servers and the models they serve."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from connector_app.core.llm import LocalLLM

KNOWN_SERVERS: Final = (
    ("Ollama", 11434),
    ("llama.cpp server", 8080),
    ("LM Studio", 1234),
    ("vLLM", 8000),
)


class DiscoveryError(Exception):
    """The local server did not list its models."""


def _ids(document: Any, list_key: str, id_key: str) -> list[str] | None:
    if not isinstance(document, dict) or not isinstance(document.get(list_key), list):
        return None
    ids = [
        item[id_key]
        for item in document[list_key]
        if isinstance(item, dict) and isinstance(item.get(id_key), str)
    ]
    return sorted(set(ids))


async def discover_models(llm: LocalLLM, timeout: float = 5.0) -> list[str]:
    """Models of the server: OpenAI's `GET /v1/models`, else Ollama's `GET /api/tags`."""
    problems: list[str] = []
    for path, list_key, id_key in (("/v1/models", "data", "id"), ("/api/tags", "models", "name")):
        try:
            ids = _ids(await llm.get_json(path, timeout), list_key, id_key)
        except Exception as exc:  # any failure means: try the next dialect
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        if ids is not None:
            return ids
        problems.append(f"{path}: unexpected document")
    raise DiscoveryError(f"no model list at {llm.base_url} ({'; '.join(problems)})")


async def detect_local_server(
    host: str = "127.0.0.1",
    timeout: float = 1.0,
    servers: Sequence[tuple[str, int]] = KNOWN_SERVERS,
) -> tuple[str, str] | None:
    """The first of `servers` (in order) that lists models: (kind, base URL), or None."""

    async def lists_models(llm: LocalLLM) -> bool:
        try:
            await discover_models(llm, timeout)
        except DiscoveryError:
            return False
        return True

    async def probe(kind: str, port: int) -> tuple[str, str] | None:
        llm = LocalLLM(f"http://{host}:{port}", connect_timeout=timeout)
        try:
            found = await lists_models(llm)
        finally:
            await llm.close()
        return (kind, llm.base_url) if found else None

    results = await asyncio.gather(*(probe(kind, port) for kind, port in servers))
    return next((r for r in results if r is not None), None)
