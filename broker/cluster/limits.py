"""Per-key limits counted in Redis, so they hold exactly across every instance of a cluster.

`SharedLimiter` has the interface of the single-process `broker.accounts.limits.Limiter`
(`KeyLimiter`): admission is one EVALSHA of `broker.cluster.limitscript.ADMIT`, which checks
the key's requests per minute (an exact sliding 60 s window), its concurrency (leases in
flight) and its tokens today (UTC) and records the start and the lease, atomically, on
Redis's clock. A key without limits costs no Redis call at all. Releasing a lease never
waits: it is queued, and sent by a background task at once (or carried by this instance's
next admission of the same key, whichever goes first); a key with only a requests-per-minute
limit has nothing to release.

Leases expire `LEASE_TTL` seconds after their last refresh; this instance refreshes the ones
it holds every `REFRESH_EVERY` seconds (pipelined), so the slots of an instance that died
(kill -9) free themselves within `LEASE_TTL`, however long its requests would have run.

When Redis does not answer, every limit falls back to this instance's own `Limiter` (a fresh
one each time, so today's tokens are read again from the shared store): service goes on,
each limit at worst `limit x instances`. The change is logged once each way, shown in
/readyz (`"limits": "local"`), and Redis is tried again every `PROBE_EVERY` seconds until it
answers; then counting is shared again. The tokens the fallback's leases used are queued
and added to Redis's daily counter then. See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.accounts.limits import (
    Lease,
    Limiter,
    Rejection,
    TokensSince,
    concurrency_refusal,
    daily_refusal,
    rate_refusal,
    unlimited,
)
from broker.accounts.principals import Principal
from broker.cluster.limitscript import ADMIT, REFRESH, RELEASE

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("remotellm.broker.cluster")

LEASE_TTL: Final = 15.0
"""Seconds a lease lives after its last refresh: how long a dead instance's slots stay taken."""
REFRESH_EVERY: Final = 5.0
RECHECK: Final = 0.05
"""Seconds before a key found at its concurrency limit is looked at once more."""
REFRESH_CHUNK: Final = 500
"""Keys whose leases one pipeline refreshes."""
PROBE_EVERY: Final = 1.0
"""Seconds between tries of an unreachable Redis."""
CLOSE_WITHIN: Final = 2.0
"""Seconds the releases still queued at shutdown get to reach Redis."""
MAX_PENDING: Final = 100_000
"""Releases kept while Redis is unreachable; beyond, the oldest are dropped (their leases
expire by themselves; their tokens are in the store's usage rows)."""

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def redis_keys(bucket: str) -> list[str]:
    """A key's starts, leases, token counter and releases counted: one hash slot (the
    `{bucket}` tag)."""
    base = f"remotellm:lim:{{{bucket}}}"
    return [f"{base}:starts", f"{base}:leases", f"{base}:tokens", f"{base}:applied"]


@dataclass
class _Returns:
    """Releases of one key not yet sent to Redis: lease ids, and tokens by release id (a
    release sent twice, its first sending's outcome unknown, counts once)."""

    ids: list[str] = field(default_factory=list)
    tokens: list[tuple[str, int]] = field(default_factory=list)

    def args(self) -> list[Any]:
        pairs = [part for pair in self.tokens for part in pair]
        return [len(self.tokens), *pairs, *self.ids]


class _FallbackLease(Lease):
    """A lease of the local fallback: its tokens are also queued for Redis's daily counter,
    sent when Redis answers again."""

    def __init__(self, lease: Lease, limiter: SharedLimiter, bucket: str) -> None:
        super().__init__(None)
        self._lease = lease
        self._limiter = limiter
        self._key = bucket
        self._done = False

    def release(self, tokens: int = 0) -> None:
        if self._done:
            return
        self._done = True
        self._lease.release(tokens)
        self._limiter.give_back(self._key, None, tokens)


class SharedLease(Lease):
    """A lease counted in Redis: `release` queues its return (it never waits)."""

    def __init__(
        self, limiter: SharedLimiter, bucket: str, lease_id: str | None, counts_tokens: bool
    ) -> None:
        super().__init__(None)
        self._limiter = limiter
        self._key = bucket
        self._id = lease_id
        self._counts_tokens = counts_tokens
        self._done = False

    def release(self, tokens: int = 0) -> None:
        if self._done:
            return
        self._done = True
        # Nothing to send for a key with neither a concurrency nor a daily token limit.
        self._limiter.give_back(self._key, self._id, tokens if self._counts_tokens else 0)


