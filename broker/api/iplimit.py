"""A sliding-window count of attempts per client IP address, in the broker's memory.

For the pairing endpoints (`broker.api.pairing`), where each attempt is cheap to make and
a flood of them would be guessing codes or filling the store. Not shared between broker
processes: each counts what it sees.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

MAX_ADDRESSES = 10_000
"""Addresses remembered at once; past this the quietest are forgotten (memory stays bounded)."""


class IpWindow:
    """At most `limit` attempts per address within any `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

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
