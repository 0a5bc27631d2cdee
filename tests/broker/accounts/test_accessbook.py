"""Who may use a connector: the rule values and their tables through the store (SQLite here;
`test_store_postgres` runs the same checks on PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.accounts.access import EVERYONE, AccessError, AccessRule, clean_groups, group_matches
from broker.accounts.store import Store
from broker.relay.gates import admitted, gate_for
from tests.conftest import MEMORY_STORE


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    opened = await Store.open(MEMORY_STORE)
    yield opened
    await opened.close()


async def exercise_access(store: Store) -> None:
    """Rules kept and replaced, groups recorded, and what the relay makes of them."""
    owner = await store.create_user("olga")
    bob = await store.create_user("bob")
    carol = await store.create_user("carol")
    _, token = await store.create_connector_token("gpu", owner.id)
    _, unowned = await store.create_connector_token("lab")
    assert await store.access.rule(token.id) == EVERYONE
    assert await admitted(store, [token.id, unowned.id]) == {token.id: None, unowned.id: None}

    await store.access.set_rule(token.id, AccessRule("users", users=(bob.id,)))
    assert await store.access.rule(token.id) == AccessRule("users", users=(bob.id,))
    assert await admitted(store, [token.id]) == {token.id: frozenset({owner.id, bob.id})}

    await store.access.set_rule(token.id, AccessRule("owner"))
    await store.access.set_rule(unowned.id, AccessRule("owner"))
    assert await admitted(store, [token.id, unowned.id]) == {
        token.id: frozenset({owner.id}),
        unowned.id: frozenset(),  # no owner: nobody
    }

    await store.access.set_groups(bob.id, ["org", "Org", "other"])
    await store.access.set_groups(carol.id, ["org/other"])
    assert await store.access.groups(bob.id) == ("Org", "org", "other")
    await store.access.set_rule(token.id, AccessRule("groups", groups=("org/gpu",)))
    assert await store.access.rules([token.id]) == {
        token.id: AccessRule("groups", groups=("org/gpu",))
    }
    assert await admitted(store, [token.id]) == {token.id: frozenset({owner.id, bob.id})}
    # A path too long to keep is dropped, not cut into what could be another group's name.
    await store.access.set_groups(bob.id, ["org/" + "g" * 300, "short"])
    assert await store.access.groups(bob.id) == ("short",)
    await store.access.set_groups(bob.id, [])
    assert await store.access.groups(bob.id) == ()
    assert await admitted(store, [token.id]) == {token.id: frozenset({owner.id})}

    await store.access.set_rule(token.id, EVERYONE)  # back to the default: no row
    assert await store.access.rules([token.id, unowned.id]) == {unowned.id: AccessRule("owner")}


async def test_access_rules_and_groups_in_the_store(store: Store) -> None:
    await exercise_access(store)


def test_a_rule_is_checked_when_made() -> None:
    with pytest.raises(AccessError, match="at least one group"):
        AccessRule("groups")
    with pytest.raises(AccessError, match="at least one user"):
        AccessRule("users")
    with pytest.raises(AccessError, match="at most 255 characters"):
        AccessRule("groups", groups=("g" * 256,))
    with pytest.raises(AccessError, match="at most 200"):
        AccessRule("users", users=tuple(range(201)))
    with pytest.raises(AccessError, match="unknown access mode"):
        AccessRule("friends")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "user", "groups", "expected"),
    [
        (EVERYONE, None, (), True),
        (EVERYONE, 5, (), True),
        (AccessRule("owner"), 1, (), True),
        (AccessRule("owner"), 5, (), False),
        (AccessRule("owner"), None, (), False),
        (AccessRule("users", users=(5,)), 5, (), True),
        (AccessRule("users", users=(5,)), 6, (), False),
        (AccessRule("users", users=(5,)), 1, (), True),  # the owner, always
        (AccessRule("groups", groups=("org/gpu",)), 5, ("org",), True),
        (AccessRule("groups", groups=("org/gpu",)), 5, ("ORG/GPU",), True),
        (AccessRule("groups", groups=("org/gpu",)), 5, ("org/gpu/sub",), False),
        (AccessRule("groups", groups=("org/gpu",)), 5, ("org/gpu2",), False),
        (AccessRule("groups", groups=("org",)), 5, ("org/other",), False),
    ],
)
def test_who_a_rule_admits(
    rule: AccessRule, user: int | None, groups: tuple[str, ...], expected: bool
) -> None:
    assert rule.admits(user, 1, groups) is expected


def test_group_paths_are_cleaned_and_matched_without_case() -> None:
    assert clean_groups([" org/gpu/ ", "", "org/gpu", "lab"]) == ("org/gpu", "lab")
    assert group_matches("Org", ["org/gpu"]) and not group_matches("org/gp", ["org/gpu"])


def test_a_gate_puts_the_rule_and_the_connectors_block_list_together() -> None:
    assert gate_for(None, ()) is None  # open to all: no gate, no look-up per request
    blocking = gate_for(None, ("7", "configured"))
    assert blocking is not None
    assert not blocking.admits(7) and blocking.admits(8) and not blocking.admits("cfg:abc")
    assert blocking.blocks(7) and blocking.blocks("cfg:abc") and not blocking.blocks(8)
    owner_only = gate_for(frozenset({1}), ())
    assert owner_only is not None
    assert owner_only.admits(1) and not owner_only.admits(2) and not owner_only.admits("cfg:x")
    assert not owner_only.blocks(2)
    # Ids that are not plain ASCII digits name nobody (and break nothing).
    assert gate_for(None, ("²", "٣", "x")) is None
    both = gate_for(frozenset({1, 2}), ("2",))
    assert both is not None and both.admits(1) and not both.admits(2)
