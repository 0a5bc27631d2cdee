"""Who is calling: API keys from the store and from the settings, resolved to a Principal.

A key's owner and state are cached for `ttl` seconds (1 s by default) so a request
costs no database round trip; the portal and admin pages clear the cache when they
revoke or block (`broker.changes`, on every broker of a cluster), and changes made by
the admin CLI in another process take effect within `ttl` (at once in a cluster, when
the command is given its Redis).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from broker.accounts import keyformat
from broker.accounts.credentials import Credentials
from broker.accounts.store import Store


@dataclass(frozen=True)
class Limits:
    """Per-key limits; 0 means unlimited. `models` None means every model."""

    rpm: int = 0
    concurrency: int = 0
    daily_tokens: int = 0
    models: frozenset[str] | None = None


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key."""

    bucket: str  # what limits are counted against: one per key
    limits: Limits
    key_id: int | None = None  # None for keys given in the settings
    user_id: int | None = None
    username: str | None = None
    display_name: str | None = None

    @property
    def relayed(self) -> tuple[str, str]:
        """Who the connector is told sent a request: a user id and a display name (never the
        key). A key from the settings has no user: its id is the fixed `configured`."""
        name = self.display_name or self.username or ""
        if self.user_id is None:
            return CONFIGURED_USER, name
        return str(self.user_id), name


CONFIGURED_USER = "configured"
"""The user id a connector is told for requests made with a key from the broker's settings."""


@dataclass(frozen=True)
class Denied:
    status: int
    code: str
    message: str


INVALID_KEY = Denied(
    401,
    "invalid_api_key",
    "The API key is missing, invalid, revoked or expired."
    " Send it as 'Authorization: Bearer <key>'.",
)
BLOCKED = Denied(
    403,
    "account_blocked",
    "This account is blocked. Ask the operator of this RemoteLLM broker to unblock it.",
)

_MAX_CACHED = 10_000


class Accounts:
    def __init__(
        self,
        store: Store | None,
        configured: Credentials,
        defaults: Limits,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.configured = configured
        self.defaults = defaults
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | Denied]] = {}
        self._configured: dict[str, Principal] = {}

    def forget(self) -> None:
        """Drop every cached key, so a revocation or a block counts from the next request."""
        self._cache.clear()

    def authenticate_now(self, presented: str | None) -> Principal | Denied | None:
        """`authenticate` when no look-up in the store is needed (a key from the settings, a
        cached one, one that is malformed); None when only the store can tell."""
        if not presented:
            return INVALID_KEY
        if self.configured.accepts(presented):
            bucket = "cfg:" + keyformat.fingerprint(presented)[:16]
            known = self._configured.get(bucket)
            if known is None:
                known = Principal(bucket=bucket, limits=self.defaults, username="(configured key)")
                self._configured[bucket] = known
            return known
        if self.store is None or not keyformat.well_formed(presented):
            return INVALID_KEY  # a typo fails the checksum without a look-up
        cached = self._cache.get(keyformat.fingerprint(presented))
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        return None

    async def authenticate(self, presented: str | None) -> Principal | Denied:
        known = self.authenticate_now(presented)
        if known is not None:
            return known
        assert presented is not None  # authenticate_now answers a missing key itself
        fingerprint = keyformat.fingerprint(presented)
        now = self._clock()
        result = await self._resolve(fingerprint)
        if result is INVALID_KEY:
            return result  # unknown keys are not cached: guessing cannot fill the cache
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[fingerprint] = (now + self.ttl, result)
        return result

    async def _resolve(self, fingerprint: str) -> Principal | Denied:
        assert self.store is not None
        found = await self.store.key_owner(fingerprint)
        if found is None:
            return INVALID_KEY
        key, user = found
        if not key.usable(time.time()):
            return INVALID_KEY
        if user.blocked:
            return BLOCKED
        base = self.defaults
        limits = Limits(
            rpm=user.rpm if user.rpm is not None else base.rpm,
            concurrency=user.concurrency if user.concurrency is not None else base.concurrency,
            daily_tokens=user.daily_tokens if user.daily_tokens is not None else base.daily_tokens,
            models=frozenset(user.models) if user.models is not None else base.models,
        )
        return Principal(
            bucket=f"key:{key.id}",
            limits=limits,
            key_id=key.id,
            user_id=user.id,
            username=user.username,
            display_name=user.name or None,
        )