class SharedLimiter:
    """Every key's limits, counted in Redis across the cluster (see the module's docstring)."""

    def __init__(
        self,
        redis: Redis,
        tokens_since: TokensSince | None = None,
        *,
        lease_ttl: float = LEASE_TTL,
        refresh_every: float = REFRESH_EVERY,
        probe_every: float = PROBE_EVERY,
        recheck: float = RECHECK,
        local: Callable[[], Limiter] | None = None,
    ) -> None:
        self._redis = redis
        self._tokens_since = tokens_since
        self._ttl_ms = int(lease_ttl * 1000)
        self._refresh_every = refresh_every
        self._probe_every = probe_every
        self._recheck = recheck
        self._new_local = local or (lambda: Limiter(tokens_since))
        self._local = self._new_local()
        self._admit = redis.register_script(ADMIT)
        self._release = redis.register_script(RELEASE)
        self._refresh = redis.register_script(REFRESH)
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        self._held: dict[str, set[str]] = {}
        """Lease ids this instance holds, by key: refreshed until released."""
        self._pending: dict[str, _Returns] = {}
        self._queued = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.shared = True

    # The request path.

    def admit_now(self, who: Principal) -> Lease | Rejection | None:
        """A key without limits is admitted here; any other needs Redis: None."""
        return Lease(None) if unlimited(who) else None

    async def admit(self, who: Principal) -> Lease | Rejection:
        if unlimited(who):
            return Lease(None)
        if self.shared:
            try:
                return await self._admit_shared(who)
            except UNREACHABLE as exc:
                self._lost(exc)
        answer = await self._local.admit(who)
        if isinstance(answer, Lease) and who.limits.daily_tokens:
            return _FallbackLease(answer, self, who.bucket)
        return answer

    async def _admit_shared(self, who: Principal) -> Lease | Rejection:
        verdict, value = await self._ask(who)
        if verdict == "concurrency":
            # The lease of a request that just ended on another instance may be a moment
            # from Redis (released after its answer): look once more before refusing.
            await asyncio.sleep(self._recheck)
            verdict, value = await self._ask(who)
        limits = who.limits
        if verdict == "ok":
            return self._granted(who, value)
        wait = max(1, value)
        if verdict == "rpm":
            return rate_refusal(limits.rpm, wait)
        if verdict == "concurrency":
            return concurrency_refusal(limits.concurrency)
        return daily_refusal(limits.daily_tokens, wait)

    def _granted(self, who: Principal, lease_number: int) -> SharedLease:
        lease_id = f"{self._prefix}:{lease_number}"
        held = lease_id if who.limits.concurrency else None
        if held is not None:
            self._held.setdefault(who.bucket, set()).add(held)
        return SharedLease(self, who.bucket, held, bool(who.limits.daily_tokens))

    async def _ask(self, who: Principal) -> tuple[str, int]:
        """Run the admission script: its verdict, and the seconds to wait (or, admitted,
        the number of the lease it recorded)."""
        limits, bucket = who.limits, who.bucket
        number = next(self._ids)
        lease_id = f"{self._prefix}:{number}"
        seed_day, seed = "", 0
        while True:
            returns = self._take(bucket)
            args: list[Any] = [
                limits.rpm,
                limits.concurrency,
                limits.daily_tokens,
                lease_id,
                self._ttl_ms,
                seed_day,
                seed,
                *returns.args(),
            ]
            try:
                reply = await self._admit(keys=redis_keys(bucket), args=args)
            except BaseException:
                # Not run, or run with its answer lost (timed out, cancelled): send the
                # releases again (their tokens count once), and give back what it may have
                # recorded, or the slot would stay taken until the lease expires. The lease id
                # goes in as a release id too: should the admission reach Redis after the
                # give-back, it finds the id there and records nothing.
                self._requeue(bucket, returns)
                self._requeue(bucket, _Returns([lease_id], [(lease_id, 0)]))
                self._wake.set()
                raise
            verdict, value = reply[0].decode(), int(reply[1])
            if verdict == "ok":
                return verdict, number
            if verdict != "seed":
                return verdict, value
            # Today's counter is absent: read the day's usage from the store (which may
            # raise, as with the local limiter) and ask again with it.
            seed_day, seed = str(value // 86400), await self._used_since(who, value)

    async def _used_since(self, who: Principal, since: float) -> int:
        if who.key_id is None or self._tokens_since is None:
            return 0
        return await self._tokens_since(who.key_id, since)

    def give_back(self, bucket: str, lease_id: str | None, tokens: int) -> None:
        """Queue a lease's return (and its tokens) for the background sender."""
        if lease_id is not None:
            held = self._held.get(bucket)
            if held is not None:
                held.discard(lease_id)
                if not held:
                    del self._held[bucket]
        if lease_id is None and tokens <= 0:
            return
        counted = [(f"{self._prefix}:r{next(self._ids)}", tokens)] if tokens > 0 else []
        self._requeue(bucket, _Returns([lease_id] if lease_id else [], counted))
        self._wake.set()

    def _take(self, bucket: str) -> _Returns:
        """The key's releases not yet sent, no longer queued."""
        returns = self._pending.pop(bucket, None) or _Returns()
        self._queued -= len(returns.ids) + len(returns.tokens)
        return returns

    def _requeue(self, bucket: str, returns: _Returns) -> None:
        if not returns.ids and not returns.tokens:
            return
        if self._queued >= MAX_PENDING:
            return  # Redis long gone: the lease expires by itself
        pending = self._pending.setdefault(bucket, _Returns())
        pending.ids.extend(returns.ids)
        pending.tokens.extend(returns.tokens)
        self._queued += len(returns.ids) + len(returns.tokens)

    # Reachability.

    def _lost(self, exc: BaseException) -> None:
        if not self.shared:
            return
        self.shared = False
        self._local = self._new_local()  # today's tokens read again from the store
        log.warning(
            "Redis unreachable: limits are counted by this instance alone until it answers",
            error=type(exc).__name__,
        )
        self._wake.set()

    def _back(self) -> None:
        if self.shared:
            return
        self.shared = True
        log.info("Redis answers again: limits are counted across the cluster")
        self._wake.set()

    # Background work, started and stopped by the app's cleanup context.

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_returns(), name="limits-returns"),
            asyncio.create_task(self._keep(), name="limits-keeper"),
        ]

    async def close(self) -> None:
        """Stop the background work, sending the releases still queued (bounded by the
        client's timeouts) so none is lost on a normal shutdown."""
        tasks, self._tasks = self._tasks, []
        self._closing = True
        self._wake.set()
        for task in tasks:
            while not task.done():
                # Cancelled again until it ends: on Python 3.11 a cancel that lands as
                # redis-py's read timeout expires can come out as that TimeoutError, which
                # the loops take for an unreachable Redis and go on.
                task.cancel()
                await asyncio.wait([task], timeout=0.5)
            if not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        if self.shared:
            with contextlib.suppress(*UNREACHABLE, RedisError):
                async with asyncio.timeout(CLOSE_WITHIN):
                    await self._flush()

    async def _send_returns(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if not self.shared:
                continue  # the keeper wakes us when Redis is back
            try:
                await self._flush()
            except UNREACHABLE as exc:
                self._lost(exc)

    async def _flush(self) -> None:
        while self._pending:
            bucket = next(iter(self._pending))
            returns = self._take(bucket)
            try:
                await self._release(keys=redis_keys(bucket), args=returns.args())
            except UNREACHABLE:
                self._requeue(bucket, returns)
                raise
            except RedisError as exc:
                # Redis answered with an error (out of memory, say): not sent again, or it
                # would be sent for ever; the leases expire by themselves.
                log.error("cannot give leases back to Redis", error=str(exc))

    async def _keep(self) -> None:
        """Probe Redis while it is unreachable; refresh the leases held while it answers."""
        since_refresh = 0.0
        while not self._closing:
            await asyncio.sleep(self._probe_every)
            since_refresh += self._probe_every
            try:
                if not self.shared:
                    await self._redis.ping()
                    self._back()
                elif since_refresh >= self._refresh_every:
                    since_refresh = 0.0
                    await self._refresh_held()
            except UNREACHABLE as exc:
                self._lost(exc)
            except RedisError as exc:
                log.error("cannot refresh leases in Redis", error=str(exc))

    async def _refresh_held(self) -> None:
        """Push back the expiry of every lease held here: one pipeline (a SCRIPT EXISTS,
        then one EVALSHA per key holding leases) per `REFRESH_CHUNK` keys. Holding none, a
        PING, so an instance no limited request reached still learns that Redis went away
        (and says so in /readyz) instead of showing `shared` until its next request."""
        held = [(bucket, list(ids)) for bucket, ids in self._held.items() if ids]
        if not held:
            await self._redis.ping()
            return
        for start in range(0, len(held), REFRESH_CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket, ids in held[start : start + REFRESH_CHUNK]:
                    await self._refresh(
                        keys=redis_keys(bucket)[1:2], args=[self._ttl_ms, *ids], client=pipe
                    )
                await pipe.execute()
