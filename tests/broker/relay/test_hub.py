"""Routing: least-loaded connector first, fair ties, and the three ways to find none."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest

from broker.relay.gates import Gate, gate_for
from broker.relay.hub import Hub, Link, NoConnector
from broker.relay.modelbook import FORGET_AFTER

# Hang guard for awaits that must finish promptly; never a timing assertion.
GUARD = 10.0
# A wait long enough that reaching its end means the test is broken.
FOREVER = 3600.0


@dataclass(eq=False)
class FakeLink:
    name: str
    models: frozenset[str] = field(default_factory=frozenset)
    max_concurrency: int = 1
    draining: bool = False
    gate: Gate | None = None
    elsewhere: int = 0
    remote: bool = False


def link(name: str, *models: str, cap: int = 1) -> FakeLink:
    return FakeLink(name, frozenset(models), cap)


async def acquire(
    hub: Hub,
    model: str = "m",
    *,
    exclude: tuple[Link, ...] = (),
    wait_offline: float = 0.0,
    wait_busy: float = 0.0,
) -> Link:
    async with asyncio.timeout(GUARD):
        return await hub.acquire(
            model, exclude=exclude, wait_offline=wait_offline, wait_busy=wait_busy
        )


async def reason(
    hub: Hub,
    model: str = "m",
    *,
    exclude: tuple[Link, ...] = (),
    wait_offline: float = 0.0,
    wait_busy: float = 0.0,
) -> str:
    """The reason acquire() gives for finding no connector."""
    with pytest.raises(NoConnector) as caught:
        await acquire(hub, model, exclude=exclude, wait_offline=wait_offline, wait_busy=wait_busy)
    assert caught.value.model == model
    return caught.value.reason


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------
# Choosing a connector


async def test_acquire_reserves_a_slot() -> None:
    hub = Hub()
    a = link("a", "m", cap=2)
    hub.register(a)
    assert await acquire(hub) is a
    assert hub.load(a) == 1
    assert hub.in_flight() == 1
    hub.release(a)
    assert hub.load(a) == 0
    assert hub.in_flight() == 0


async def test_least_loaded_is_relative_to_capacity() -> None:
    hub = Hub()
    big, small = link("big", "m", cap=10), link("small", "m", cap=2)
    hub.register(big)
    hub.register(small)
    for _ in range(3):
        assert await acquire(hub, exclude=(small,)) is big
    assert await acquire(hub, exclude=(big,)) is small
    # big is at 3/10, small at 1/2: big has more room although it runs more requests.
    assert await acquire(hub) is big
    assert (hub.load(big), hub.load(small)) == (4, 1)


async def test_the_emptiest_connector_is_chosen() -> None:
    hub = Hub()
    a, b = link("a", "m", cap=4), link("b", "m", cap=4)
    hub.register(a)
    hub.register(b)
    for _ in range(2):
        assert await acquire(hub, exclude=(b,)) is a
    assert await acquire(hub) is b
    assert await acquire(hub) is b
    # Now 2/4 each: a tie, so either; then the other one must follow.
    third = await acquire(hub)
    fourth = await acquire(hub)
    assert {third, fourth} == {a, b}


async def test_equal_ratio_prefers_fewer_requests() -> None:
    hub = Hub()
    big, small = link("big", "m", cap=4), link("small", "m", cap=2)
    hub.register(big)
    hub.register(small)
    for _ in range(2):
        await acquire(hub, exclude=(small,))
    await acquire(hub, exclude=(big,))
    # 2/4 and 1/2 are equally full; the one running fewer requests goes first.
    assert await acquire(hub) is small


async def test_ties_rotate_between_equal_connectors() -> None:
    hub = Hub()
    a, b = link("a", "m", cap=4), link("b", "m", cap=4)
    hub.register(a)
    hub.register(b)
    picks: list[Link] = []
    for _ in range(6):
        chosen = await acquire(hub)
        picks.append(chosen)
        hub.release(chosen)
    assert set(picks) == {a, b}
    assert all(x is not y for x, y in itertools.pairwise(picks))


async def test_ties_rotate_among_three() -> None:
    hub = Hub()
    links = [link(n, "m", cap=1) for n in "abc"]
    for each in links:
        hub.register(each)
    picks: list[Link] = []
    for _ in range(9):
        chosen = await acquire(hub)
        picks.append(chosen)
        hub.release(chosen)
    assert sorted(picks.count(each) for each in links) == [3, 3, 3]


async def test_only_connectors_serving_the_model_are_chosen() -> None:
    hub = Hub()
    a, b = link("a", "x", cap=8), link("b", "y", cap=8)
    hub.register(a)
    hub.register(b)
    for _ in range(5):
        assert await acquire(hub, "y") is b
    assert hub.load(a) == 0


async def test_draining_links_are_skipped() -> None:
    hub = Hub()
    a, b = link("a", "m", cap=8), link("b", "m", cap=8)
    a.draining = True
    hub.register(a)
    hub.register(b)
    for _ in range(5):
        assert await acquire(hub) is b
    assert hub.load(a) == 0


async def test_a_model_served_only_by_a_draining_link_is_offline() -> None:
    hub = Hub()
    a = link("a", "m")
    a.draining = True
    hub.register(a)
    assert await reason(hub) == "offline"


async def test_exclude_is_honoured() -> None:
    hub = Hub()
    a, b = link("a", "m", cap=8), link("b", "m", cap=8)
    hub.register(a)
    hub.register(b)
    for _ in range(5):
        assert await acquire(hub, exclude=(a,)) is b
    assert (hub.load(a), hub.load(b)) == (0, 5)


async def test_excluding_every_server_of_a_known_model_is_offline() -> None:
    hub = Hub()
    a = link("a", "m", cap=8)
    hub.register(a)
    assert await reason(hub, exclude=(a,)) == "offline"


# ---------------------------------------------------------------------------
# No connector


async def test_unknown_model_fails_at_once_while_others_are_online() -> None:
    hub = Hub()
    hub.register(link("a", "x"))
    # A long wait_offline would hang the test if the hub waited.
    assert await reason(hub, "nope", wait_offline=FOREVER, wait_busy=FOREVER) == "unknown"


async def test_with_no_connectors_at_all_it_waits_then_says_offline() -> None:
    hub = Hub()
    task = asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=0.0))
    await settle()
    assert not task.done()  # waiting for a connector, not failing as "unknown"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reason(hub, wait_offline=0.01) == "offline"


async def test_a_known_model_whose_connector_left_is_offline_after_the_wait() -> None:
    hub = Hub()
    a, other = link("a", "m"), link("other", "x")
    hub.register(a)
    hub.register(other)
    hub.unregister(a)
    assert "m" not in hub.models()
    task = asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=0.0))
    await settle()
    assert not task.done()  # known model: wait for it to come back, not "unknown"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reason(hub, wait_offline=0.01) == "offline"


async def test_all_busy_is_busy_after_wait_busy() -> None:
    hub = Hub()
    a = link("a", "m", cap=1)
    hub.register(a)
    await acquire(hub)
    # wait_offline does not apply: a connector serves the model, it is only full.
    assert await reason(hub, wait_offline=FOREVER, wait_busy=0.01) == "busy"
    assert hub.load(a) == 1


async def test_no_connector_error_names_reason_and_model() -> None:
    error = NoConnector("busy", "llama3")
    assert (error.reason, error.model) == ("busy", "llama3")
    assert str(error) == "busy: llama3"


# ---------------------------------------------------------------------------
# Waiters are woken


async def test_a_waiter_gets_a_connector_that_registers() -> None:
    hub = Hub()
    task = asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=FOREVER))
    await settle()
    assert not task.done()
    a = link("a", "m")
    hub.register(a)
    assert await asyncio.wait_for(task, GUARD) is a
    assert hub.load(a) == 1


async def test_a_waiter_gets_a_connector_that_starts_serving_the_model() -> None:
    hub = Hub()
    gone, a = link("gone", "m"), link("a", "other")
    hub.register(gone)
    hub.register(a)
    hub.unregister(gone)
    task = asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=FOREVER))
    await settle()
    assert not task.done()
    a.models = frozenset({"other", "m"})
    hub.models_changed(a)
    assert await asyncio.wait_for(task, GUARD) is a


async def test_a_waiter_gets_a_released_slot() -> None:
    hub = Hub()
    a = link("a", "m", cap=1)
    hub.register(a)
    await acquire(hub)
    task = asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=FOREVER))
    await settle()
    assert not task.done()
    hub.release(a)
    assert await asyncio.wait_for(task, GUARD) is a
    assert hub.load(a) == 1


async def test_one_released_slot_serves_one_waiter() -> None:
    hub = Hub()
    a = link("a", "m", cap=1)
    hub.register(a)
    await acquire(hub)
    waiters = [
        asyncio.create_task(hub.acquire("m", wait_offline=FOREVER, wait_busy=FOREVER))
        for _ in range(3)
    ]
    await settle()
    hub.release(a)
    await settle()
    assert sum(w.done() for w in waiters) == 1
    assert hub.load(a) == 1
    for _ in range(2):
        hub.release(a)
        await settle()
    assert all(w.done() for w in waiters)
    assert all(w.result() is a for w in waiters)


async def test_a_waiter_skips_an_excluded_newcomer() -> None:
    hub = Hub()
    a, b = link("a", "m"), link("b", "m")
    task = asyncio.create_task(
        hub.acquire("m", exclude=(a,), wait_offline=FOREVER, wait_busy=FOREVER)
    )
    await settle()
    hub.register(a)
    await settle()
    assert not task.done()
    hub.register(b)
    assert await asyncio.wait_for(task, GUARD) is b


# ---------------------------------------------------------------------------
# Registry


async def test_models_are_the_sorted_union_with_first_seen_times() -> None:
    now = [100.0]
    hub = Hub(clock=lambda: now[0])
    hub.register(link("a", "zeta", "alpha"))
    now[0] = 200.0
    b = link("b", "mid", "alpha")
    hub.register(b)
    assert list(hub.models()) == ["alpha", "mid", "zeta"]
    assert hub.models() == {"alpha": 100.0, "mid": 200.0, "zeta": 100.0}
    hub.unregister(b)
    assert hub.models() == {"alpha": 100.0, "zeta": 100.0}
    # Coming back keeps the first-seen time.
    now[0] = 300.0
    hub.register(b)
    assert hub.models()["mid"] == 200.0


async def test_registry_lists_links() -> None:
    hub = Hub()
    a, b = link("a", "m"), link("b", "m")
    hub.register(a)
    hub.register(b)
    assert hub.links == [a, b]
    hub.unregister(a)
    assert hub.links == [b]
    hub.unregister(a)  # twice is harmless
    assert hub.links == [b]
    assert hub.load(a) == 0


async def test_release_after_unregister_is_harmless() -> None:
    hub = Hub()
    a = link("a", "m")
    hub.register(a)
    await acquire(hub)
    hub.unregister(a)
    hub.release(a)
    assert hub.in_flight() == 0
    assert hub.links == []


async def test_wait_for_models_is_false_when_nothing_comes() -> None:
    hub = Hub()
    hub.register(link("empty"))
    assert await hub.wait_for_models(0.01) is False


async def test_wait_for_models_is_true_at_once_when_served() -> None:
    hub = Hub()
    hub.register(link("a", "m"))
    async with asyncio.timeout(GUARD):
        assert await hub.wait_for_models(FOREVER) is True


async def test_wait_for_models_wakes_when_a_model_appears() -> None:
    hub = Hub()
    task = asyncio.create_task(hub.wait_for_models(FOREVER))
    await settle()
    hub.register(link("empty"))
    await settle()
    assert not task.done()  # a connector with no models is not enough
    hub.register(link("a", "m"))
    assert await asyncio.wait_for(task, GUARD) is True


# ---------------------------------------------------------------------------
# First come, first served


async def test_a_freed_slot_goes_to_the_oldest_waiter_not_a_newcomer() -> None:
    hub = Hub()
    only = link("a", "m")
    hub.register(only)
    await acquire(hub)  # the only slot is taken
    first = asyncio.create_task(acquire(hub, wait_busy=60))
    await settle()
    second = asyncio.create_task(acquire(hub, wait_busy=60))
    await settle()
    # The newcomer is already scheduled when the slot frees: it runs before the
    # waiter wakes, and must still not jump the line.
    newcomer = asyncio.create_task(acquire(hub, wait_busy=60))
    hub.release(only)
    await settle()
    assert first.done() and first.result() is only
    assert not second.done() and not newcomer.done()
    hub.release(only)
    await settle()
    assert second.done() and not newcomer.done()
    hub.release(only)
    assert await newcomer is only


async def test_an_older_waiter_that_cannot_use_a_link_does_not_block_it() -> None:
    hub = Hub()
    a = link("a", "m")
    hub.register(a)
    await acquire(hub)
    picky = asyncio.create_task(acquire(hub, exclude=(a,), wait_offline=60, wait_busy=60))
    await settle()
    other = asyncio.create_task(acquire(hub, wait_busy=60))
    await settle()
    hub.release(a)
    assert await other is a
    assert not picky.done()
    picky.cancel()


# ---------------------------------------------------------------------------
# Forgetting models nobody serves


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_model_nobody_serves_is_waited_for_then_forgotten_after_an_hour() -> None:
    clock = Clock()
    hub = Hub(clock=clock)
    gone, other = link("gone", "m"), link("other", "x")
    hub.register(gone)
    hub.register(other)
    hub.unregister(gone)
    # Its connector may be reconnecting: worth a wait, then 503 ("offline").
    assert hub.knows("m")
    assert await reason(hub, "m") == "offline"
    clock.now += FORGET_AFTER - 1
    assert await reason(hub, "m") == "offline"
    clock.now += 1
    # An hour later it is a model like any other nobody ever served: 404 ("unknown").
    assert not hub.knows("m")
    assert await reason(hub, "m") == "unknown"
    assert hub.remembered() == 1  # only x, which is still served
    assert hub.knows("x")


async def test_a_model_served_by_two_connectors_is_served_until_both_leave() -> None:
    clock = Clock()
    hub = Hub(clock=clock, forget_after=10)
    a, b = link("a", "m"), link("b", "m")
    hub.register(a)
    hub.register(b)
    hub.unregister(a)
    clock.now += 100
    assert hub.knows("m") and list(hub.models()) == ["m"]
    assert await acquire(hub) is b
    hub.unregister(b)
    assert hub.knows("m") and not hub.models()
    clock.now += 10
    assert not hub.knows("m")
    assert hub.remembered() == 0


async def test_a_model_dropped_by_a_models_update_is_remembered_then_forgotten() -> None:
    clock = Clock()
    hub = Hub(clock=clock, forget_after=10)
    a = link("a", "m", "n")
    hub.register(a)
    a.models = frozenset({"n"})
    hub.models_changed(a)
    assert list(hub.models()) == ["n"] and hub.knows("m")
    clock.now += 10
    assert not hub.knows("m") and hub.knows("n")


async def test_the_oldest_models_nobody_serves_are_forgotten_past_the_cap() -> None:
    clock = Clock()
    hub = Hub(clock=clock, remember_at_most=3)
    a = link("a", *(f"m{i}" for i in range(6)))
    hub.register(a)
    for i in range(6):
        clock.now += 1
        a.models = a.models - {f"m{i}"}
        hub.models_changed(a)
    assert hub.remembered() == 3
    assert [hub.knows(f"m{i}") for i in range(6)] == [False] * 3 + [True] * 3


async def test_a_model_back_within_the_window_keeps_its_first_seen_time() -> None:
    clock = Clock(100.0)
    hub = Hub(clock=clock, forget_after=10)
    a = link("a", "m")
    hub.register(a)
    hub.unregister(a)
    clock.now = 105.0
    hub.register(a)
    assert hub.models() == {"m": 100.0}
    hub.unregister(a)
    clock.now = 200.0
    hub.register(a)
    assert hub.models() == {"m": 200.0}  # forgotten in between: seen anew


async def test_models_of_a_link_not_registered_are_not_taken() -> None:
    hub = Hub()
    stray = link("stray", "m")
    hub.models_changed(stray)
    assert not hub.models() and not hub.knows("m") and hub.remembered() == 0


async def test_the_hubs_memory_of_models_stays_bounded_under_churn() -> None:
    clock = Clock()
    hub = Hub(clock=clock, remember_at_most=500)
    for round_ in range(50):
        clock.now += 1
        churn = link(f"c{round_}", *(f"r{round_}-m{i}" for i in range(100)))
        hub.register(churn)
        assert hub.remembered() <= 500 + 100
        hub.unregister(churn)
        assert hub.remembered() <= 500
    assert not hub.models()
    clock.now += FORGET_AFTER
    hub.knows("anything")
    assert hub.remembered() == 0


def test_models_served_are_counted_once_across_connectors() -> None:
    hub = Hub()
    assert hub.served_count() == 0
    for each in (link("a", "x", "y"), link("b", "y", "z"), link("c")):
        hub.register(each)
    assert hub.served_count() == 3
    assert hub.first_seen("y") is not None and hub.first_seen("nope") is None


def test_a_forgotten_model_is_told_to_whoever_keeps_something_for_it() -> None:
    clock = Clock()
    forgotten: list[str] = []
    hub = Hub(clock=clock, forget_after=10, on_forget=forgotten.append)
    gone = link("a", "old", "kept")
    hub.register(gone)
    hub.register(link("b", "kept"))
    hub.unregister(gone)
    assert hub.first_seen("old") is None  # no longer served: not listed, only remembered
    clock.now += 10
    assert not hub.knows("old")
    assert forgotten == ["old"]


# ---------------------------------------------------------------------------
# In turn by user


async def queue_up(hub: Hub, user: str, count: int) -> list[asyncio.Task[Link]]:
    """`count` requests of `user` waiting, in that order."""
    tasks = []
    for _ in range(count):
        tasks.append(
            asyncio.create_task(hub.acquire("m", user=user, wait_offline=60, wait_busy=60))
        )
        await settle()
    return tasks


async def serve_one_by_one(
    hub: Hub, only: Link, waiting: dict[str, list[asyncio.Task[Link]]]
) -> str:
    """Free `only`'s slot until nobody waits: who got it each time, by user."""
    order = []
    while hub.queued():
        hub.release(only, "holder" if not order else order[-1])
        await settle()
        done = [user for user, tasks in waiting.items() for t in tasks if t.done()]
        for user, tasks in waiting.items():
            waiting[user] = [t for t in tasks if not t.done()]
        assert len(done) == 1
        order.append(done[0])
    return "".join(order)


