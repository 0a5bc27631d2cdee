"""The store probe behind /readyz: bounded, cached briefly, shared by callers at once."""

from __future__ import annotations

import asyncio

import pytest

from broker.accounts.storeprobe import StoreProbe


class Store:
    """Stands in for the store's ping: counts the questions, answers as told."""

    def __init__(self) -> None:
        self.asked = 0
        self.failing = False
        self.hanging = False
        self.release = asyncio.Event()

    async def ping(self) -> None:
        self.asked += 1
        if self.hanging:
            await asyncio.Event().wait()
        await self.release.wait()
        if self.failing:
            raise OSError("database is locked")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def probe(store: Store, clock: Clock, timeout: float = 5.0) -> StoreProbe:
    return StoreProbe(store.ping, timeout=timeout, ttl=1.0, clock=clock)


async def test_an_answering_store_is_ready_and_asked_once_a_ttl() -> None:
    store, clock = Store(), Clock()
    store.release.set()
    ready = probe(store, clock)
    assert [await ready.answers() for _ in range(50)] == [True] * 50
    assert store.asked == 1
    clock.now += 1.0
    assert await ready.answers()
    assert store.asked == 2


async def test_callers_at_once_share_one_question() -> None:
    store, clock = Store(), Clock()
    ready = probe(store, clock)
    waiting = [asyncio.create_task(ready.answers()) for _ in range(20)]
    await asyncio.sleep(0)
    store.release.set()
    assert await asyncio.gather(*waiting) == [True] * 20
    assert store.asked == 1


async def test_a_failing_store_is_not_ready_until_it_answers_again() -> None:
    store, clock = Store(), Clock()
    store.release.set()
    store.failing = True
    ready = probe(store, clock)
    assert not await ready.answers()
    store.failing = False
    assert not await ready.answers()  # the answer is kept for the ttl
    clock.now += 1.0
    assert await ready.answers()


async def test_a_hanging_store_is_not_ready_after_the_timeout() -> None:
    store, clock = Store(), Clock()
    store.hanging = True
    assert not await probe(store, clock, timeout=0.05).answers()


async def test_a_caller_that_leaves_does_not_cancel_the_question_others_wait_on() -> None:
    store, clock = Store(), Clock()
    ready = probe(store, clock)
    leaving = asyncio.create_task(ready.answers())
    staying = asyncio.create_task(ready.answers())
    await asyncio.sleep(0)
    leaving.cancel()
    store.release.set()
    assert await staying
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert store.asked == 1
