"""The broker's in-flight count and its drain."""

from __future__ import annotations

import asyncio

import pytest

from broker.lifecycle import Lifecycle


async def test_requests_are_counted_while_their_blocks_run_even_when_they_fail() -> None:
    lifecycle = Lifecycle()
    first, second = lifecycle.request(), lifecycle.request()
    first.__enter__()
    second.__enter__()
    assert lifecycle.active == 2
    assert not first.__exit__(None, None, None)
    assert lifecycle.active == 1
    with pytest.raises(RuntimeError), lifecycle.request():  # an error passes through
        assert lifecycle.active == 2
        raise RuntimeError("a failing request")
    assert lifecycle.active == 1
    assert not await lifecycle.drain(0.01)  # one still in flight
    assert not second.__exit__(None, None, None)
    assert lifecycle.active == 0
    assert await lifecycle.drain(0.1)
    assert lifecycle.draining


async def test_drain_waits_for_the_last_request_or_gives_up_after_the_grace() -> None:
    lifecycle = Lifecycle()
    release = asyncio.Event()

    async def request() -> None:
        with lifecycle.request():
            await release.wait()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert not await lifecycle.drain(0.01)
    drained = asyncio.create_task(lifecycle.drain(5))
    await asyncio.sleep(0)
    assert not drained.done()
    release.set()
    assert await drained
    await task
