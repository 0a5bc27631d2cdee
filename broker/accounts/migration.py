"""Bringing a store's schema to this broker's `SCHEMA_VERSION`, on start, without losing rows.

A new database gets every table at the current version. An older one gets the tables it
lacks (`create_all` adds tables, never columns) and then each step from its version up, in
one transaction with the version's update: a step that fails leaves the store as it was.
Steps are SQLAlchemy Core and plain `ALTER TABLE … ADD COLUMN`, which both databases run.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.accounts.records import StoreError
from broker.accounts.schema import SCHEMA_VERSION, meta, metadata, usage

Step = Callable[[sa.Connection], None]

MIGRATION_LOCK = 0x52_4C_4C_4D  # "RLLM": the advisory lock id brokers take while migrating


def _add_column(conn: sa.Connection, table: sa.Table, column: sa.Column[object]) -> None:
    """Add `column` (nullable, no default) to an existing table, with its index, if missing."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    if column.name not in present:
        quote = conn.dialect.identifier_preparer.quote
        kind = column.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"
        )
    for index in table.indexes:
        if [c.name for c in index.columns] == [column.name]:
            index.create(conn, checkfirst=True)


def _usage_connector_id(conn: sa.Connection) -> None:
    """2: which connector token served each request (rows of schema 1 keep NULL)."""
    _add_column(conn, usage, usage.c.connector_id)


STEPS: dict[int, Step] = {2: _usage_connector_id}
"""The step that brings a store from version n - 1 to n."""


async def migrate(conn: AsyncConnection) -> int:
    """Create what is missing and run every step above the store's version; returns the
    version the store had (0 for a new one). StoreError for a store of a newer broker.

    Runs in the caller's transaction, which it opens at the database on SQLite: Python's
    sqlite3 begins one only before a data change, so each DDL statement would otherwise be
    committed on its own and a failed step leave the schema half upgraded. IMMEDIATE takes
    the write lock first: two brokers starting on one file do not both upgrade it. On
    PostgreSQL a transaction-scoped advisory lock does the same for brokers of one cluster
    starting together, which would otherwise both create or alter the same tables.
    """
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    await conn.run_sync(metadata.create_all)
    found = await conn.scalar(sa.select(meta.c.value).where(meta.c.name == "schema"))
    if found is None:
        await conn.execute(meta.insert().values(name="schema", value=str(SCHEMA_VERSION)))
        return 0
    version = int(found)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store's schema is version {version}, newer than this broker's"
            f" ({SCHEMA_VERSION}); upgrade the broker"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        await conn.run_sync(STEPS[step])
    if version < SCHEMA_VERSION:
        await conn.execute(
            meta.update().where(meta.c.name == "schema").values(value=str(SCHEMA_VERSION))
        )
    return version
