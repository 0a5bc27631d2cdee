"""The HTTP endpoints a broker relays and a connector agrees to serve.

Both sides use this one list: the broker routes only these paths, and a connector
refuses anything else, so a broker cannot make a connector call, say, Ollama's
`/api/pull` or `/api/delete` on its owner's machine.
"""

from __future__ import annotations

from typing import Final

MODEL_ENDPOINTS: Final = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)


def is_relayable(method: str, path: str) -> bool:
    """Whether a request (path with or without a query) may cross the relay."""
    return method == "POST" and path.partition("?")[0] in MODEL_ENDPOINTS
