"""The pairings table through the store (SQLite here; `test_store_postgres` runs the same
checks on PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.accounts.pairingcode import code_hash
from broker.accounts.store import Store
from tests.conftest import MEMORY_STORE

T0 = 1_000_000.0


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    opened = await Store.open(MEMORY_STORE)
    yield opened
    await opened.close()


async def answer(store: Store, device: str, now: float) -> str | None:
    polled = await store.pairings.poll(code_hash(device), now)
    return polled[0] if polled is not None else None


async def exercise_pairings(store: Store) -> None:
    """A pairing's whole life, and of two approvals of one code only the first counting."""
    book = store.pairings
    user = await store.create_user("owner")
    started = await book.start(code_hash("dev"), code_hash("BCDF2345"), "gpu", "10.0.0.7", T0)
    assert (started.state, started.expires, started.interval) == ("pending", T0 + 900, 5)
    found = await book.by_user_code(code_hash("BCDF2345"))
    assert found is not None and found.id == started.id and found.ip == "10.0.0.7"
    assert await book.by_user_code(code_hash("ZZZZ2345")) is None
    assert await answer(store, "dev", T0 + 5) == "authorization_pending"
    assert await answer(store, "dev", T0 + 6) == "slow_down"
    assert await book.poll(code_hash("nope"), T0 + 20) is None
    # Two consent pages read the pending pairing; both approve. The second update is stale:
    # only the state guard (the row is no longer `pending`) makes it change nothing.
    read_by_one = await book.by_user_code(code_hash("BCDF2345"))
    read_by_other = await book.by_user_code(code_hash("BCDF2345"))
    assert read_by_one is not None and read_by_other is not None
    assert read_by_other.state == "pending"
    other = await store.create_user("other")
    assert await book.decide(read_by_one, user.id, True, T0 + 20)
    assert not await book.decide(read_by_other, other.id, True, T0 + 21)
    assert not await book.decide(read_by_other, other.id, False, T0 + 21)
    approved = await book.by_user_code(code_hash("BCDF2345"))
    assert approved is not None and (approved.state, approved.user_id) == ("approved", user.id)
    assert await answer(store, "dev", T0 + 40) == "approved"
    assert await answer(store, "dev", T0 + 50) == "expired_token"  # collected once
    late = await book.start(code_hash("dev2"), code_hash("BCDF2346"), "gpu", "10.0.0.7", T0)
    assert not await book.decide(late, user.id, True, T0 + 900)  # expired
    # A day after expiry, a new start forgets the old rows.
    await book.start(code_hash("dev3"), code_hash("BCDF2347"), "x", "10.0.0.8", T0 + 90_000)
    assert await book.by_user_code(code_hash("BCDF2345")) is None


async def test_pairings_on_sqlite(store: Store) -> None:
    await exercise_pairings(store)