async def test_a_flood_does_not_starve_a_user_who_asks_later() -> None:
    hub = Hub()
    only = link("a", "m")
    hub.register(only)
    await acquire_for(hub, "holder")
    flood = await queue_up(hub, "A", 8)
    late = await queue_up(hub, "B", 2)
    order = await serve_one_by_one(hub, only, {"A": flood, "B": late})
    assert order == "ABABAAAAAA"


async def test_fifo_order_is_kept_for_the_benchmark() -> None:
    hub = Hub(order="fifo")
    only = link("a", "m")
    hub.register(only)
    await acquire_for(hub, "holder")
    flood = await queue_up(hub, "A", 3)
    late = await queue_up(hub, "B", 1)
    assert await serve_one_by_one(hub, only, {"A": flood, "B": late}) == "AAAB"


async def test_a_waiter_that_gives_up_leaves_the_line_and_blocks_nobody() -> None:
    hub = Hub()
    only = link("a", "m")
    hub.register(only)
    await acquire_for(hub, "holder")
    first, hung_up = await queue_up(hub, "A", 2)
    timed_out = asyncio.create_task(hub.acquire("m", user="C", wait_offline=0, wait_busy=0.01))
    (late,) = await queue_up(hub, "B", 1)
    hung_up.cancel()
    with pytest.raises(NoConnector):
        await timed_out
    await settle()
    assert hub.queued("m") == 2
    assert await serve_one_by_one(hub, only, {"A": [first], "B": [late]}) == "AB"
    assert hub.queued() == 0


