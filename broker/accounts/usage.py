"""The usage ledger's table: writing request rows in batches, and the totals read back.

`Store.usage` is the one `UsageBook` of a store, on the store's engine. The ledger
(`broker.accounts.ledger`) writes through `add`; the limiter reads `tokens_since`; the admin
CLI and the portal read the totals.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.accounts.records import GroupBy, Served, UsageRow, UsageTotal
from broker.accounts.schema import api_keys, usage, users

USAGE_SLICE = 100
"""Usage rows per INSERT statement within one batch's transaction."""


USAGE_COLUMNS = tuple(field.name for field in dataclasses.fields(UsageRow))
"""The usage table's columns that a row fills (`id` is the database's)."""


RowValues = Callable[[UsageRow], tuple[Any, ...]]


def driver_insert(dialect: sa.Dialect) -> tuple[str, RowValues] | None:
    """The usage INSERT in the driver's own positional parameter style, and a row's values in
    its order; None for a driver with named parameters (psycopg, oracledb), which gets
    SQLAlchemy's own insert.

    Straight to the driver, a row skips SQLAlchemy's per-row parameter processing, which cost
    more than the row itself (the values are plain ints, floats, strings and bools).
    """
    # for_executemany: no RETURNING of each row's id, which nobody reads.
    compiled = usage.insert().compile(
        dialect=dialect, column_keys=list(USAGE_COLUMNS), for_executemany=True
    )
    order = compiled.positiontup
    if order is None or sorted(order) != sorted(USAGE_COLUMNS):
        return None
    return str(compiled), operator.attrgetter(*order)


class UsageBook:
    """Every query on the usage table (writing rows also notes each key's last use)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._driver_insert = driver_insert(engine.dialect)

    async def add(self, rows: Iterable[UsageRow]) -> int:
        """Write usage rows in one transaction, and each key's last use; returns the count."""
        rows = list(rows)
        if not rows:
            return 0
        last_used: dict[int, float] = {}
        for row in rows:
            if row.key_id is not None:
                last_used[row.key_id] = max(last_used.get(row.key_id, 0.0), row.time)
        async with self.engine.begin() as conn:
            # In slices, requests are served between them instead of waiting for the batch.
            for start in range(0, len(rows), USAGE_SLICE):
                part = rows[start : start + USAGE_SLICE]
                if self._driver_insert is not None:
                    sql, values = self._driver_insert
                    await conn.exec_driver_sql(sql, [values(row) for row in part])
                else:
                    await conn.execute(usage.insert(), [row.__dict__ for row in part])
            for key_id, when in last_used.items():
                await conn.execute(
                    api_keys.update()
                    .where(
                        api_keys.c.id == key_id,
                        sa.or_(api_keys.c.last_used.is_(None), api_keys.c.last_used < when),
                    )
                    .values(last_used=when)
                )
        return len(rows)

    async def tokens_since(self, key_id: int, since: float) -> int:
        """Prompt plus completion tokens a key used since `since`."""
        total = sa.func.coalesce(
            sa.func.sum(
                sa.func.coalesce(usage.c.prompt_tokens, 0)
                + sa.func.coalesce(usage.c.completion_tokens, 0)
            ),
            0,
        )
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                sa.select(total).where(usage.c.key_id == key_id, usage.c.time >= since)
            )
        return int(value or 0)

    async def rows(self, since: float = 0.0) -> list[UsageRow]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(usage).where(usage.c.time >= since).order_by(usage.c.id)
                )
            ).all()
        names = [c.name for c in usage.columns if c.name != "id"]
        return [UsageRow(**{n: getattr(r, n) for n in names}) for r in rows]

    async def totals(
        self, by: GroupBy, since: float = 0.0, user_id: int | None = None
    ) -> list[UsageTotal]:
        """Requests and tokens grouped by user, model, connector or UTC day."""
        group: Any
        if by == "user":
            group = sa.func.coalesce(users.c.username, "(configured key)")
        elif by == "model":
            group = sa.func.coalesce(usage.c.model, "(none)")
        elif by == "connector":
            group = sa.func.coalesce(usage.c.connector, "(none)")
        else:
            group = sa.func.floor(usage.c.time / 86400)
        query = (
            sa.select(
                group.label("group"),
                sa.func.count().label("requests"),
                sa.func.coalesce(sa.func.sum(usage.c.prompt_tokens), 0).label("prompt"),
                sa.func.coalesce(sa.func.sum(usage.c.completion_tokens), 0).label("completion"),
                sa.func.sum(sa.case((usage.c.status >= 400, 1), else_=0)).label("errors"),
            )
            .select_from(usage.outerjoin(users, users.c.id == usage.c.user_id))
            .where(usage.c.time >= since)
            .group_by(group)
            .order_by(group)
        )
        if user_id is not None:
            query = query.where(usage.c.user_id == user_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            UsageTotal(
                group=_day(r.group) if by == "day" else str(r.group),
                requests=int(r.requests),
                prompt_tokens=int(r.prompt),
                completion_tokens=int(r.completion),
                errors=int(r.errors or 0),
            )
            for r in rows
        ]

    async def by_day_and_model(
        self, user_id: int, since: float
    ) -> list[tuple[str, str, int, int, int]]:
        """(day, model, requests, prompt tokens, completion tokens) of one user's requests."""
        day = sa.func.floor(usage.c.time / 86400)
        model = sa.func.coalesce(usage.c.model, "(none)")
        query = (
            sa.select(
                day.label("day"),
                model.label("model"),
                sa.func.count().label("requests"),
                sa.func.coalesce(sa.func.sum(usage.c.prompt_tokens), 0).label("prompt"),
                sa.func.coalesce(sa.func.sum(usage.c.completion_tokens), 0).label("completion"),
            )
            .where(usage.c.user_id == user_id, usage.c.time >= since)
            .group_by(day, model)
            .order_by(day.desc(), model)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            (_day(r.day), str(r.model), int(r.requests), int(r.prompt), int(r.completion))
            for r in rows
        ]

    async def served(self, connector_ids: Iterable[int], since: float) -> list[Served]:
        """Requests and tokens each of these connector tokens served since `since`, per user
        (most requests first)."""
        wanted = list(connector_ids)
        if not wanted:
            return []
        username = sa.func.coalesce(users.c.username, "(configured key)")
        requests = sa.func.count()
        query = (
            sa.select(
                usage.c.connector_id,
                usage.c.user_id,
                username.label("username"),
                requests.label("requests"),
                sa.func.coalesce(sa.func.sum(usage.c.prompt_tokens), 0).label("prompt"),
                sa.func.coalesce(sa.func.sum(usage.c.completion_tokens), 0).label("completion"),
                sa.func.sum(sa.case((usage.c.status >= 400, 1), else_=0)).label("errors"),
            )
            .select_from(usage.outerjoin(users, users.c.id == usage.c.user_id))
            .where(usage.c.connector_id.in_(wanted), usage.c.time >= since)
            .group_by(usage.c.connector_id, usage.c.user_id, username)
            .order_by(usage.c.connector_id, requests.desc(), username)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Served(
                connector_id=int(r.connector_id),
                user_id=r.user_id,
                username=str(r.username),
                requests=int(r.requests),
                prompt_tokens=int(r.prompt),
                completion_tokens=int(r.completion),
                errors=int(r.errors or 0),
            )
            for r in rows
        ]


def _day(days_since_epoch: Any) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(int(days_since_epoch) * 86400))
