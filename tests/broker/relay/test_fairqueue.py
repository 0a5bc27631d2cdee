"""The waiting line's order: round robin by user, one request per turn, and FIFO for the bench."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.relay.fairqueue import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    return [queue.pop() for _ in range(len(queue))]


def test_a_flood_and_a_trickle_interleave_one_for_one() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(200):
        queue.enqueue("A", f"A{i}")
    for i in range(20):
        queue.enqueue("B", f"B{i}")
    served = drain(queue)
    # A started waiting first, so A leads each round; B never waits behind more than one of A's.
    assert served[:40] == [name for i in range(20) for name in (f"A{i}", f"B{i}")]
    assert served[40:] == [f"A{i}" for i in range(20, 200)]


def test_a_user_who_starts_waiting_is_served_after_at_most_one_turn_of_each_other() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.enqueue("A", f"A{i}")
        queue.enqueue("C", f"C{i}")
    assert queue.pop() == "A0"
    queue.enqueue("B", "B0")  # joins at the tail, behind one turn of C and one of A
    assert [queue.pop() for _ in range(4)] == ["C0", "A1", "B0", "C1"]


def test_fifo_serves_in_arrival_order_whoever_sent() -> None:
    queue: FairQueue[str] = FairQueue("fifo")
    for name in ("A0", "A1", "B0", "A2", "B1"):
        queue.enqueue(name[0], name)
    assert list(queue) == ["A0", "A1", "B0", "A2", "B1"]
    assert (queue.waiting("A"), queue.waiting("B")) == (3, 2)
    assert drain(queue) == ["A0", "A1", "B0", "A2", "B1"]


def test_iteration_is_the_order_pop_serves() -> None:
    queue: FairQueue[str] = FairQueue()
    for name in ("A0", "A1", "A2", "B0", "C0", "C1"):
        queue.enqueue(name[0], name)
    assert list(queue) == ["A0", "B0", "C0", "A1", "C1", "A2"]
    assert drain(queue) == ["A0", "B0", "C0", "A1", "C1", "A2"]


def test_removing_a_waiter_keeps_its_users_place() -> None:
    queue: FairQueue[str] = FairQueue()
    for name in ("A0", "A1", "B0", "B1"):
        queue.enqueue(name[0], name)
    queue.remove("A0")  # timed out: A's next request keeps A's turn
    assert "A0" not in queue
    assert list(queue) == ["A1", "B0", "B1"]
    queue.remove("A0")  # twice is harmless
    assert len(queue) == 3


def test_removing_a_users_last_waiter_drops_the_user() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.enqueue("A", "A0")
    queue.enqueue("B", "B0")
    queue.remove("A0")
    assert queue.users() == ["B"]
    assert queue.waiting("A") == 0
    queue.enqueue("A", "A1")  # back: at the tail
    assert drain(queue) == ["B0", "A1"]


def test_taking_out_of_turn_sends_the_user_to_the_tail() -> None:
    queue: FairQueue[str] = FairQueue()
    for name in ("A0", "A1", "B0", "B1", "C0"):
        queue.enqueue(name[0], name)
    queue.take("B0")  # A could not use the slot; B had its turn
    assert list(queue) == ["A0", "C0", "B1", "A1"]


def test_an_empty_queue() -> None:
    queue: FairQueue[str] = FairQueue()
    assert len(queue) == 0 and not queue and list(queue) == []
    assert queue.users() == []
    with pytest.raises(IndexError):
        queue.pop()
    queue.remove("nobody")


def test_an_item_cannot_be_queued_twice() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.enqueue("A", "x")
    with pytest.raises(ValueError, match="queued already"):
        queue.enqueue("B", "x")
    assert queue.waiting("A") == 1 and queue.waiting("B") == 0


# A step: enqueue for a user, pop, or remove the n-th waiting item.
Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 3)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 50)),
    ),
    max_size=200,
)


@given(steps)
def test_between_two_turns_of_a_waiting_user_each_other_is_served_at_most_once(
    script: list[Step],
) -> None:
    queue: FairQueue[tuple[int, int]] = FairQueue()
    queued: Counter[int] = Counter()
    since: dict[int, Counter[int]] = {}
    """For each user waiting: who was served since its last turn (or since it began waiting)."""
    serial = 0
    for action, arg in script:
        if action == "enqueue":
            serial += 1
            queue.enqueue(arg, (arg, serial))
            queued[arg] += 1
            since.setdefault(arg, Counter())
        elif action == "pop" and queue:
            user, _ = queue.pop()
            queued[user] -= 1
            for other, served in since.items():
                if other != user:
                    served[user] += 1
                    assert served[user] <= 1, f"{user} served twice while {other} waited"
            since[user] = Counter()
        elif action == "remove" and queue:
            victim = list(queue)[arg % len(queue)]
            queue.remove(victim)
            queued[victim[0]] -= 1
        for user in [u for u, n in queued.items() if n == 0]:
            del queued[user]
            since.pop(user, None)
        assert len(queue) == sum(queued.values())
        assert {u: queue.waiting(u) for u in queued} == dict(queued)


@given(st.lists(st.integers(0, 4), max_size=100))
def test_every_item_is_served_once_and_each_user_in_arrival_order(users: list[int]) -> None:
    queue: FairQueue[tuple[int, int]] = FairQueue()
    for serial, user in enumerate(users):
        queue.enqueue(user, (user, serial))
    order = list(queue)
    served = [queue.pop() for _ in range(len(users))]
    assert served == order
    assert sorted(served) == sorted((u, s) for s, u in enumerate(users))
    for user in set(users):
        mine = [s for u, s in served if u == user]
        assert mine == sorted(mine)
    assert len(queue) == 0
