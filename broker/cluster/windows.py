"""Sliding-window counts of attempts shared by a cluster's brokers (pairing's rate limits).

One sorted set per counted key, `remotellm:pairlim:<name>:<key>`, holding the attempts'
times; one Lua script per attempt drops those out of the window, counts the rest and adds
this one when under the limit, atomically, so N brokers together allow what one would.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from redis.asyncio import Redis

PREFIX: Final = "remotellm:pairlim:"

_ATTEMPT: Final = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return false
"""


class RedisWindows:
    """Attempts counted in Redis, for every broker of the cluster at once."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_ATTEMPT)

    async def attempt(
        self, name: str, key: str, limit: int, window: float, now: float
    ) -> int | None:
        """Count an attempt under `key`: None when allowed, else the seconds to wait."""
        oldest = await self._script(
            keys=[f"{PREFIX}{name}:{key}"],
            args=[repr(now), repr(window), limit, f"{now!r}:{secrets.token_hex(4)}"],
        )
        if oldest is None:
            return None
        return max(1, math.ceil(float(oldest) + window - now))
