"""Which headers cross the relay, in each direction.

Only routing and auth headers change: the user's credentials, cookies and
hop-by-hop headers stay at the broker, and headers named `X-RemoteLLM-*` (the brokers' own)
cross in neither direction; everything else passes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from shared.credentials import CREDENTIAL_HEADERS
from shared.protocol import Headers

_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
"""Control characters no header may carry (aiohttp's rule, so both servers refuse the same),
and the lone surrogates that stand for bytes that are not UTF-8: aiohttp would leave them
out of the head it writes, so neither server relays them."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# What the connector's HTTP client sets itself.
_SET_BY_CONNECTOR = frozenset({"host", "content-length", "accept-encoding", "x-request-id"})

# The user's secrets (in any header an SDK sends one in), hop-by-hop headers, and the above.
_REQUEST_DROP = HOP_BY_HOP | CREDENTIAL_HEADERS | _SET_BY_CONNECTOR

# What the broker's own HTTP server sets; CORS is the broker's to grant (`broker.api.cors`), not the
# local server's (an Ollama with OLLAMA_ORIGINS=* would otherwise open the broker to any page).
_RESPONSE_DROP = HOP_BY_HOP | {
    "date",
    "server",
    "x-request-id",
    "set-cookie",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
}


OURS: Final = "x-remotellm-"
"""The prefix of the brokers' own headers (the internal hop's: `broker.cluster.hopauth`,
`broker.stream.machine.HOP_ERROR`): never taken from a client or a connector, so neither can
pass for a broker of the cluster."""


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Headers named in `Connection:` are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _ours(name: str) -> bool:
    return name[:12].lower() == OURS


def request_headers(incoming: Mapping[str, str], request_id: str) -> Headers:
    """Headers of a client request as forwarded to the connector."""
    items = list(incoming.items())
    drop = _REQUEST_DROP | _connection_tokens(items)
    kept = [(k, v) for k, v in items if k.lower() not in drop and not _ours(k)]
    kept.append(("X-Request-ID", request_id))
    return tuple(kept)


def response_headers(upstream: Headers) -> list[tuple[str, str]]:
    """Headers of an upstream response as sent on to the client.

    Raises ValueError when a name or value holds a control character (a tab aside) or a byte
    that is not UTF-8.
    """
    drop = _RESPONSE_DROP | _connection_tokens(upstream)
    kept = [(k, v) for k, v in upstream if k.lower() not in drop and not _ours(k)]
    for name, value in kept:
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise ValueError(f"header {name[:40]!r} holds a control character or a non-UTF-8 byte")
    return kept


class BadHead(Exception):
    """The connector's response head cannot be turned into an HTTP response."""


def relayable(headers: Headers) -> tuple[list[tuple[str, str]], str | None, str]:
    """The response headers to relay, their Content-Length and Content-Type (or BadHead).

    A repeated Content-Length is sent once when every copy agrees; one that is not plain
    digits, or copies that differ, make the head impossible to relay unambiguously.
    """
    try:
        relayed = response_headers(headers)
    except ValueError:
        raise BadHead("The connector sent headers that cannot be relayed.") from None
    kept: list[tuple[str, str]] = []
    length: str | None = None
    content_type: str | None = None
    for name, value in relayed:
        lowered = name.lower()
        if lowered == "content-length":
            if not (value.isascii() and value.isdigit()) or length not in (None, value):
                raise BadHead("The connector sent a Content-Length that cannot be relayed.")
            if length is not None:
                continue
            length = value
        elif lowered == "content-type" and content_type is None:
            content_type = value
        kept.append((name, value))
    return kept, length, content_type or ""
