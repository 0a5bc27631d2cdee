"""New raw API keys waiting to be shown once: in the broker's memory, or in the cluster's
Redis (`broker.cluster.reveals`) so that any broker of a cluster shows them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from aiohttp import web

log = structlog.get_logger("remotellm.broker.portal")

REVEAL_TTL = 300.0


class SharedReveals(Protocol):
    """Where a cluster's brokers keep keys waiting to be shown (`broker.cluster.reveals`)."""

    async def put(self, nonce: str, user_id: int, raw: str, ttl: float) -> None: ...

    async def take(self, nonce: str) -> tuple[int, str] | None: ...


class Reveals:
    """New raw keys waiting to be shown once, in this process's memory only.

    The session cookie carries a random nonce, never the key: the key is gone once shown
    (or after five minutes), so a copied cookie cannot show it again. In cluster mode they
    wait in `shared` instead (set at start-up), and here only while it cannot be reached.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[str, tuple[float, int, str]] = {}
        self.shared: SharedReveals | None = None

    def put(self, user_id: int, raw: str) -> str:
        now = self._clock()
        for nonce in [n for n, (until, _, _) in self._waiting.items() if until < now]:
            del self._waiting[nonce]
        nonce = secrets.token_urlsafe(24)
        self._waiting[nonce] = (now + REVEAL_TTL, user_id, raw)
        return nonce

    def take(self, nonce: str, user_id: int) -> str | None:
        found = self._waiting.pop(nonce, None)
        if found is None or found[0] < self._clock() or found[1] != user_id:
            return None
        return found[2]

    async def keep(self, user_id: int, raw: str) -> str:
        """Keep `raw` to be shown once to `user_id`; the nonce the session holds for it."""
        if self.shared is not None:
            nonce = secrets.token_urlsafe(24)
            try:
                await self.shared.put(nonce, user_id, raw, REVEAL_TTL)
                return nonce
            except Exception as exc:  # shown by this broker only, rather than never
                log.error(
                    "cannot keep a new key in Redis; only this broker shows it", error=str(exc)
                )
        return self.put(user_id, raw)

    async def claim(self, nonce: str, user_id: int) -> str | None:
        """The key waiting under `nonce` for `user_id`, taken: it is not shown again."""
        if self.shared is not None and nonce not in self._waiting:
            try:
                found = await self.shared.take(nonce)
            except Exception as exc:
                log.error("cannot take a new key from Redis", error=str(exc))
                return None
            return found[1] if found is not None and found[0] == user_id else None
        return self.take(nonce, user_id)


REVEALS = web.AppKey("reveals", Reveals)
