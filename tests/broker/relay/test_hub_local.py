"""`local_only`: a request forwarded by another broker of the cluster takes this broker's own
connectors only, whatever remote ones the hub lists, and whenever they came."""

from __future__ import annotations

import asyncio

from broker.relay.hub import Hub
from tests.broker.relay.test_hub import FOREVER, GUARD, FakeLink, link, settle


def remote(name: str, *models: str, cap: int = 1) -> FakeLink:
    found = link(name, *models, cap=cap)
    found.remote = True
    return found


async def test_local_only_never_takes_a_remote_link_even_a_free_one() -> None:
    hub = Hub()
    local, far = link("local", "m"), remote("far", "m", cap=8)
    hub.register(far)
    assert hub.serves("m") and not hub.serves("m", local_only=True)
    assert hub.acquire_now("m", local_only=True) is None
    hub.register(local)
    assert hub.acquire_now("m", local_only=True) is local
    assert hub.acquire_now("m", local_only=True) is None  # the local one is busy now
    assert hub.load(far) == 0


async def test_a_local_only_waiter_is_not_handed_a_remote_link_that_comes_meanwhile() -> None:
    hub = Hub()
    local = link("local", "m")
    hub.register(local)
    assert hub.acquire_now("m") is local
    waiting = asyncio.create_task(
        hub.acquire("m", local_only=True, wait_offline=FOREVER, wait_busy=FOREVER)
    )
    await settle()
    far = remote("far", "m", cap=8)
    hub.register(far)  # free, and the waiter's turn: still not for it
    await settle()
    assert not waiting.done() and hub.load(far) == 0
    hub.release(local)
    assert await asyncio.wait_for(waiting, GUARD) is local
