"""The usage ledger on a real SQLite store: one row the store refuses never holds up the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from structlog.testing import capture_logs

from broker.accounts.ledger import UsageLedger, row_refused
from broker.accounts.records import UsageRow
from broker.accounts.store import Store
from tests.broker.accounts.test_store import row, url

BAD_ROWS = (
    row(900, model="\udcff"),  # a lone surrogate: SQLite's driver cannot encode it
    row(901, prompt_tokens=2**70),  # beyond a 64-bit integer
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(url(tmp_path))
    yield opened
    await opened.close()


async def stored_ids(store: Store) -> list[str]:
    return [r.request_id for r in await store.usage.rows()]


async def written(ledger: UsageLedger, count: int) -> None:
    async with asyncio.timeout(10):
        while ledger.written < count:
            await asyncio.sleep(0.01)


async def test_a_row_the_store_refuses_is_set_aside_and_every_other_row_is_written(
    store: Store,
) -> None:
    ledger = UsageLedger(store, interval=0.01)
    with capture_logs() as logs:
        for i in range(5):
            ledger.record(row(i))
        ledger.record(BAD_ROWS[0])
        for i in range(5, 9):
            ledger.record(row(i))
        ledger.record(BAD_ROWS[1])
        ledger.start()
        await written(ledger, 9)
        # Later rows keep landing: the ledger did not stall on the bad ones.
        for i in range(9, 12):
            ledger.record(row(i))
        await written(ledger, 12)
        await ledger.close()
    assert await stored_ids(store) == [f"req_{i}" for i in range(12)]
    assert list(ledger.set_aside) == list(BAD_ROWS)
    refused = [e for e in logs if e["event"].startswith("the store refused a usage row")]
    assert [e["request_id"] for e in refused] == ["req_900", "req_901"]  # each logged once
    assert "UnicodeEncodeError" in refused[0]["reason"]
    assert not [e for e in logs if "lost" in e["event"] or "retry" in e["event"]]


async def test_shutdown_writes_every_queued_row_around_a_refused_one(store: Store) -> None:
    ledger = UsageLedger(store, interval=3600)
    ledger.start()
    rows = [row(0), row(1), BAD_ROWS[0], row(2)]
    for each in rows:
        ledger.record(each)
    with capture_logs() as logs:
        await ledger.close()
    assert await stored_ids(store) == ["req_0", "req_1", "req_2"]
    assert ledger.queued == 0
    assert not [e for e in logs if "lost" in e["event"]]


async def test_a_store_that_goes_down_while_a_bad_row_is_looked_for_loses_and_repeats_nothing(
    store: Store,
) -> None:
    """The search for the bad row meets a lost connection: what was written stays written
    (once), the rest stays queued, and the next round writes it."""
    ledger = UsageLedger(store, interval=3600)
    real = store.usage.add
    calls: list[int] = []

    async def down_on_the_third_write(rows: list[UsageRow]) -> int:
        calls.append(len(rows))
        if len(calls) == 3:
            raise sa_exc.OperationalError("INSERT", {}, ConnectionError("connection lost"))
        return await real(rows)

    store.usage.add = down_on_the_third_write  # type: ignore[method-assign]
    try:
        for i in range(4):
            ledger.record(row(i))
        ledger.record(BAD_ROWS[0])  # in the second half
        ledger.record(row(4))
        with pytest.raises(sa_exc.OperationalError):
            await ledger.flush()
        # The whole batch was refused, its first half written, then the store went down.
        assert calls == [6, 3, 3]
        assert await stored_ids(store) == ["req_0", "req_1", "req_2"]
        assert ledger.queued == 3 and not ledger.set_aside
        await ledger.flush()
    finally:
        store.usage.add = real  # type: ignore[method-assign]
        await ledger.close()
    assert await stored_ids(store) == [f"req_{i}" for i in range(5)]
    assert list(ledger.set_aside) == [BAD_ROWS[0]]


async def test_a_store_that_is_down_keeps_every_row_queued_for_the_next_round(store: Store) -> None:
    ledger = UsageLedger(store, interval=3600)
    real = store.usage.add

    async def down(rows: list[UsageRow]) -> int:
        raise sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))

    store.usage.add = down  # type: ignore[method-assign]
    for i in range(3):
        ledger.record(row(i))
    with pytest.raises(sa_exc.OperationalError):
        await ledger.flush()
    assert ledger.queued == 3 and not ledger.set_aside  # nothing refused, nothing dropped
    store.usage.add = real  # type: ignore[method-assign]
    await ledger.close()
    assert await stored_ids(store) == ["req_0", "req_1", "req_2"]


async def test_a_store_that_refuses_every_row_alike_keeps_them_queued(store: Store) -> None:
    """A refusal of every row (here a constraint the store applies to any insert) is the
    store's fault, not the rows': none is set aside, and they land once it is lifted."""
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER deny BEFORE INSERT ON usage BEGIN"
            " SELECT RAISE(ABORT, 'inserts are refused'); END"
        )
    ledger = UsageLedger(store, interval=3600)
    for i in range(5):
        ledger.record(row(i))
    with pytest.raises(sa_exc.IntegrityError):
        await ledger.flush()
    assert ledger.queued == 5 and not ledger.set_aside
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TRIGGER deny")
    await ledger.flush()
    assert await stored_ids(store) == [f"req_{i}" for i in range(5)]
    assert not ledger.set_aside


async def test_a_lone_bad_row_waits_for_a_good_one_or_the_shutdown(store: Store) -> None:
    """With nothing else to write, the store's refusal of one row does not show whether it
    takes rows at all: the row waits, and is set aside beside the next row that lands, or at
    shutdown, with a log line rather than counted lost."""
    ledger = UsageLedger(store, interval=3600)
    ledger.record(BAD_ROWS[0])
    with pytest.raises(UnicodeEncodeError):
        await ledger.flush()
    assert ledger.queued == 1 and not ledger.set_aside
    ledger.record(row(0))
    await ledger.flush()
    assert list(ledger.set_aside) == [BAD_ROWS[0]] and ledger.queued == 0
    ledger.record(BAD_ROWS[1])
    with capture_logs() as logs:
        await ledger.close()
    assert list(ledger.set_aside) == list(BAD_ROWS) and ledger.queued == 0
    assert not [e for e in logs if "lost" in e["event"]]
    assert await stored_ids(store) == ["req_0"]


def test_a_bug_of_ours_is_not_taken_for_a_row_the_store_refuses() -> None:
    assert not row_refused(TypeError("unsupported operand"))
    assert not row_refused(sa_exc.StatementError("INSERT", "INSERT", {}, TypeError("x")))
    assert row_refused(
        sa_exc.StatementError(
            "INSERT",
            "INSERT",
            {},
            UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
        )
    )
    in_flight = RuntimeError("pool closed")
    in_flight.__context__ = ValueError("an unrelated value error being handled")
    assert not row_refused(in_flight)
