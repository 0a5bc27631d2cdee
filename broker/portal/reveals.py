"""New raw API keys waiting to be shown once, in the broker's memory only."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from aiohttp import web

REVEAL_TTL = 300.0


class Reveals:
    """New raw keys waiting to be shown once, in this process's memory only.

    The session cookie carries a random nonce, never the key: the key is gone once shown
    (or after five minutes), so a copied cookie cannot show it again.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[str, tuple[float, int, str]] = {}

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


REVEALS = web.AppKey("reveals", Reveals)
