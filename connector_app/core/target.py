"""Where a broker's relay URL points: host, port, TLS, and what the upgrade request says."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ws:// or wss:// URL points."""

    host: str
    port: int
    secure: bool
    host_header: str
    resource: str
    """Path and query, as sent in the request line."""


def parse_ws_url(url: str) -> Target:
    """Split a ws:// or wss:// URL; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    default = 443 if secure else 80
    port = parts.port or default
    host = parts.hostname
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == default else f"{bracketed}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(host, port, secure, host_header, resource)
