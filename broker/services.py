"""Everything one broker's request path and pages depend on, in one typed object.

The app factory (`broker.app.create_app`) builds one `Services` and stores it under the app's
one key, `SERVICES`; aiohttp's handlers take it once per request (`request.app[SERVICES]`) and
hand it down, and the express lane gets it when it is made. The parts opened at start-up
(the store and what reads or writes it) are set by the app's cleanup context: asked for
before then, they raise `NotStarted`.

Lower modules (the hub, the relay, the ledger) get what they need in their constructors,
not this object, so they never import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from broker.accounts.credentials import Credentials
from broker.accounts.ledger import UsageLedger
from broker.accounts.limits import KeyLimiter
from broker.accounts.principals import Accounts
from broker.accounts.store import Store
from broker.accounts.storeprobe import StoreProbe
from broker.changes import Changes
from broker.lifecycle import Lifecycle
from broker.metrics import Metrics
from broker.relay.admission import Relay
from broker.relay.hub import Hub
from broker.settings import BrokerSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from broker.cluster.member import Member


class NotStarted(RuntimeError):
    """A part the broker opens at start-up was asked for before the app started."""


def _not_started(part: str) -> NotStarted:
    return NotStarted(f"The broker's {part} is opened when its app starts; it has not started.")


class Services:
    """One broker's dependencies: built with the app, the store's parts set once it starts."""

    __slots__ = (
        "_accounts",
        "_ledger",
        "_limiter",
        "_redis",
        "_store",
        "_store_probe",
        "changes",
        "cluster",
        "connector_tokens",
        "hub",
        "lifecycle",
        "metrics",
        "relay",
        "settings",
        "user_keys",
    )

    def __init__(
        self,
        *,
        settings: BrokerSettings,
        metrics: Metrics,
        hub: Hub,
        relay: Relay,
        lifecycle: Lifecycle,
        user_keys: Credentials,
        connector_tokens: Credentials,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.relay = relay
        """Serves relay connections: the front hands it new ones, the /relay route later
        upgrades; it holds the connectors' links."""
        self.lifecycle = lifecycle
        self.user_keys = user_keys
        """The API keys given in the settings (they work without the store)."""
        self.connector_tokens = connector_tokens
        """The connector tokens given in the settings."""
        self.changes = Changes(relay, lambda: self.accounts)
        """Applies changes to accounts and connectors here, and tells the cluster's other
        brokers (cluster mode)."""
        self._store: Store | None = None
        self._accounts: Accounts | None = None
        self._limiter: KeyLimiter | None = None
        self._ledger: UsageLedger | None = None
        self._store_probe: StoreProbe | None = None
        self._redis: Redis | None = None
        self.cluster: Member | None = None
        """This broker as a cluster member (cluster mode only): its id, internal URL, registry
        and the internal hop's client."""

    def opened(
        self,
        store: Store,
        accounts: Accounts,
        limiter: KeyLimiter,
        ledger: UsageLedger,
        store_probe: StoreProbe,
    ) -> None:
        """Set the parts opened at start-up (by the app's cleanup context)."""
        self._store = store
        self._accounts = accounts
        self._limiter = limiter
        self._ledger = ledger
        self._store_probe = store_probe

    def opened_redis(self, redis: Redis) -> None:
        """Set the cluster's Redis client (cluster mode only, at start-up)."""
        self._redis = redis

    @property
    def redis(self) -> Redis:
        """The cluster's Redis client; only in cluster mode (`--redis-url`), once started."""
        redis = self._redis
        if redis is None:
            raise _not_started("Redis client (cluster mode only)")
        return redis

    @property
    def started(self) -> bool:
        """The parts opened at start-up are here."""
        return self._store is not None

    @property
    def store(self) -> Store:
        store = self._store
        if store is None:
            raise _not_started("store")
        return store

    @property
    def accounts(self) -> Accounts:
        """Who an API key belongs to, and that user's limits."""
        accounts = self._accounts
        if accounts is None:
            raise _not_started("accounts")
        return accounts

    @property
    def limiter(self) -> KeyLimiter:
        limiter = self._limiter
        if limiter is None:
            raise _not_started("limiter")
        return limiter

    @property
    def ledger(self) -> UsageLedger:
        """Writes each finished request's usage row to the store, in batches."""
        ledger = self._ledger
        if ledger is None:
            raise _not_started("usage ledger")
        return ledger

    @property
    def store_probe(self) -> StoreProbe:
        """Whether the store answers, for /readyz (broker.api.health)."""
        probe = self._store_probe
        if probe is None:
            raise _not_started("store probe")
        return probe


SERVICES = web.AppKey("services", Services)
"""The app's one key: its `Services`."""
