"""A sliding-window count of attempts per key (a client's network, a user), in the broker's
memory.

For the pairing endpoints (`broker.api.pairing`), where each attempt is cheap to make and
a flood of them would be guessing codes or filling the store. Not shared between broker
processes, except in cluster mode, where `count` asks the cluster's Redis (`shared`,
`broker.cluster.windows`) and falls back to this broker's own count while Redis is away.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("remotellm.broker")

MAX_ADDRESSES = 10_000
"""Addresses remembered at once; past this the quietest are forgotten (memory stays bounded)."""


def network_of(address: str) -> str:
    """The key an address counts under: an IPv4 address itself, an IPv6 address's /64.

    One IPv6 host usually holds a whole /64 (SLAAC, privacy addresses), so counting single
    IPv6 addresses would let it start as many pairings as it has addresses.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", or a socket path
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SharedWindows(Protocol):
    """Counts kept for every broker of a cluster (`broker.cluster.windows`)."""

    async def attempt(
        self, name: str, key: str, limit: int, window: float, now: float
    ) -> int | None: ...


class IpWindow:
    """At most `limit` attempts per key (an address, a network, a user) within any `window`
    seconds."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float], name: str = "attempts"
    ) -> None:
        self.limit = limit
        self.window = window
        self.name = name
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self.shared: SharedWindows | None = None
        self._shared_failed = False

    async def count(self, key: str) -> int | None:
        """`attempt`, counted for the whole cluster when there is one."""
        if self.shared is not None:
            try:
                wait = await self.shared.attempt(
                    self.name, key, self.limit, self.window, self._clock()
                )
            except Exception as exc:
                if not self._shared_failed:
                    log.error(
                        "cannot count pairing attempts in Redis; counting on this broker",
                        error=str(exc) or type(exc).__name__,
                    )
                self._shared_failed = True
            else:
                self._shared_failed = False
                return wait
        return self.attempt(key)

    def attempt(self, address: str) -> int | None:
        """Count an attempt from this address: None when allowed, else the seconds to wait."""
        now = self._clock()
        times = self._seen.pop(address, None) or deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        self._seen[address] = times  # re-inserted: the dict's order is least recent first
        if len(times) >= self.limit:
            return max(1, math.ceil(times[0] + self.window - now))
        times.append(now)
        if len(self._seen) > MAX_ADDRESSES:
            del self._seen[next(iter(self._seen))]
        return None
