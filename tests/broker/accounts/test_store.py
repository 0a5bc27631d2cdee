"""The store on a real SQLite file: persistence, concurrency, crash consistency, migration."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from broker.accounts import keyformat
from broker.accounts.ledger import UsageLedger
from broker.accounts.records import StoreError, UsageRow
from broker.accounts.schema import meta
from broker.accounts.store import Store, database_url
from broker.accounts.usage import USAGE_COLUMNS, driver_insert


def url(tmp_path: Path) -> str:
    return database_url(tmp_path / "data", None)


def row(i: int, **extra: object) -> UsageRow:
    values: dict[str, object] = {
        "time": time.time(),
        "request_id": f"req_{i}",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 1.5,
        "model": "m",
    }
    values.update(extra)
    return UsageRow(**values)  # type: ignore[arg-type]


async def test_the_store_is_created_in_the_data_dir_and_survives_a_restart(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    user, new = await store.sign_in(99, "dana", "Dana")
    assert new
    raw, key = await store.create_key(user.id, "laptop")
    token_raw, token = await store.create_connector_token("gpu-box", user.id)
    await store.usage.add([row(1, user_id=user.id, key_id=key.id, prompt_tokens=3)])
    await store.set_limits(user.id, rpm=5, concurrency=None, daily_tokens=1000, models=["a"])
    await store.close()
    assert (tmp_path / "data" / "remotellm.db").exists()

    again = await Store.open(url(tmp_path))
    try:
        user2, new2 = await again.sign_in(99, "dana", "Dana")
        assert not new2 and user2.id == user.id
        assert (user2.rpm, user2.concurrency, user2.daily_tokens, user2.models) == (
            5,
            None,
            1000,
            ("a",),
        )
        found = await again.key_owner(keyformat.fingerprint(raw))
        assert found is not None and found[0].id == key.id
        assert found[0].last_used is not None  # written with the usage row
        assert await again.connector_for(keyformat.fingerprint(token_raw)) is not None
        assert [r.request_id for r in await again.usage.rows()] == ["req_1"]
    finally:
        await again.close()
    # Only hashes are stored: the raw secrets appear nowhere in the file.
    data = (tmp_path / "data" / "remotellm.db").read_bytes()
    data += (
        (tmp_path / "data" / "remotellm.db-wal").read_bytes()
        if (tmp_path / "data" / "remotellm.db-wal").exists()
        else b""
    )
    assert raw.encode() not in data and token_raw.encode() not in data
    assert token.prefix.encode() in data


async def test_many_concurrent_writers(tmp_path: Path) -> None:
    # The server's ledger and an admin process write at once, each with its own engine.
    server, admin = await Store.open(url(tmp_path)), await Store.open(url(tmp_path))
    ledger = UsageLedger(server, interval=0.01)
    ledger.start()
    try:

        async def request(i: int) -> None:
            await asyncio.sleep(0)
            ledger.record(row(i))

        async def admin_batch(i: int) -> None:
            await admin.usage.add([row(10_000 + i * 10 + j) for j in range(10)])

        await asyncio.gather(
            *(request(i) for i in range(500)), *(admin_batch(i) for i in range(20))
        )
        await ledger.close()
        ids = {r.request_id for r in await admin.usage.rows()}
        assert len(ids) == 700
    finally:
        await server.close()
        await admin.close()


async def test_ledger_keeps_rows_while_the_store_fails_and_writes_them_later(
    tmp_path: Path,
) -> None:
    store = await Store.open(url(tmp_path))
    ledger = UsageLedger(store, interval=0.01)
    real = store.usage.add
    calls = 0

    async def failing(rows: object) -> int:
        nonlocal calls
        calls += 1
        raise OSError("disk full")

    store.usage.add = failing  # type: ignore[method-assign]
    for i in range(5):
        ledger.record(row(i))
    with pytest.raises(OSError):
        await ledger.flush()
    assert ledger.queued == 5 and calls == 1
    store.usage.add = real  # type: ignore[method-assign]
    await ledger.close()  # a clean shutdown writes what is queued
    assert ledger.queued == 0
    assert len(await store.usage.rows()) == 5
    await store.close()


async def test_rows_that_arrive_during_a_write_wait_for_the_next_round(tmp_path: Path) -> None:
    """Under steady traffic the ledger writes in rounds, not a few rows at a time back to back."""
    store = await Store.open(url(tmp_path))
    ledger = UsageLedger(store, interval=3600)
    real = store.usage.add
    batches: list[int] = []

    async def slow(rows: list[UsageRow]) -> int:
        batches.append(len(rows))
        for i in range(3):  # requests keep finishing while the batch is written
            ledger.record(row(100 + len(batches) * 10 + i))
        return await real(rows)

    store.usage.add = slow  # type: ignore[method-assign]
    try:
        for i in range(5):
            ledger.record(row(i))
        async with asyncio.timeout(10):  # a flush that chased newcomers would never end
            await ledger.flush()
        assert batches == [5] and ledger.queued == 3  # the newcomers wait for the next round
        async with asyncio.timeout(10):
            await ledger.flush()
        assert batches == [5, 3] and ledger.queued == 3
    finally:
        store.usage.add = real  # type: ignore[method-assign]
        await ledger.close()  # a clean shutdown writes everything
    assert ledger.queued == 0
    assert len(await store.usage.rows()) == 11
    await store.close()


class HeldWrite:
    """A ledger whose first write stops between its statements until `release` is set."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ledger = UsageLedger(store, interval=0)
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.outcomes: list[str] = []
        self._real = store.usage.add

    async def _slow(self, rows: list[UsageRow]) -> int:
        self.entered.set()
        try:
            await self.release.wait()  # the transaction is between its statements
        except asyncio.CancelledError:
            self.outcomes.append("cancelled")
            raise
        self.outcomes.append("written")
        return await self._real(rows)

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, tmp_path: Path) -> AsyncIterator[HeldWrite]:
        """Five rows recorded and their write under way; the store is closed afterwards."""
        held = cls(await Store.open(url(tmp_path)))
        held.store.usage.add = held._slow  # type: ignore[method-assign]
        held.ledger.start()
        try:
            for i in range(5):
                held.ledger.record(row(i))
            async with asyncio.timeout(10):
                await held.entered.wait()
            yield held
        finally:
            held.release.set()
            held.store.usage.add = held._real  # type: ignore[method-assign]
            await held.ledger.close()
            await held.store.close()

    async def written_ids(self) -> list[str]:
        return sorted(r.request_id for r in await self.store.usage.rows())


