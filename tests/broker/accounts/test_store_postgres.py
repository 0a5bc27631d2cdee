"""The same store code on PostgreSQL (asyncpg): the schema is written once, for every database.

A throwaway cluster from tests/pgserver.py (Debian's PostgreSQL, on 127.0.0.1 only),
stopped after the tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from broker.accounts import keyformat, schema
from broker.accounts.ledger import UsageLedger
from broker.accounts.records import StoreError, UsageRow
from broker.accounts.store import Store
from tests.broker.accounts.test_accessbook import exercise_access
from tests.broker.accounts.test_ledger import BAD_ROWS
from tests.broker.accounts.test_migration import upgrade_keeps_every_row
from tests.broker.accounts.test_pairings import exercise_pairings
from tests.broker.accounts.test_store import full_rows, row
from tests.pgserver import running_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with running_postgres() as url:
        yield url


@pytest.fixture
async def store(postgres: str) -> AsyncIterator[Store]:
    store = await Store.open(postgres)
    yield store
    async with store.engine.begin() as conn:
        for table in (
            "usage",
            "connector_access",
            "user_groups",
            "api_keys",
            "connector_tokens",
            "users",
        ):
            await conn.exec_driver_sql(f"DELETE FROM {table}")
    await store.close()


async def test_every_store_operation_works_on_postgres(store: Store, postgres: str) -> None:
    user, new = await store.sign_in(77, "pat", "Pat")
    assert new
    again, new_again = await store.sign_in(77, "pat", "Pat P.")
    assert not new_again and again.name == "Pat P."
    local = await store.create_user("lee", "Lee", "admin")
    raw, key = await store.create_key(user.id, "laptop")
    found = await store.key_owner(keyformat.fingerprint(raw))
    assert found is not None and found[1].username == "pat"
    await store.set_limits(user.id, rpm=3, concurrency=None, daily_tokens=50, models=["m"])
    limited = await store.find_user("pat")
    assert (limited.rpm, limited.daily_tokens, limited.models) == (3, 50, ("m",))
    token_raw, _ = await store.create_connector_token("box", local.id)
    token = await store.connector_for(keyformat.fingerprint(token_raw))
    assert token is not None
    await store.connector_seen(token.id, time.time())
    assert await store.live_connector_ids([token.id]) == {token.id}
    now = time.time()
    await store.usage.add(
        [
            UsageRow(
                now, "r1", "/v1/chat/completions", 200, 1.0, user.id, key.id, "m", "box", 3, 4
            ),
            UsageRow(now, "r2", "/v1/chat/completions", 429, 0.1, user.id, key.id, "m"),
            UsageRow(now, "r3", "/v1/chat/completions", 401, 0.1),
        ]
    )
    assert await store.usage.tokens_since(key.id, now - 1) == 7
    by_user = {t.group: t for t in await store.usage.totals("user")}
    assert by_user["pat"].requests == 2 and by_user["pat"].errors == 1
    assert by_user["(configured key)"].requests == 1
    assert {t.group for t in await store.usage.totals("day")} == {
        time.strftime("%Y-%m-%d", time.gmtime(now))
    }
    assert [r[1:3] for r in await store.usage.by_day_and_model(user.id, 0)] == [("m", 2)]
    assert (await store.keys(user.id))[0].last_used is not None
    assert await store.revoke_key(key.id, user_id=user.id)
    assert await store.revoke_connector_token("box")
    with pytest.raises(StoreError):
        await store.create_user("x" * 300)


async def test_concurrent_writers_on_postgres(store: Store, postgres: str) -> None:
    other = await Store.open(postgres)
    try:
        rows = [UsageRow(time.time(), f"c{i}", "/v1/embeddings", 200, 1.0) for i in range(50)]
        await asyncio.gather(*(s.usage.add(rows[i::5]) for i, s in enumerate([store, other] * 3)))
        assert len({r.request_id for r in await store.usage.rows()}) == 50
    finally:
        await other.close()


async def test_usage_rows_come_back_exactly_as_written_on_postgres(
    store: Store, postgres: str
) -> None:
    user, _ = await store.sign_in(78, "quinn", "Quinn")
    _, key = await store.create_key(user.id, "k")
    written = full_rows(user.id, key.id)
    assert await store.usage.add(written) == len(written)
    assert await store.usage.rows() == written


async def test_the_ledger_sets_aside_only_rows_postgres_refuses_for_their_values(
    store: Store, postgres: str
) -> None:
    """On PostgreSQL too a row the store cannot hold is set aside and the rest written, while a
    refusal of every row alike (here a permission the server denies) keeps them all queued."""
    ledger = UsageLedger(store, interval=3600)
    for i in range(3):
        ledger.record(row(i))
    for bad in BAD_ROWS:
        ledger.record(bad)
    await ledger.flush()
    assert list(ledger.set_aside) == list(BAD_ROWS)
    assert ledger.queued == 0
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE FUNCTION deny() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'permission denied for table usage' USING ERRCODE = '42501';"
            " END $$"
        )
        await conn.exec_driver_sql(
            "CREATE TRIGGER deny BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION deny()"
        )
    try:
        for i in range(3, 6):
            ledger.record(row(i))
        with pytest.raises(Exception, match="permission denied"):
            await ledger.flush()
        assert ledger.queued == 3 and list(ledger.set_aside) == list(BAD_ROWS)
    finally:
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER deny ON usage")
            await conn.exec_driver_sql("DROP FUNCTION deny()")
    await ledger.close()
    assert sorted(r.request_id for r in await store.usage.rows()) == [f"req_{i}" for i in range(6)]


async def test_pairings_on_postgres(store: Store) -> None:
    await exercise_pairings(store)


async def test_access_on_postgres(store: Store) -> None:
    await exercise_access(store)


async def test_a_schema_1_store_is_upgraded_on_postgres(postgres: str) -> None:
    try:
        await upgrade_keeps_every_row(postgres)
    finally:  # leave no rows for the tests after this one: the next open makes the tables
        engine = create_async_engine(postgres)
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.drop_all)
        await engine.dispose()


async def test_brokers_starting_together_on_a_new_database_all_open_it(postgres: str) -> None:
    """A cluster's brokers start at once: without the migration lock, two of them create the
    same tables or insert the same schema row, and one fails to start."""
    engine = create_async_engine(postgres)
    async with engine.begin() as conn:
        await conn.run_sync(schema.metadata.drop_all)
    await engine.dispose()
    try:
        stores = await asyncio.gather(*(Store.open(postgres) for _ in range(4)))
        for store in stores:
            await store.ping()
            await store.close()
    finally:
        engine = create_async_engine(postgres)
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.drop_all)
        await engine.dispose()