async def test_a_slot_handed_to_a_waiter_as_it_is_cancelled_goes_to_the_next() -> None:
    hub = Hub()
    only = link("a", "m")
    hub.register(only)
    await acquire_for(hub, "holder")
    (first,) = await queue_up(hub, "A", 1)
    (second,) = await queue_up(hub, "B", 1)
    hub.release(only, "holder")  # hands the slot to A's waiter, which has not run yet
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done() and second.result() is only
    assert hub.load(only) == 1


# ---------------------------------------------------------------------------
# A user's share of one connector


async def acquire_for(hub: Hub, user: str) -> Link:
    async with asyncio.timeout(GUARD):
        return await hub.acquire("m", user=user, wait_offline=0, wait_busy=0)


async def test_a_user_at_its_share_waits_while_another_can_use_the_slot() -> None:
    hub = Hub(max_user_share=0.5)
    wide = link("a", "m", cap=4)
    hub.register(wide)
    for _ in range(4):
        await acquire_for(hub, "A")  # nobody waits: an idle slot serves whoever asks
    flood = await queue_up(hub, "A", 2)
    late = await queue_up(hub, "B", 3)
    for _ in range(2):
        hub.release(wide, "A")
        await settle()
    # A still holds 2 of 4 (its share) when the slots free: B gets both, out of A's turn.
    assert sum(t.done() for t in late) == 2 and not any(t.done() for t in flood)
    hub.release(wide, "A")
    await settle()
    # A holds 1 of 4, under its share: the rotation's order again (A was at the head).
    assert flood[0].done() and not late[2].done()