async def test_close_waits_for_the_write_in_progress_instead_of_cancelling_it(
    tmp_path: Path,
) -> None:
    """A transaction cancelled between statements could keep SQLite's write lock."""
    async with HeldWrite.started(tmp_path) as held:
        closing = asyncio.create_task(held.ledger.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # close waits for the write...
        held.release.set()
        async with asyncio.timeout(10):
            await closing
        assert held.outcomes == ["written"]  # ...which ran to its end, once
        assert held.ledger.queued == 0
        assert await held.written_ids() == [f"req_{i}" for i in range(5)]


async def test_a_cancelled_close_leaves_the_write_running_and_a_second_close_waits_for_it(
    tmp_path: Path,
) -> None:
    async with HeldWrite.started(tmp_path) as held:
        first = asyncio.create_task(held.ledger.close())
        await asyncio.sleep(0.05)
        first.cancel()  # e.g. a shutdown that ran out of time
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(held.ledger.close())
        await asyncio.sleep(0.05)
        assert not second.done() and held.outcomes == []  # the write is still running
        held.release.set()
        async with asyncio.timeout(10):
            await second
        assert held.outcomes == ["written"]
        assert await held.written_ids() == [f"req_{i}" for i in range(5)]


async def test_a_process_killed_mid_write_leaves_a_consistent_store(tmp_path: Path) -> None:
    db_url = url(tmp_path)
    writer = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from broker.accounts.records import UsageRow
        from broker.accounts.store import Store

        async def main():
            store = await Store.open({db_url!r})
            batch = 0
            while True:
                rows = [
                    UsageRow(time=time.time(), request_id=f"b{{batch}}-{{i}}",
                             endpoint="/v1/chat/completions", status=200, duration_ms=1.0)
                    for i in range(200)
                ]
                await store.usage.add(rows)
                batch += 1
                if batch == 3:
                    print("writing", flush=True)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", writer, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.strip() == b"writing"
        await asyncio.sleep(0.2)  # let it be in the middle of more batches
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL

    db = tmp_path / "data" / "remotellm.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = conn.execute(
            "SELECT substr(request_id, 1, instr(request_id, '-') - 1), count(*)"
            " FROM usage GROUP BY 1"
        ).fetchall()
    assert len(counts) >= 3
    assert all(count == 200 for _, count in counts), "a batch was written in part"
    store = await Store.open(db_url)  # and the broker opens it again
    assert len(await store.usage.rows()) == 200 * len(counts)
    await store.close()


