"""This broker as the cluster knows it: an id for this run, and the URL other brokers reach it on.

The id is random per process start, so a restarted broker is a new member (its old record
expires on its own, see `broker.cluster.registry`). The internal URL is `--internal-url`
when given; else the scheme, host and port the broker listens on, with a wildcard host
(0.0.0.0, ::) replaced by the address of the interface this host routes outward through
(what another host of the same network reaches it on). Behind NAT or in containers, give
`--internal-url` explicitly.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def new_id() -> str:
    """A fresh instance id (64 random bits, hex)."""
    return os.urandom(8).hex()


def outward_address() -> str:
    """The address of the interface this host routes outward through; 127.0.0.1 without one.

    A UDP socket's connect sends nothing: it only asks the kernel for the route.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def listening_url(host: str, port: int, *, tls: bool) -> str:
    """The URL of a listener on `host`:`port`, reachable from other hosts."""
    if host in _WILDCARDS:
        host = outward_address()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def url_port(url: str) -> int:
    """The port of a base URL (its scheme's default when it names none)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class Node:
    """This broker's identity in the cluster; its URL is known once it listens."""

    __slots__ = ("id", "url")

    def __init__(self, configured_url: str | None) -> None:
        self.id = new_id()
        self.url: str | None = configured_url.rstrip("/") if configured_url else None
        """Where other brokers send forwarded requests; None until the broker listens."""

    def listening(self, host: str, port: int, *, tls: bool) -> None:
        """The broker listens on `host`:`port`: the default URL, unless one was configured."""
        if self.url is None:
            self.url = listening_url(host, port, tls=tls)
