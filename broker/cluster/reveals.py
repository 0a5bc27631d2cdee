"""New raw API keys waiting to be shown once, in Redis, so any broker of a cluster shows them.

`remotellm:reveal:<nonce>` holds the key, encrypted with a key derived from the cluster
secret (so Redis alone, or a copy of its memory, does not give it away), for at most
`REVEAL_TTL` seconds; GETDEL takes it, so it is shown once across the whole cluster. The
session cookie holds only the nonce.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from cryptography.fernet import Fernet, InvalidToken

from broker.cluster.derivedkey import derived_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

PREFIX: Final = "remotellm:reveal:"


class RedisReveals:
    """The raw keys waiting to be shown, shared by the cluster's brokers."""

    def __init__(self, redis: Redis, cluster_secret: str) -> None:
        self._redis = redis
        self._fernet = Fernet(derived_key(cluster_secret, "key reveals"))

    async def put(self, nonce: str, user_id: int, raw: str, ttl: float) -> None:
        sealed = self._fernet.encrypt(json.dumps({"user": user_id, "key": raw}).encode())
        await self._redis.set(PREFIX + nonce, sealed, ex=max(1, int(ttl)))

    async def take(self, nonce: str) -> tuple[int, str] | None:
        """The user and key waiting under `nonce`, taken (no broker shows it again)."""
        sealed = await self._redis.getdel(PREFIX + nonce)
        if sealed is None:
            return None
        try:
            found = json.loads(self._fernet.decrypt(sealed))
        except (InvalidToken, ValueError):
            return None  # written with another cluster secret
        return int(found["user"]), str(found["key"])