async def test_a_store_from_a_newer_broker_is_refused(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    async with store.engine.begin() as conn:
        await conn.execute(meta.update().where(meta.c.name == "schema").values(value="99"))
    await store.close()
    with pytest.raises(StoreError, match="newer"):
        await Store.open(url(tmp_path))


async def test_renamed_gitlab_username_moves_to_the_new_owner(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    try:
        old, _ = await store.sign_in(1, "sam", "Sam One")
        # On GitLab, user 1 renamed themselves and user 2 took the name "sam".
        new, created = await store.sign_in(2, "sam", "Sam Two")
        assert created and new.username == "sam"
        moved = await store.user(old.id)
        assert moved is not None and moved.username == f"sam~{old.id}"
    finally:
        await store.close()


async def test_keys_revoke_only_for_their_owner_and_expiry(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    try:
        a = await store.create_user("a")
        b = await store.create_user("b")
        _, key = await store.create_key(a.id, "k", expires=time.time() - 1)
        assert not key.usable(time.time())
        assert not await store.revoke_key(key.id, user_id=b.id)
        assert await store.revoke_key(key.id, user_id=a.id)
        assert not await store.revoke_key(key.id)  # already revoked
        with pytest.raises(StoreError):
            await store.create_user("a")
        with pytest.raises(StoreError):
            await store.create_key(12345, "nobody's")
        await store.create_connector_token("box")
        with pytest.raises(StoreError):
            await store.create_connector_token("box")
        assert await store.revoke_connector_token("box")
        await store.create_connector_token("box")  # the name is free again
    finally:
        await store.close()


async def test_usage_totals(tmp_path: Path) -> None:
    store = await Store.open(url(tmp_path))
    try:
        u = await store.create_user("ana")
        await store.usage.add(
            [
                row(1, user_id=u.id, model="x", prompt_tokens=1, completion_tokens=2),
                row(2, user_id=u.id, model="y", prompt_tokens=10, completion_tokens=20),
                row(3, model="y", status=401),
            ]
        )
        by_user = {t.group: t for t in await store.usage.totals("user")}
        assert by_user["ana"].requests == 2 and by_user["ana"].completion_tokens == 22
        assert by_user["(configured key)"].errors == 1
        by_model = {t.group: t.requests for t in await store.usage.totals("model")}
        assert by_model == {"x": 1, "y": 2}
        assert await store.usage.tokens_since(0, 0) == 0
        days = await store.usage.by_day_and_model(u.id, 0)
        assert [(m, r) for _, m, r, _, _ in days] == [("x", 1), ("y", 1)]
        async with store.engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(meta)) == 1
    finally:
        await store.close()


async def test_a_large_usage_batch_lets_requests_run_between_its_slices(tmp_path: Path) -> None:
    from broker.accounts.usage import USAGE_SLICE

    store = await Store.open(url(tmp_path))
    seen: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("INSERT INTO usage"):
            seen.append("insert")

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        rows = [row(20_000 + i) for i in range(USAGE_SLICE * 5)]
        writing = True

        async def other_work() -> None:
            while writing:
                seen.append("tick")
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        await store.usage.add(rows)
        writing = False
        await ticker
        # Five statements, and the event loop served other work between each two of them.
        inserts = [i for i, what in enumerate(seen) if what == "insert"]
        assert len(inserts) == 5
        assert all("tick" in seen[a:b] for a, b in itertools.pairwise(inserts))
        totals = await store.usage.totals(by="model")
        assert sum(t.requests for t in totals) == len(rows)
    finally:
        await store.close()


def full_rows(user_id: int, key_id: int) -> list[UsageRow]:
    """Rows that set every column, each to a value no other column has, and rows of Nones."""
    return [
        UsageRow(
            time=1_700_000_000.25 + i,
            request_id=f"req_full_{i}",
            endpoint="/v1/messages",
            status=200 + i,
            duration_ms=12.5 + i,
            user_id=user_id,
            key_id=key_id,
            model=f"model-{i}",
            connector=f"box-{i}",
            prompt_tokens=1000 + i,
            completion_tokens=2000 + i,
            ttfb_ms=3.25 + i,
            cancelled=i % 2 == 1,
            connector_id=4000 + i,
        )
        for i in range(3)
    ] + [row(9, endpoint="/api/chat", model=None, cancelled=True)]


@pytest.mark.parametrize("path", ["driver", "sqlalchemy"])
async def test_usage_rows_come_back_exactly_as_written(tmp_path: Path, path: str) -> None:
    store = await Store.open(url(tmp_path))
    try:
        if path == "sqlalchemy":
            store.usage._driver_insert = None  # as for a driver with named parameters
        user, _ = await store.sign_in(5, "erin", "Erin")
        _, key = await store.create_key(user.id, "k")
        written = full_rows(user.id, key.id)
        assert await store.usage.add(written) == len(written)
        assert await store.usage.rows() == written
        [found] = [k for k in await store.keys(user.id) if k.id == key.id]
        assert found.last_used == written[2].time
    finally:
        await store.close()


def test_the_driver_insert_is_positional_and_returns_nothing() -> None:
    for dialect in (sqlite.dialect(), postgresql.asyncpg.dialect()):
        found = driver_insert(dialect)
        assert found is not None
        sql, values = found
        assert "RETURNING" not in sql.upper()
        assert all(name in sql for name in USAGE_COLUMNS)
        assert len(values(row(1))) == len(USAGE_COLUMNS)
    # Named parameters (psycopg): SQLAlchemy's own insert instead.
    assert driver_insert(postgresql.psycopg.dialect()) is None


async def test_flushes_at_once_write_each_row_once(tmp_path: Path) -> None:
    """A flush called while another writes (a test flushing by hand) takes no row twice."""
    store = await Store.open(url(tmp_path))
    try:
        ledger = UsageLedger(store, interval=3600)
        real = store.usage.add
        gate = asyncio.Event()

        async def slow(rows: list[UsageRow]) -> int:
            await gate.wait()
            return await real(rows)

        store.usage.add = slow  # type: ignore[method-assign]
        for i in range(10):
            ledger.record(row(i))
        first = asyncio.create_task(ledger.flush())
        await asyncio.sleep(0)  # the first write is in progress
        for i in range(10, 15):
            ledger.record(row(i))
        second = asyncio.create_task(ledger.flush())
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, second)
        assert ledger.queued == 0
        ids = [r.request_id for r in await store.usage.rows()]
        assert sorted(ids) == sorted(f"req_{i}" for i in range(15))
    finally:
        await store.close()


async def test_a_missing_postgresql_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(StoreError, match=r"asyncpg is not installed.*remotellm\[postgres\]"):
        await Store.open("postgresql+asyncpg://user:pass@127.0.0.1:1/remotellm")
