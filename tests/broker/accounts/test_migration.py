"""A store of schema 1 is upgraded on open: the new column is added and no row is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from broker.accounts import schema
from broker.accounts.records import UsageRow
from broker.accounts.store import Store, database_url

V1_USAGE_COLUMNS = [c.name for c in schema.usage.columns if c.name != "connector_id"]


V1_TABLES = ("meta", "users", "api_keys", "connector_tokens", "pairings")


def v1_metadata() -> sa.MetaData:
    """The tables of schema 1: today's, and the usage table as it was (no connector_id)."""
    old = sa.MetaData()
    for name in V1_TABLES:
        schema.metadata.tables[name].to_metadata(old)
    columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, index=c.index)
        for c in schema.usage.columns
        if c.name in V1_USAGE_COLUMNS
    ]
    sa.Table("usage", old, *columns)
    return old


async def build_v1_store(url: str) -> None:
    """A database as a schema-1 broker left it: a user, a connector token and two usage rows
    (any tables there already are dropped first)."""
    engine = create_async_engine(url)
    old = v1_metadata()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.drop_all)
            await conn.run_sync(old.create_all)
            await conn.execute(old.tables["meta"].insert().values(name="schema", value="1"))
            await conn.execute(
                old.tables["users"]
                .insert()
                .values(id=1, username="pat", name="Pat", status="active", role="user", created=1.0)
            )
            await conn.execute(
                old.tables["connector_tokens"]
                .insert()
                .values(id=1, name="box", owner_id=1, prefix="rlc_x", hash="h" * 64, created=1.0)
            )
            for i in range(2):
                await conn.execute(
                    old.tables["usage"]
                    .insert()
                    .values(
                        time=100.0 + i,
                        request_id=f"old_{i}",
                        user_id=1,
                        model="m",
                        connector="box",
                        endpoint="/v1/chat/completions",
                        status=200,
                        prompt_tokens=3,
                        completion_tokens=4,
                        duration_ms=1.0,
                        cancelled=False,
                    )
                )
    finally:
        await engine.dispose()


async def upgrade_keeps_every_row(url: str) -> None:
    """Open a schema-1 store with this broker: it is at schema 2 and every row is there."""
    await build_v1_store(url)
    store = await Store.open(url)
    try:
        async with store.engine.connect() as conn:
            version = await conn.scalar(
                sa.select(schema.meta.c.value).where(schema.meta.c.name == "schema")
            )
        assert version == str(schema.SCHEMA_VERSION) == "2"
        old = await store.usage.rows()
        assert [(r.request_id, r.connector, r.connector_id) for r in old] == [
            ("old_0", "box", None),
            ("old_1", "box", None),
        ]
        (token,) = await store.connector_tokens()
        assert (token.name, token.owner_id) == ("box", 1)
        now = time.time()
        await store.usage.add(
            [
                UsageRow(
                    now,
                    "new",
                    "/v1/chat/completions",
                    200,
                    1.0,
                    1,
                    None,
                    "m",
                    "box",
                    5,
                    6,
                    connector_id=token.id,
                )
            ]
        )
        (served,) = await store.usage.served([token.id], now - 1)
        assert (served.username, served.requests, served.tokens) == ("pat", 1, 11)
    finally:
        await store.close()
    again = await Store.open(url)  # a second open finds nothing to do
    try:
        assert len(await again.usage.rows()) == 3
    finally:
        await again.close()


async def test_a_schema_1_sqlite_store_is_upgraded_without_losing_rows(tmp_path: Path) -> None:
    await upgrade_keeps_every_row(database_url(tmp_path, None))


async def test_a_failed_upgrade_leaves_the_store_at_schema_1(tmp_path: Path) -> None:
    """The steps run in one transaction with the version's update: all of it or nothing."""
    url = database_url(tmp_path, None)
    await build_v1_store(url)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            # An index of that name already on another table: the step's CREATE INDEX fails.
            await conn.exec_driver_sql("CREATE INDEX ix_usage_connector_id ON users (name)")
    finally:
        await engine.dispose()
    with pytest.raises(sa.exc.OperationalError, match="already exists"):
        await Store.open(url)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(sa.text("SELECT value FROM meta WHERE name = 'schema'"))
            columns = [r[1] for r in await conn.exec_driver_sql("PRAGMA table_info(usage)")]
    finally:
        await engine.dispose()
    assert version == "1"
    assert "connector_id" not in columns
