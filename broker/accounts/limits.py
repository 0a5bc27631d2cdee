"""Per-key limits: requests per minute, concurrent requests, tokens per UTC day.

`Limiter` counts in this broker process. In cluster mode (`--redis-url`) the broker counts
with `broker.cluster.limits.SharedLimiter` instead, which keeps the same interface
(`KeyLimiter`) and counts in Redis, exactly across instances. Tokens are known only when a
response ends, so the request that crosses the daily limit finishes and the next one gets
429 until midnight UTC.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker.accounts.principals import Denied, Principal

DAY = 86400.0
WINDOW = 60.0

TokensSince = Callable[[int, float], Awaitable[int]]


@dataclass
class _Bucket:
    starts: deque[float] = field(default_factory=deque)
    active: int = 0
    day: float = -1.0
    tokens: int = 0


@dataclass(frozen=True)
class Rejection:
    denied: Denied
    retry_after: int


class Lease:
    """One admitted request: release it when the request ends, with the tokens it used."""

    def __init__(self, bucket: _Bucket | None) -> None:
        self._bucket = bucket
        self._released = False

    def release(self, tokens: int = 0) -> None:
        if self._released or self._bucket is None:
            return
        self._released = True
        self._bucket.active -= 1
        self._bucket.tokens += tokens


class KeyLimiter(Protocol):
    """What admission asks of the limits, whichever counts them (this process or Redis)."""

    shared: bool
    """Counted across the cluster (in Redis) right now; False when counted in this process."""

    async def admit(self, who: Principal) -> Lease | Rejection:
        """A lease for one request of `who`, or why it is refused."""
        ...

    def admit_now(self, who: Principal) -> Lease | Rejection | None:
        """`admit` when the answer needs no waiting; None (nothing changed) otherwise."""
        ...


def unlimited(who: Principal) -> bool:
    """The key has no rpm, concurrency or daily token limit."""
    limits = who.limits
    return not (limits.rpm or limits.concurrency or limits.daily_tokens)


def day_start(wall: float) -> float:
    """The start of the UTC day holding the time `wall`."""
    return math.floor(wall / DAY) * DAY


def rate_refusal(rpm: int, wait: int) -> Rejection:
    message = f"Rate limit reached: {rpm} requests per minute for this key. Retry in {wait} s."
    return Rejection(Denied(429, "rate_limit_exceeded", message), wait)


def concurrency_refusal(concurrency: int) -> Rejection:
    return Rejection(
        Denied(
            429,
            "concurrency_limit_exceeded",
            f"Too many requests at once: this key may have {concurrency} in"
            " flight. Retry when one has finished.",
        ),
        1,
    )


def daily_refusal(daily_tokens: int, wait: int) -> Rejection:
    return Rejection(
        Denied(
            429,
            "daily_token_limit_exceeded",
            f"This key has used its {daily_tokens} tokens for today (UTC)."
            f" The limit resets in {wait} s.",
        ),
        wait,
    )


class Limiter:
    """Counts every key's limits in this process."""

    shared = False

    def __init__(
        self,
        tokens_since: TokensSince | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._tokens_since = tokens_since
        self._clock = clock
        self._wall = wall
        self._buckets: dict[str, _Bucket] = {}

    async def admit(self, who: Principal) -> Lease | Rejection:
        while True:
            admitted = self.admit_now(who)
            if admitted is not None:
                return admitted
            # Today's tokens for this key are not known yet: ask the store (which may raise).
            await self._load_tokens(who, self._buckets[who.bucket])

    def admit_now(self, who: Principal) -> Lease | Rejection | None:
        """`admit` when it needs no store: None while the key's tokens for today are unknown."""
        limits = who.limits
        if unlimited(who):
            return Lease(None)
        bucket = self._buckets.setdefault(who.bucket, _Bucket())
        if limits.daily_tokens:
            wall = self._wall()
            day = day_start(wall)
            if bucket.day != day:
                return None
            if bucket.tokens >= limits.daily_tokens:
                return daily_refusal(limits.daily_tokens, max(1, math.ceil(day + DAY - wall)))
        now = self._clock()
        if limits.rpm and (rejection := _over_rate(limits.rpm, bucket, now)) is not None:
            return rejection
        if limits.concurrency and bucket.active >= limits.concurrency:
            return concurrency_refusal(limits.concurrency)
        if limits.rpm:
            bucket.starts.append(now)
        bucket.active += 1
        return Lease(bucket)

    async def _load_tokens(self, who: Principal, bucket: _Bucket) -> None:
        """Load the tokens the key has used today (UTC) into its bucket."""
        day = day_start(self._wall())
        used = 0
        if who.key_id is not None and self._tokens_since is not None:
            used = await self._tokens_since(who.key_id, day)  # may raise: then retried
        if bucket.day != day:  # another request may have loaded it meanwhile
            bucket.day = day
            bucket.tokens = used


def _over_rate(rpm: int, bucket: _Bucket, now: float) -> Rejection | None:
    """The refusal of one more request in the key's sliding minute, if it has had `rpm`."""
    starts = bucket.starts
    while starts and starts[0] <= now - WINDOW:
        starts.popleft()
    if len(starts) < rpm:
        return None
    return rate_refusal(rpm, max(1, math.ceil(starts[0] + WINDOW - now)))
