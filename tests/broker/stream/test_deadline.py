"""The request timeout (`broker.stream.deadline.within`) behaves as `asyncio.timeout` does.

Every case runs against both, on both event loops (`BOTH_LOOPS` in conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from broker.stream.deadline import within

Limit = Callable[[float, Coroutine[Any, Any, None]], Awaitable[None]]


async def with_asyncio_timeout(delay: float, work: Coroutine[Any, Any, None]) -> None:
    async with asyncio.timeout(delay):
        await work


@pytest.fixture(params=[within, with_asyncio_timeout], ids=["within", "asyncio.timeout"])
def limit(request: pytest.FixtureRequest) -> Limit:
    chosen: Limit = request.param
    return chosen


def cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


class Cancelled(asyncio.CancelledError):
    """A subclass: `asyncio.timeout` leaves it a cancellation."""


async def test_work_done_in_time_leaves_no_timer_behind(limit: Limit) -> None:
    await limit(0.05, asyncio.sleep(0))
    await asyncio.sleep(0.1)  # a timer left running would cancel this
    assert cancelling() == 0


async def test_work_past_its_time_raises_timeout_error_from_the_cancel(limit: Limit) -> None:
    with pytest.raises(TimeoutError) as raised:
        await limit(0.01, asyncio.sleep(10))
    assert isinstance(raised.value.__cause__, asyncio.CancelledError)
    assert cancelling() == 0
    await asyncio.sleep(0)  # and the task is not left cancelled


async def test_a_cancel_from_elsewhere_stays_a_cancel(limit: Limit) -> None:
    inner = asyncio.create_task(limit(10, asyncio.sleep(10)))
    await asyncio.sleep(0)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_a_cancel_from_elsewhere_after_the_timer_fired_stays_a_cancel(limit: Limit) -> None:
    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)  # the timer fired at 0.01; the cancel lands at 0.03

    inner = asyncio.create_task(limit(0.01, slow_cleanup()))
    await asyncio.sleep(0.03)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_work_that_swallows_the_timers_cancel_returns_and_is_not_left_cancelled(
    limit: Limit,
) -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    await limit(0.01, stubborn())
    assert cancelling() == 0
    await asyncio.sleep(0.02)


async def test_another_error_after_the_timer_fired_stays_that_error(limit: Limit) -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    with pytest.raises(ValueError, match="cleanup failed"):
        await limit(0.01, fails_on_cancel())
    assert cancelling() == 0


async def test_a_subclass_of_the_cancel_stays_a_cancel(limit: Limit) -> None:
    async def raises_a_subclass() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise Cancelled() from None

    with pytest.raises(Cancelled):
        await limit(0.01, raises_a_subclass())
    assert cancelling() == 0


async def test_a_task_already_cancelled_once_still_times_out(limit: Limit) -> None:
    async def body() -> int:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)  # cancelled below, and never uncancelled
        with pytest.raises(TimeoutError):
            await limit(0.01, asyncio.sleep(10))
        return cancelling()

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == 1
