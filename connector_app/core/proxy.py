"""Reaching the broker through an HTTP proxy named in the environment.

The relay link used to be opened by websockets' `connect`, which honours the proxy
settings of the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, and the
system's settings on macOS and Windows). This module keeps that: the same choice of
proxy, then an HTTP `CONNECT` through it. SOCKS and https:// proxies are refused
with a clear error instead of being silently bypassed.
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class ProxyError(Exception):
    """The proxy could not take us to the broker. `fatal` when retrying cannot help."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None
    """The Proxy-Authorization value when the proxy URL carried a user and password."""

    @property
    def address(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def proxy_for(host: str, port: int, *, secure: bool) -> Proxy | None:
    """The proxy to reach `host:port` through, from the environment; None to go direct.

    The order is websockets' (RFC 6455 "Proxy Usage"): a ws/wss-specific proxy, then
    SOCKS, then the HTTPS proxy, and for ws:// also the HTTP proxy.
    """
    if urllib.request.proxy_bypass(f"{host}:{port}"):
        return None
    proxies = urllib.request.getproxies()
    schemes = ("wss", "socks", "https") if secure else ("ws", "socks", "https", "http")
    for scheme in schemes:
        url = proxies.get(scheme)
        if url:
            if scheme == "socks" and url.startswith("http://"):
                url = "socks5h://" + url[len("http://") :]
            return parse_proxy(url)
    return None


def parse_proxy(url: str) -> Proxy:
    """An http:// proxy URL as a Proxy; ProxyError (fatal) for any other kind."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ProxyError(
            f"the proxy {url.split('@')[-1]} is not an http:// proxy, the only kind the "
            "connector supports; set NO_PROXY for the broker's host to go direct",
            fatal=True,
        )
    if not parts.hostname:
        raise ProxyError("the proxy setting has no host name", fatal=True)
    try:
        port = parts.port or 80
    except ValueError:
        raise ProxyError("the proxy setting has an invalid port", fatal=True) from None
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    return Proxy(parts.hostname, port, authorization)


def connect_request(proxy: Proxy, host: str, port: int, user_agent: str) -> bytes:
    """The CONNECT request asking `proxy` for a tunnel to `host:port`."""
    authority = f"{_bracketed(host)}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_connect_answer(proxy: Proxy, head: bytes) -> None:
    """Raise ProxyError unless the proxy's answer to CONNECT opened the tunnel (2xx)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProxyError(f"the proxy at {proxy.address} did not answer CONNECT in HTTP/1.1")
    status = int(parts[1])
    if status == 407:
        raise ProxyError(
            f"the proxy at {proxy.address} requires authentication (HTTP 407); "
            "put the user and password in the proxy URL",
            fatal=True,
        )
    if not 200 <= status < 300:
        raise ProxyError(f"the proxy at {proxy.address} refused the tunnel (HTTP {status})")