async def test_a_user_at_its_share_takes_a_slot_nobody_else_can_use() -> None:
    hub = Hub(max_user_share=0.5)
    wide = link("a", "m", cap=2)
    hub.register(wide)
    await acquire_for(hub, "A")
    await acquire_for(hub, "B")
    (more,) = await queue_up(hub, "A", 1)
    hub.release(wide, "B")
    assert await asyncio.wait_for(more, GUARD) is wide  # work-conserving: no slot left idle
    assert hub.load(wide) == 2


async def test_a_user_at_its_share_of_one_connector_is_served_by_another() -> None:
    hub = Hub(max_user_share=0.5)
    busy, other = link("busy", "m", cap=2), link("other", "m", cap=2)
    hub.register(busy)
    hub.register(other)
    assert await acquire_for(hub, "A") is busy
    for _ in range(3):
        await acquire_for(hub, "X")
    assert hub.load(busy) == 2 and hub.load(other) == 2
    (mine,) = await queue_up(hub, "A", 1)
    (theirs,) = await queue_up(hub, "B", 1)
    hub.release(busy, "X")  # A's turn, but A holds half of busy already: B takes it
    await settle()
    assert theirs.done() and theirs.result() is busy and not mine.done()
    hub.release(other, "X")
    assert await asyncio.wait_for(mine, GUARD) is other


