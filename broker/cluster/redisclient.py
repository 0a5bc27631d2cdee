"""The cluster's Redis client: one connection pool per broker process (redis-py's asyncio client).

The pool blocks: when all its connections are in use, a command waits for one (`POOL_WAIT`).

redis-py is an optional dependency (`remotellm[cluster]`), imported only here and only in
cluster mode. Every command has a short timeout, so a Redis that stops answering costs a
request a bounded wait (and the failure policy of what asked, see docs/cluster.md) instead
of hanging it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from redis.asyncio import Redis

SOCKET_TIMEOUT: Final = 1.0
"""Seconds one command may take before it fails (and the caller's failure policy applies)."""
CONNECT_TIMEOUT: Final = 1.0
HEALTH_CHECK_INTERVAL: Final = 10
MAX_CONNECTIONS: Final = 64
"""Connections of the pool, the pub/sub ones (held while subscribed) among them."""
POOL_WAIT: Final = 1.0
"""Seconds a command waits for a connection of the pool when all are in use; after that it
fails as when Redis does not answer. A burst waits its turn instead of failing at once."""


class RedisMissing(RuntimeError):
    """Cluster mode was asked for, but redis-py is not installed."""


def open_redis(url: str) -> Redis:
    """A client on a connection pool for `url`; it connects on its first command."""
    try:
        from redis.asyncio import BlockingConnectionPool, Redis
    except ImportError as exc:  # pragma: no cover - the dev environment always has it
        raise RedisMissing(
            "cluster mode (--redis-url) needs redis-py: pip install 'remotellm[cluster]'"
        ) from exc
    # Blocking: the 65th command at once waits for a free connection (up to POOL_WAIT)
    # instead of failing, which the limits would take for an unreachable Redis.
    pool = BlockingConnectionPool.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT,
        decode_responses=False,
    )
    return Redis.from_pool(pool)
