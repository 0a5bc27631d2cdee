"""The pairings table through the store (SQLite here; `test_store_postgres` runs the same
checks on PostgreSQL)."""

from __future__ import annotations

import asyncio
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
    """A pairing's whole life, and two polls at once taking one approval."""
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
    assert await book.decide(started.id, user.id, True, T0 + 20)
    assert not await book.decide(started.id, user.id, False, T0 + 21)  # decided once
    answers = await asyncio.gather(*(book.poll(code_hash("dev"), T0 + 40) for _ in range(4)))
    assert sorted(a[0] for a in answers if a is not None).count("approved") == 1
    late = await book.start(code_hash("dev2"), code_hash("BCDF2346"), "gpu", "10.0.0.7", T0)
    assert not await book.decide(late.id, user.id, True, T0 + 900)  # expired
    # A day after expiry, a new start forgets the old rows.
    await book.start(code_hash("dev3"), code_hash("BCDF2347"), "x", "10.0.0.8", T0 + 90_000)
    assert await book.by_user_code(code_hash("BCDF2345")) is None


async def test_pairings_on_sqlite(store: Store) -> None:
    await exercise_pairings(store)