# ---------------------------------------------------------------------------
# Who a connector admits (its gate)


def gated(name: str, *models: str, admitted: set[int], cap: int = 1) -> FakeLink:
    made = link(name, *models, cap=cap)
    made.gate = gate_for(frozenset(admitted), ())
    return made


async def test_a_connector_that_does_not_admit_the_user_is_never_chosen() -> None:
    hub = Hub()
    mine, open_ = gated("mine", "m", admitted={1}, cap=4), link("open", "m", cap=4)
    hub.register(mine)
    hub.register(open_)
    for _ in range(3):
        assert hub.acquire_now("m", 2) is open_
    assert hub.acquire_now("m", 1) is mine  # the emptier one, and it admits user 1
    assert hub.serves("m", user=2) and not hub.serves("m", exclude=(open_,), user=2)


async def test_a_model_only_refusing_connectors_serve_is_refused_at_once() -> None:
    hub = Hub()
    hub.register(gated("mine", "m", "n", admitted={1}))
    hub.register(link("other", "n"))
    with pytest.raises(NoConnector) as caught:
        async with asyncio.timeout(GUARD):
            await hub.acquire("m", user=2, wait_offline=FOREVER, wait_busy=FOREVER)
    assert caught.value.reason == "refused"
    assert hub.refusal("m", 2) == "refused" and hub.refusal("m", 1) is None
    assert hub.refusal("n", 2) is None and hub.refusal("gone", 2) is None
    assert list(hub.models_for(2)) == ["n"] and list(hub.models_for(1)) == ["m", "n"]
    assert list(hub.models_for("cfg:key")) == ["n"]


