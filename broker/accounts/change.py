"""What changed in accounts and connectors, by ids only (never a key or a secret), and who
is told of it.

Made by the portal, the admin pages and the admin CLI; applied to a broker's memory by
`broker.changes.Changes`, and passed to the cluster's other brokers by a `Publisher`
(`broker.cluster.events`; in a single broker, nobody: `NO_PUBLISHER`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyRevoked:
    """An API key was revoked: cached keys are read again."""

    key_id: int


@dataclass(frozen=True, slots=True)
class UserChanged:
    """A user was blocked or unblocked, or their limits or models changed."""

    user_id: int


@dataclass(frozen=True, slots=True)
class ConnectorRevoked:
    """A connector token was revoked: its links are shut out."""

    token_id: int


@dataclass(frozen=True, slots=True)
class AccessChanged:
    """A connector's access rule changed (`token_id`), or a user's groups did (None)."""

    token_id: int | None = None


Change = KeyRevoked | UserChanged | ConnectorRevoked | AccessChanged

KINDS: dict[str, type[Change]] = {
    "key_revoked": KeyRevoked,
    "user_changed": UserChanged,
    "connector_revoked": ConnectorRevoked,
    "access_changed": AccessChanged,
}
NAMES: dict[type[Change], str] = {kind: name for name, kind in KINDS.items()}


class Publisher(Protocol):
    """Tells the other brokers of a cluster about a change this one made."""

    async def publish(self, change: Change) -> None: ...

    @property
    def hearing(self) -> bool | None:
        """Whether changes made elsewhere reach this broker now (None: there is no elsewhere)."""
        ...


class _NoPublisher:
    """A single broker: there is nobody else to tell."""

    async def publish(self, change: Change) -> None:
        return None

    @property
    def hearing(self) -> bool | None:
        return None


NO_PUBLISHER: Publisher = _NoPublisher()
