"""The access tables: each connector's rule (`connector_access`) and users' groups (`user_groups`).

`Store.access` is the one `AccessBook` of a store. The tables are created at start on an
existing store like any new table (no schema version change). A rule is kept as its mode
and a JSON list of its members (group paths or user ids); no row means everyone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.accounts.access import EVERYONE, MAX_GROUP_PATH, AccessRule
from broker.accounts.schema import connector_access, user_groups


def _rule(row: Any) -> AccessRule:
    members = json.loads(row.members)
    if row.mode == "groups":
        return AccessRule("groups", groups=tuple(str(g) for g in members))
    if row.mode == "users":
        return AccessRule("users", users=tuple(int(u) for u in members))
    return AccessRule(row.mode)


class AccessBook:
    """Every query about access rules and group memberships, on the store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def rule(self, token_id: int) -> AccessRule:
        """The rule of one connector token (everyone when none was set)."""
        return (await self.rules([token_id])).get(token_id, EVERYONE)

    async def rules(self, token_ids: Iterable[int]) -> dict[int, AccessRule]:
        """The rules set for these connector tokens (those without one are left out)."""
        wanted = list(token_ids)
        if not wanted:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(connector_access).where(connector_access.c.token_id.in_(wanted))
            )
            return {int(row.token_id): _rule(row) for row in rows}

    async def set_rule(self, token_id: int, rule: AccessRule) -> None:
        """Keep `rule` for the connector token (everyone removes the row)."""
        members: list[Any] = list(rule.groups) if rule.mode == "groups" else list(rule.users)
        async with self.engine.begin() as conn:
            await conn.execute(
                connector_access.delete().where(connector_access.c.token_id == token_id)
            )
            if rule.mode != "everyone":
                await conn.execute(
                    connector_access.insert().values(
                        token_id=token_id,
                        mode=rule.mode,
                        members=json.dumps(members),
                        changed=time.time(),
                    )
                )

    async def set_groups(self, user_id: int, groups: Iterable[str]) -> None:
        """Replace the groups recorded for a user (at sign-in)."""
        # A longer path is dropped, not cut: a cut one could be another group's name.
        paths = sorted({g for g in groups if len(g) <= MAX_GROUP_PATH})
        async with self.engine.begin() as conn:
            await conn.execute(user_groups.delete().where(user_groups.c.user_id == user_id))
            if paths:
                await conn.execute(
                    user_groups.insert(), [{"user_id": user_id, "group_path": g} for g in paths]
                )

    async def groups(self, user_id: int) -> tuple[str, ...]:
        """The groups recorded for a user, sorted."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(user_groups.c.group_path)
                .where(user_groups.c.user_id == user_id)
                .order_by(user_groups.c.group_path)
            )
            return tuple(str(row.group_path) for row in rows)

    async def memberships(self) -> dict[int, tuple[str, ...]]:
        """Every user's recorded groups (for the users of group rules)."""
        found: dict[int, list[str]] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(user_groups))
            for row in rows:
                found.setdefault(int(row.user_id), []).append(str(row.group_path))
        return {user: tuple(groups) for user, groups in found.items()}
