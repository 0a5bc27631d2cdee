"""Whether a connector admits a user: its owner's rule and its own block list, as one gate.

The hub asks a link's `gate` for every request it routes, so the question is a set look-up:
the owner's rule (`broker.accounts.access`) is turned into the set of user ids it admits when
the rule, a user's groups or the connected connectors change (`refresh`, also every few
seconds, so changes made in another process count), and the connector's own block list
(its hello and BLOCKED frames) is taken out of it. A link without a gate admits everyone.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from broker.accounts.access import EVERYONE, AccessRule, group_matches
from broker.accounts.principals import CONFIGURED_USER
from broker.accounts.store import Store


@dataclass(frozen=True, slots=True)
class Gate:
    """Who one connector admits, ready for the hub's look-ups."""

    admitted: frozenset[int] | None
    """The user ids admitted; None: every user of the broker."""
    blocked: frozenset[int]
    """User ids the connector itself refuses."""
    configured: bool
    """Keys from the broker's settings (they have no user) are admitted."""

    def admits(self, user: Hashable) -> bool:
        """Whether the hub's `user` (a user id, or a settings key's bucket) may be sent here."""
        if type(user) is not int:
            return self.configured
        if user in self.blocked:
            return False
        admitted = self.admitted
        return admitted is None or user in admitted

    def blocks(self, user: Hashable) -> bool:
        """Whether the connector refuses `user` by its own block list."""
        if type(user) is not int:
            return not self.configured and self.admitted is None
        return user in self.blocked


Refusal = Literal["refused", "blocked"]
"""Why no connector serving a model admits a user: its owner's rule, or its own block list."""


class Gated(Protocol):
    """A connector as the gates see it: what it serves, and who it admits."""

    @property
    def models(self) -> frozenset[str]: ...

    @property
    def gate(self) -> Gate | None: ...


def reachable(links: Iterable[Gated], user: Hashable) -> set[str] | None:
    """The models the connectors admitting `user` serve; None when every connector admits
    everyone (then all of them: nothing to work out)."""
    links = list(links)
    if all(link.gate is None for link in links):
        return None
    found: set[str] = set()
    for link in links:
        gate = link.gate
        if gate is None or gate.admits(user):
            found |= link.models
    return found


def refusal(gates: Sequence[Gate | None], user: Hashable) -> Refusal | None:
    """Why the connectors with these `gates` (those serving a model) do not admit `user`:
    `blocked` when one of them blocks the user itself, else `refused` (their owners' rules);
    None when one admits them, or there are none."""
    if not gates or any(gate is None or gate.admits(user) for gate in gates):
        return None
    if any(gate is not None and gate.blocks(user) for gate in gates):
        return "blocked"
    return "refused"


def gate_for(admitted: frozenset[int] | None, blocked: Iterable[str]) -> Gate | None:
    """The gate of a connector admitting `admitted` (None: everyone) minus the user ids it
    blocks itself (as it names them: numeric ids, or `configured`); None when it admits all."""
    ids = frozenset(int(user) for user in blocked if user.isascii() and user.isdigit())
    configured = admitted is None and CONFIGURED_USER not in blocked
    if admitted is None and not ids and configured:
        return None
    return Gate(admitted, ids, configured)


def admitted_ids(
    rule: AccessRule, owner_id: int | None, memberships: dict[int, tuple[str, ...]]
) -> frozenset[int] | None:
    """The user ids `rule` admits on a connector owned by `owner_id` (None: everyone)."""
    if rule.mode == "everyone":
        return None
    owner = {owner_id} if owner_id is not None else set()
    if rule.mode == "users":
        return frozenset(owner | set(rule.users))
    if rule.mode == "groups":
        members = {
            user
            for user, groups in memberships.items()
            if any(group_matches(group, rule.groups) for group in groups)
        }
        return frozenset(owner | members)
    return frozenset(owner)


async def admitted(
    store: Store, token_ids: Iterable[int], *, groups: bool = True
) -> dict[int, frozenset[int] | None]:
    """The user ids each of these connector tokens' rules admits (None: everyone); without
    `groups` (the broker does not read GitLab groups), a group rule admits the owner only."""
    wanted = set(token_ids)
    if not wanted:
        return {}
    rules = await store.access.rules(wanted)
    owners = await store.connector_owners(rules) if rules else {}
    memberships: dict[int, tuple[str, ...]] = {}
    if groups and any(rule.mode == "groups" for rule in rules.values()):
        memberships = await store.access.memberships()
    return {
        token_id: admitted_ids(rules.get(token_id, EVERYONE), owners.get(token_id), memberships)
        for token_id in wanted
    }
