"""The usage ledger: rows are queued in memory and written in batches, off the hot path.

`record` never waits. A background task writes what has gathered every `interval`
seconds in one transaction; `close` writes everything still queued, so a clean
shutdown loses no row. If the store fails (down, locked, its connection lost, a
permission or a table missing), rows stay queued and the write is retried. A batch
the store refuses for a value it cannot hold or a broken constraint holds a row it
cannot take: the batch is split until that row is found, the row is set aside and
logged once, and every other row is written. One bad row never stalls the ledger for
everyone; and a store that refuses every row alike is not taken for a store of bad
rows: they wait in the queue until it takes them.

A write in progress is never cancelled: `close` waits for it, and cancelling `close`
itself only ends the caller's wait. Cancelling a transaction
between its statements could leave its connection holding SQLite's write lock until
the garbage collector found it, and the rows taken off the queue for the write would
be lost or written twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import sqlalchemy.exc as sa_exc
import structlog

from broker.accounts.records import UsageRow
from broker.accounts.store import Store
from shared.text import shown

log = structlog.get_logger("remotellm.broker.ledger")

MAX_QUEUED = 1_000_000
MAX_SET_ASIDE = 1000
"""Refused rows kept in memory for a look (the log line of each is the record)."""


def row_refused(exc: BaseException) -> bool:
    """Whether a failed write says the store refuses what it was given (a value it cannot
    hold, a broken constraint), rather than that it cannot write now.

    Only such refusals are pinned on a row. Anything else (a store that is down, locked,
    read-only, missing a table or a permission) would refuse every row alike: the rows
    stay queued and the write is retried, rather than all set aside one by one.
    """
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
        return True
    # Raised while the driver converts the row's values (an unencodable string, an integer
    # beyond the column's range), perhaps wrapped by the driver and by SQLAlchemy: asyncpg's
    # DataError is a ValueError. Only the causes are followed, not an exception that merely
    # was in flight; a TypeError is a bug of ours, not a row the store refuses.
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, (ValueError, ArithmeticError)):
            return True
        orig = seen.orig if isinstance(seen, sa_exc.StatementError) else None
        seen = orig if isinstance(orig, BaseException) else seen.__cause__
    return False


def refusal(exc: BaseException) -> str:
    """Why the store refused a row, for the log: the driver's error, without the SQL."""
    cause = exc.orig if isinstance(exc, sa_exc.StatementError) and exc.orig else exc
    return f"{type(cause).__name__}: {shown(str(cause), 200)}"


class UsageLedger:
    def __init__(self, store: Store, interval: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        self._queue: list[UsageRow] = []
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._round: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.written = 0
        self.set_aside: collections.deque[UsageRow] = collections.deque(maxlen=MAX_SET_ASIDE)
        """The latest rows the store refused, each logged once when it was set aside."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    def record(self, row: UsageRow) -> None:
        if len(self._queue) >= MAX_QUEUED:
            log.error("usage ledger is full; dropping the oldest row", queued=len(self._queue))
            del self._queue[0]
        self._queue.append(row)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.interval)
            self._wake.clear()
            self._round = asyncio.create_task(self.flush(), name="usage-ledger-write")
            try:
                # Shielded: stopping this task leaves the write running, for `close` to await.
                await asyncio.shield(self._round)
                failures = 0
            except Exception as exc:
                failures += 1
                log.error("cannot write usage; will retry", error=str(exc), queued=self.queued)
                self._wake.set()
                await asyncio.sleep(min(30.0, 2.0**failures))

    async def flush(self, final: bool = False) -> None:
        """Write the rows queued when called (rows stay queued if the write fails).

        Rows that arrive while it writes wait for the next round: under steady traffic,
        looping until the queue is empty would write a handful of rows at a time, back
        to back, and cost a database round trip every few requests. `final` (at shutdown)
        sets aside a refused row even when no other row could show the store takes rows.
        """
        async with self._writing:  # one write at a time, or two would take the same rows
            due = len(self._queue)
            while due > 0 and self._queue:
                batch = self._queue[: min(5000, due)]
                del self._queue[: len(batch)]
                due -= len(batch)
                await self._write(batch, final)

    async def _write(self, batch: list[UsageRow], final: bool) -> None:
        """Write `batch`, taken off the front of the queue; raises when the store cannot write,
        with every row not written back at the front of the queue, in order.

        A batch the store refuses for a value is split in halves until the rows it refuses
        are found. They are set aside only if the store took some other row (or `final`):
        when it refuses every row alike, the fault is the store's, and the rows wait.
        """
        parts = [batch]
        refused: list[tuple[UsageRow, BaseException]] = []
        wrote = False
        while parts:
            rows = parts.pop(0)
            try:
                await self.store.usage.add(rows)
            except Exception as exc:
                if not row_refused(exc):
                    self._requeue(refused, rows, parts)
                    raise
                if len(rows) == 1:
                    refused.append((rows[0], exc))
                else:
                    half = len(rows) // 2
                    parts[0:0] = [rows[:half], rows[half:]]
            else:
                wrote = True
                self.written += len(rows)
        if refused and not (wrote or final):
            self._requeue(refused, [], [])
            raise refused[0][1]
        for row, why in refused:
            self._set_aside(row, why)

    def _requeue(
        self,
        refused: list[tuple[UsageRow, BaseException]],
        rows: list[UsageRow],
        parts: list[list[UsageRow]],
    ) -> None:
        """Put what was not written back at the front of the queue, in its order."""
        back = [row for row, _ in refused]
        back.extend(rows)
        for part in parts:
            back.extend(part)
        self._queue[0:0] = back

    def _set_aside(self, row: UsageRow, exc: BaseException) -> None:
        self.set_aside.append(row)
        log.error(
            "the store refused a usage row; it is set aside",
            request_id=shown(row.request_id),
            reason=refusal(exc),
        )

    async def close(self) -> None:
        """Write everything queued, then stop. Safe to call again, or from several tasks.

        The work runs in a task of its own: cancelling a caller ends its wait, never a
        write in progress.
        """
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name="usage-ledger-close")
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._round is not None:
            with contextlib.suppress(Exception):
                await self._round  # its failure is retried just below
            self._round = None
        for attempt in range(3):
            try:
                while self._queue:
                    # The last attempt sets a refused row aside: no later row will come to
                    # show whether the store takes rows at all.
                    await self.flush(final=attempt == 2)
                return
            except Exception as exc:
                log.error("cannot write usage at shutdown", error=str(exc), attempt=attempt + 1)
                await asyncio.sleep(0.5)
        log.error("usage rows lost at shutdown", lost=self.queued)
