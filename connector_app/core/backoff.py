"""Reconnect delays: capped exponential backoff with full jitter, and two ceilings."""

from __future__ import annotations

import random
from collections.abc import Callable

RECONNECT_WINDOW = 8.0
"""Most seconds between two dials after a failure the broker's return fixes by itself (a
lost link, a refused connection, a 5xx from a proxy): a connector is back at most this long
after the broker answers again, plus one handshake, so within 10 s."""

SLOW_CEILING = 30.0
"""Most seconds between two dials after a failure retrying cannot fix (a refused token,
TLS, a refused protocol version): no point in asking often, but fixing it on the broker's
side must still be enough."""


class Backoff:
    """delay(n) = uniform(0, min(ceiling, base * 2**n)); `reset()` after a stable connection.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads a
    crowd of connectors that lost the same broker so they do not return in lockstep.
    The ceiling is `window` for a failure the broker's return fixes by itself and `cap`
    for one it does not (`fatal`): a broker that comes back after a crash sees its
    connectors return spread over at most `window` seconds rather than over the 30 s
    the doubling reaches in a long outage.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = SLOW_CEILING,
        rand: Callable[[float, float], float] = random.uniform,
        *,
        window: float = RECONNECT_WINDOW,
    ) -> None:
        self.base = base
        self.cap = cap
        self.window = window
        self._rand = rand
        self.attempt = 0

    def next(self, fatal: bool = False) -> float:
        """The delay before the next dial, after a failure retrying cannot fix if `fatal`."""
        ceiling = self.cap if fatal else min(self.cap, self.window)
        ceiling = min(ceiling, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return self._rand(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