async def test_a_connectors_own_block_is_told_apart_from_its_owners_rule() -> None:
    hub = Hub()
    blocking = link("blocking", "m")
    blocking.gate = gate_for(None, ("2",))
    hub.register(blocking)
    assert hub.refusal("m", 2) == "blocked" and hub.refusal("m", 3) is None


async def test_a_waiter_is_handed_only_a_slot_of_a_connector_that_admits_it() -> None:
    hub = Hub()
    mine = gated("mine", "m", admitted={1})
    hub.register(mine)
    hub.register(open_ := link("open", "m"))
    held = [hub.acquire_now("m", 1), hub.acquire_now("m", 1)]
    assert set(held) == {mine, open_}
    waiting = asyncio.create_task(hub.acquire("m", user=2, wait_offline=FOREVER, wait_busy=FOREVER))
    await settle()
    hub.release(mine, 1)  # a slot user 2 may not take: it keeps waiting
    await settle()
    assert not waiting.done() and hub.load(mine) == 0
    hub.release(open_, 1)
    async with asyncio.timeout(GUARD):
        assert await waiting is open_


async def test_a_gate_that_changes_wakes_the_waiters_to_look_again() -> None:
    hub = Hub()
    mine = link("mine", "m")
    hub.register(mine)
    assert hub.acquire_now("m", 1) is mine
    waiting = asyncio.create_task(hub.acquire("m", user=2, wait_offline=FOREVER, wait_busy=FOREVER))
    await settle()
    mine.gate = gate_for(frozenset({1}), ())  # the owner shares it with nobody else now
    hub.models_changed(mine)
    with pytest.raises(NoConnector) as caught:
        async with asyncio.timeout(GUARD):
            await waiting
    assert caught.value.reason == "refused"


async def test_least_loaded_counts_the_slots_other_brokers_use() -> None:
    """A connector of the cluster busy with other brokers' requests (`elsewhere`) is as
    loaded as one this hub filled itself; at capacity, it is not handed out."""
    hub = Hub()
    here, there = link("here", "m", cap=4), link("there", "m", cap=4)
    hub.register(here)
    hub.register(there)
    there.elsewhere = 2
    assert await acquire(hub) is here
    assert await acquire(hub) is here  # 1 of 4 here against 2 of 4 there
    assert {await acquire(hub), await acquire(hub)} == {here, there}  # 2 and 2: rotate
    there.elsewhere = 4
    assert hub.acquire_now("m") is here


async def test_a_local_link_is_preferred_to_a_remote_one_as_loaded() -> None:
    hub = Hub()
    there, here = link("there", "m", cap=2), link("here", "m", cap=2)
    there.remote = True
    hub.register(there)
    hub.register(here)
    assert [await acquire(hub) for _ in range(4)] == [here, there, here, there]
