"""The request timeout (`broker.trip.within`) behaves as `asyncio.timeout` does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from broker.trip import within


async def test_work_done_in_time_leaves_no_timer_behind() -> None:
    await within(0.05, asyncio.sleep(0))
    await asyncio.sleep(0.1)  # a timer left running would cancel this
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_work_past_its_time_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.sleep(10))
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # and the task is not left cancelled


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    inner = asyncio.create_task(within(10, asyncio.sleep(10)))
    await asyncio.sleep(0)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_a_cancel_from_elsewhere_wins_over_the_timeout() -> None:
    async def cancelled_as_the_timeout_fires() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.01, task.cancel)
        await asyncio.sleep(10)

    inner = asyncio.create_task(within(0.01, cancelled_as_the_timeout_fires()))
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_work_that_swallows_the_timeouts_cancel_returns_and_is_not_left_cancelled() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    await within(0.01, stubborn())
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.02)
