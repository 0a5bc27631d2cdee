"""A stream's inbox: events in order, a reader that waits, a cancelled wait that leaves no trace."""

from __future__ import annotations

import asyncio

import pytest

from broker.relay.link import Inbox, LinkLost
from shared import protocol as p


async def test_events_come_out_in_the_order_they_went_in() -> None:
    inbox = Inbox()
    events = [p.ResponseHead(1, 200, ()), p.ResponseBody(1, b"a"), p.End(1)]
    for event in events:
        inbox.put_nowait(event)
    assert not inbox.empty()
    assert inbox.get_nowait() == events[0]
    assert [await inbox.get(), await inbox.get()] == events[1:]
    assert inbox.empty()
    with pytest.raises(IndexError):
        inbox.get_nowait()


async def test_a_reader_waits_for_the_next_event() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    lost = LinkLost("c")
    inbox.put_nowait(lost)
    assert await asyncio.wait_for(reader, 5) is lost


async def test_a_cancelled_wait_leaves_the_inbox_usable() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait(p.End(1))  # no cancelled waiter to wake
    assert await asyncio.wait_for(inbox.get(), 5) == p.End(1)


async def test_an_event_put_as_the_reader_is_cancelled_is_kept_for_the_next_read() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()  # its waiter is cancelled; the reader has not run yet
    inbox.put_nowait(p.End(1))  # a connector frame in the same loop iteration
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await asyncio.wait_for(inbox.get(), 5) == p.End(1)


async def test_a_reader_cancelled_after_its_event_came_leaves_the_event_in_the_inbox() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(p.End(1))  # the reader is woken but has not resumed
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert inbox.get_nowait() == p.End(1)
