"""The broker's store: users, API keys and connector tokens; the usage ledger in `usage`.

SQLAlchemy 2 Core on an async engine. The default is an SQLite file in the data
directory (aiosqlite); any other SQLAlchemy async URL (`postgresql+asyncpg://…`)
uses the same schema (`broker.accounts.schema`) and the same queries. `Store.open` creates
and migrates the schema on start. Queries hand out the plain values of
`broker.accounts.records`; the usage table's queries are `Store.usage` (`broker.accounts.usage`),
the pairings table's `Store.pairings` (`broker.accounts.pairings`), the access tables'
`Store.access` (`broker.accounts.accessbook`).
Times are UNIX seconds (floats).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from broker.accounts import keyformat
from broker.accounts.accessbook import AccessBook
from broker.accounts.migration import migrate
from broker.accounts.pairings import PairingBook
from broker.accounts.records import (
    ApiKey,
    ConnectorToken,
    Role,
    Status,
    StoreError,
    User,
    key_from_row,
    token_from_row,
    user_from_row,
)
from broker.accounts.schema import SCHEMA_VERSION, api_keys, connector_tokens, meta, users
from broker.accounts.usage import UsageBook

log = structlog.get_logger("remotellm.broker.store")

MAX_NAME = 255


def _name(value: str, what: str) -> str:
    if not value.strip() or len(value) > MAX_NAME:
        raise StoreError(f"a {what} must be 1 to {MAX_NAME} characters")
    return value


def database_url(data_dir: Path, url: str | None) -> str:
    """The SQLAlchemy URL to use: the given one, else `remotellm.db` in the data directory."""
    if url:
        return url
    return f"sqlite+aiosqlite:///{data_dir / 'remotellm.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the admin CLI, the portal) never block the usage writer, and a
    # process killed mid-write leaves the last committed state.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Every query the broker makes, on one async engine."""

    def __init__(self, engine: AsyncEngine, scratch: Path | None = None) -> None:
        self.engine = engine
        self.usage = UsageBook(engine)
        self.pairings = PairingBook(engine)
        self.access = AccessBook(engine)
        self._scratch = scratch

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect, create the data directory and the schema if needed, migrate."""
        sa_url = sa.engine.make_url(url)
        is_sqlite = sa_url.get_backend_name() == "sqlite"
        scratch = None
        if is_sqlite and sa_url.database in (None, "", ":memory:"):
            # SQLite's memory databases live and die with one connection (a cancelled
            # query can cost the pool that connection), so ":memory:" means a scratch
            # file that `close` deletes: the same code path as a real store.
            scratch = Path(tempfile.mkdtemp(prefix="remotellm-store-"))
            sa_url = sa_url.set(database=str(scratch / "remotellm.db"))
        if is_sqlite:
            assert sa_url.database is not None
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_async_engine(sa_url)
        except ModuleNotFoundError as exc:  # the driver is an optional extra
            extra = " (pip install 'remotellm[postgres]')" if "postgresql" in url else ""
            raise StoreError(f"the database driver {exc.name} is not installed{extra}") from exc
        if is_sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, scratch)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self.engine.dispose()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    async def ping(self) -> None:
        """Read one small row: the cheapest question that takes a pooled connection and
        reads the database itself, as a key look-up does."""
        async with self.engine.connect() as conn:
            await conn.scalar(sa.select(meta.c.value).where(meta.c.name == "schema"))

    async def _migrate(self) -> None:
        async with self.engine.begin() as conn:
            before = await migrate(conn)
        if 0 < before < SCHEMA_VERSION:
            log.info("store schema upgraded", schema_from=before, schema_to=SCHEMA_VERSION)

    # --- users ---------------------------------------------------------------

    async def sign_in(self, gitlab_id: int, username: str, name: str) -> tuple[User, bool]:
        """Create or refresh the user with this GitLab id; also says whether it is new."""
        username, name = username[:MAX_NAME], name[:MAX_NAME]
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(users).where(users.c.gitlab_id == gitlab_id))
            ).first()
            if row is not None:
                await conn.execute(
                    users.update().where(users.c.id == row.id).values(username=username, name=name)
                )
                fresh = (await conn.execute(sa.select(users).where(users.c.id == row.id))).one()
                return user_from_row(fresh), False
            await self._free_username(conn, username)
            result = await conn.execute(
                users.insert().values(
                    gitlab_id=gitlab_id,
                    username=username,
                    name=name,
                    status="active",
                    role="user",
                    created=time.time(),
                )
            )
            new = (await conn.execute(sa.select(users).where(users.c.id == _new_id(result)))).one()
            return user_from_row(new), True

    async def _free_username(self, conn: AsyncConnection, username: str) -> None:
        # GitLab usernames can be renamed and reused: the stable identity is the numeric
        # id, so a stale holder of the name is renamed out of the way.
        stale = (await conn.execute(sa.select(users).where(users.c.username == username))).first()
        if stale is not None:
            await conn.execute(
                users.update()
                .where(users.c.id == stale.id)
                .values(username=f"{username}~{stale.id}")
            )

    async def create_user(self, username: str, name: str = "", role: Role = "user") -> User:
        """A user that does not sign in through GitLab (keys made by an admin)."""
        _name(username, "username")
        _name(name or "-", "display name")
        async with self.engine.begin() as conn:
            taken = await conn.scalar(sa.select(users.c.id).where(users.c.username == username))
            if taken is not None:
                raise StoreError(f"a user named '{username}' already exists")
            result = await conn.execute(
                users.insert().values(
                    username=username, name=name, status="active", role=role, created=time.time()
                )
            )
            user_id = _new_id(result)
        user = await self.user(user_id)
        assert user is not None
        return user

    async def user(self, user_id: int) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).first()
        return user_from_row(row) if row is not None else None

    async def find_user(self, ident: str) -> User:
        """A user by username, else by numeric id; StoreError when there is none."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(users).where(users.c.username == ident))).first()
            if row is None and ident.isdigit():
                row = (await conn.execute(sa.select(users).where(users.c.id == int(ident)))).first()
        if row is None:
            raise StoreError(f"no user '{ident}' (give a username or a user id)")
        return user_from_row(row)

    async def list_users(self) -> list[User]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(users).order_by(users.c.id))).all()
        return [user_from_row(r) for r in rows]

    async def set_status(self, user_id: int, status: Status) -> None:
        await self._update_user(user_id, status=status)

    async def set_role(self, user_id: int, role: Role) -> None:
        await self._update_user(user_id, role=role)

    async def set_limits(
        self,
        user_id: int,
        *,
        rpm: int | None,
        concurrency: int | None,
        daily_tokens: int | None,
        models: Sequence[str] | None,
    ) -> None:
        """Per-user overrides; None means "use the broker's default" (all models for `models`)."""
        await self._update_user(
            user_id,
            rpm=rpm,
            concurrency=concurrency,
            daily_tokens=daily_tokens,
            models=json.dumps(list(models)) if models is not None else None,
        )

    async def _update_user(self, user_id: int, **values: Any) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                users.update().where(users.c.id == user_id).values(**values)
            )
            if result.rowcount == 0:
                raise StoreError(f"no user with id {user_id}")

    # --- API keys ------------------------------------------------------------

    async def create_key(
        self, user_id: int, name: str, expires: float | None = None
    ) -> tuple[str, ApiKey]:
        """A new key for a user: the raw key (show it once, it is not kept) and its record."""
        _name(name, "key name")
        raw = keyformat.generate(keyformat.API_KEY_PREFIX)
        async with self.engine.begin() as conn:
            owner = await conn.scalar(sa.select(users.c.id).where(users.c.id == user_id))
            if owner is None:
                raise StoreError(f"no user with id {user_id}")
            result = await conn.execute(
                api_keys.insert().values(
                    user_id=user_id,
                    name=name,
                    prefix=keyformat.display_prefix(raw),
                    hash=keyformat.fingerprint(raw),
                    created=time.time(),
                    expires=expires,
                )
            )
            row = (
                await conn.execute(sa.select(api_keys).where(api_keys.c.id == _new_id(result)))
            ).one()
        return raw, key_from_row(row)

    async def keys(self, user_id: int | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [key_from_row(r) for r in rows]

    async def revoke_key(self, key_id: int, user_id: int | None = None) -> bool:
        """Revoke a key (only the given user's when `user_id` is set); False if none matched."""
        query = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked.is_(None))
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        async with self.engine.begin() as conn:
            result = await conn.execute(query.values(revoked=time.time()))
        return bool(result.rowcount)

    async def key_owner(self, fingerprint: str) -> tuple[ApiKey, User] | None:
        """The key with this fingerprint and its owner, whatever their state."""
        async with self.engine.connect() as conn:
            key = (
                await conn.execute(sa.select(api_keys).where(api_keys.c.hash == fingerprint))
            ).first()
            if key is None:
                return None
            owner = (await conn.execute(sa.select(users).where(users.c.id == key.user_id))).one()
        return key_from_row(key), user_from_row(owner)

    # --- connector tokens ----------------------------------------------------

    async def create_connector_token(
        self, name: str, owner_id: int | None = None
    ) -> tuple[str, ConnectorToken]:
        _name(name, "connector name")
        if name.strip().isdigit():
            raise StoreError(
                "a connector name cannot be only digits: admin commands take those for ids"
            )
        raw = keyformat.generate(keyformat.CONNECTOR_TOKEN_PREFIX)
        async with self.engine.begin() as conn:
            taken = await conn.scalar(
                sa.select(connector_tokens.c.id).where(
                    connector_tokens.c.name == name, connector_tokens.c.revoked.is_(None)
                )
            )
            if taken is not None:
                raise StoreError(f"a connector named '{name}' already exists")
            result = await conn.execute(
                connector_tokens.insert().values(
                    name=name,
                    owner_id=owner_id,
                    prefix=keyformat.display_prefix(raw),
                    hash=keyformat.fingerprint(raw),
                    created=time.time(),
                )
            )
            row = (
                await conn.execute(
                    sa.select(connector_tokens).where(connector_tokens.c.id == _new_id(result))
                )
            ).one()
        return raw, token_from_row(row)

    async def connector_tokens(self, owner_id: int | None = None) -> list[ConnectorToken]:
        """Every connector token, or only those `owner_id` owns (revoked ones too)."""
        query = sa.select(connector_tokens).order_by(connector_tokens.c.id)
        if owner_id is not None:
            query = query.where(connector_tokens.c.owner_id == owner_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [token_from_row(r) for r in rows]

    async def connector_token(self, token_id: int) -> ConnectorToken | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(connector_tokens).where(connector_tokens.c.id == token_id)
                )
            ).first()
        return token_from_row(row) if row is not None else None

    async def revoke_connector_token(self, ident: str | int) -> bool:
        """Revoke the live token with this name or id (an int: only that id); False if none
        matched."""
        if isinstance(ident, int):
            match = connector_tokens.c.id == ident
        else:
            match = connector_tokens.c.name == ident
            if ident.isdigit():
                match = sa.or_(match, connector_tokens.c.id == int(ident))
        async with self.engine.begin() as conn:
            result = await conn.execute(
                connector_tokens.update()
                .where(match, connector_tokens.c.revoked.is_(None))
                .values(revoked=time.time())
            )
        return bool(result.rowcount)

    async def connector_for(
        self, fingerprint: str, *, revoked: bool = False
    ) -> ConnectorToken | None:
        """The live connector token with this fingerprint (also a revoked one if `revoked`)."""
        query = sa.select(connector_tokens).where(connector_tokens.c.hash == fingerprint)
        if not revoked:
            query = query.where(connector_tokens.c.revoked.is_(None))
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return token_from_row(row) if row is not None else None

    async def live_connector_ids(self, ids: Iterable[int]) -> set[int]:
        """Which of these connector token ids are not revoked."""
        wanted = list(ids)
        if not wanted:
            return set()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(connector_tokens.c.id).where(
                    connector_tokens.c.id.in_(wanted), connector_tokens.c.revoked.is_(None)
                )
            )
            return {int(r.id) for r in rows}

    async def connector_owners(self, ids: Iterable[int]) -> dict[int, int | None]:
        """The owner (a user id, or None) of each of these connector tokens."""
        wanted = list(ids)
        if not wanted:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(connector_tokens.c.id, connector_tokens.c.owner_id).where(
                    connector_tokens.c.id.in_(wanted)
                )
            )
            return {int(r.id): r.owner_id for r in rows}

    async def connector_seen(self, token_id: int, when: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                connector_tokens.update()
                .where(connector_tokens.c.id == token_id)
                .values(last_seen=when)
            )


def _new_id(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])
