"""Reconnect delays: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """delay(n) = uniform(0, min(cap, base * 2**n)); `reset()` after a stable connection.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads a
    crowd of connectors that lost the same broker so they do not return in lockstep.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self._rand = rand
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return self._rand(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
