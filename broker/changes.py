"""Changes to accounts and connectors that a broker's in-memory state must follow.

The portal, the admin pages and the admin CLI change the store; each broker keeps some of
it in memory (`Accounts`' one-second cache of keys, the relay's access gates, the links of
connected connectors). A `Change` names what changed (ids only, never a key or a secret),
and `Changes.made` applies it to this broker at once, then hands it to the `Publisher`:
nobody in a single broker (`NO_PUBLISHER`), every other broker of a cluster through Redis
(`broker.cluster.events`), where each one applies it the same way. `resync` reads
everything again, for when changes may have been missed (a Redis outage); `check_connectors`,
its part about connectors, is also what the broker runs every few seconds (`broker.app`).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from broker.accounts.change import (
    NO_PUBLISHER,
    AccessChanged,
    Change,
    ConnectorRevoked,
    KeyRevoked,
    Publisher,
    UserChanged,
)
from broker.accounts.principals import Accounts
from broker.relay.admission import Relay

log = structlog.get_logger("remotellm.broker")


class Changes:
    """Applies changes to this broker's memory, and passes the ones made here on."""

    def __init__(self, relay: Relay, accounts: Callable[[], Accounts]) -> None:
        self.relay = relay
        self._accounts = accounts  # opened at start-up, after this is made
        self.publisher: Publisher = NO_PUBLISHER

    async def made(self, change: Change) -> None:
        """A change made on this broker: apply it here now, and tell the others."""
        await self.apply(change)
        await self.publisher.publish(change)

    async def apply(self, change: Change, reason: str = "connector token revoked") -> None:
        """Follow one change, made here or on another broker."""
        match change:
            case KeyRevoked() | UserChanged():
                self._accounts().forget()
            case ConnectorRevoked(token_id=token_id):
                for link in list(self.relay.links):
                    if link.token_id == token_id:
                        link.shut_out(reason)
            case AccessChanged():
                await self._refresh_gates()

    async def resync(self) -> None:
        """Read everything again: keys, revoked connector tokens and access rules (changes may
        have been made where this broker did not hear of them)."""
        self._accounts().forget()
        await self.check_connectors()

    async def check_connectors(self) -> None:
        """Send away connectors whose token was revoked, and apply the access rules as the
        store has them now."""
        links = [link for link in self.relay.links if link.token_id is not None]
        if not links:
            return
        store = self._accounts().store
        if store is None:
            return
        try:
            live = await store.live_connector_ids(
                {link.token_id for link in links if link.token_id}
            )
        except Exception as exc:
            log.error("cannot check connector tokens", error=str(exc))
            return
        for link in links:
            if link.token_id not in live:
                link.shut_out("connector token revoked")
        await self._refresh_gates()

    async def _refresh_gates(self) -> None:
        try:
            # Rules changed by the admin CLI or another broker, and groups read at sign-in.
            await self.relay.refresh_gates()
        except Exception as exc:  # the periodic check reads them again within seconds
            log.error("cannot read the connectors' access rules", error=str(exc))
