"""Every typed key into the broker's aiohttp application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from broker.accounts.credentials import Credentials
from broker.accounts.ledger import UsageLedger
from broker.accounts.limits import Limiter
from broker.accounts.principals import Accounts
from broker.accounts.store import Store
from broker.lifecycle import Lifecycle
from broker.metrics import Metrics
from broker.relay.hub import Hub
from broker.settings import BrokerSettings

if TYPE_CHECKING:
    from broker.api.health import StoreProbe
    from broker.relay.admission import Relay
    from broker.relay.link import ConnectorLink

SETTINGS = web.AppKey("settings", BrokerSettings)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
USER_KEYS = web.AppKey("user_keys", Credentials)
CONNECTOR_TOKENS = web.AppKey("connector_tokens", Credentials)
LINKS: web.AppKey[set[ConnectorLink]] = web.AppKey("links")
RELAY: web.AppKey[Relay] = web.AppKey("relay")
"""Serves relay connections: the front hands it new ones, the /relay route later upgrades."""
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
STORE = web.AppKey("store", Store)
ACCOUNTS = web.AppKey("accounts", Accounts)
LIMITER = web.AppKey("limiter", Limiter)
LEDGER = web.AppKey("ledger", UsageLedger)
STORE_PROBE: web.AppKey[StoreProbe] = web.AppKey("store_probe")
"""Whether the store answers, for /readyz (broker.api.health)."""

REQUEST_IDS: web.RequestKey[dict[str, str]] = web.RequestKey("request_ids")
"""The fields that name each request in its log lines: its correlation id (`request_id`), and
its trace's (`trace_id`, when it has a valid `traceparent`)."""
