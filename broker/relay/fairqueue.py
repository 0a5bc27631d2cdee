"""The order in which requests waiting for a busy connector are served: round robin by user.

Sans-I/O: no asyncio, no clock. The hub (`broker.relay.hub`) keeps the waiters of every model
here and asks it who goes next; the queue only knows users and items.

The rule is deficit round robin (Shreedhar and Varghese, 1995) where every request costs one
quantum, which makes it plain round robin over users: each user with requests waiting holds one
place in a rotation; the user at its head is served one request and goes to the tail; a user
who starts waiting joins at the tail; a user with nothing left leaves the rotation. So between
two services of a user who keeps waiting, every other user is served at most once, however many
requests either of them queued. A request's cost (its tokens, its time in the slot) is only
known once it ends, which is why every request counts as one.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable, Iterator
from typing import Final, Generic, Literal, TypeVar

T = TypeVar("T", bound=Hashable)

Policy = Literal["fair", "fifo"]

_FIFO: Final = object()
"""The one line every user's requests share under the `fifo` policy."""


class FairQueue(Generic[T]):
    """Waiting items, each owned by a user, served round robin by user.

    Policy "fifo" serves them in arrival order instead, whoever sent them (the broker's old
    order, kept for the benchmark to compare against).
    """

    __slots__ = ("_count", "_lines", "_owner", "policy")

    def __init__(self, policy: Policy = "fair") -> None:
        self.policy: Final = policy
        self._lines: dict[Hashable, deque[T]] = {}
        """The rotation: each line with items, by user, the next to serve first."""
        self._owner: dict[T, Hashable] = {}
        """Each item's user."""
        self._count: Counter[Hashable] = Counter()

    def enqueue(self, user: Hashable, item: T) -> None:
        """Queue `item` for `user`; a user who had nothing waiting joins at the rotation's tail."""
        if item in self._owner:
            raise ValueError("the item is queued already")
        self._owner[item] = user
        self._count[user] += 1
        self._lines.setdefault(self._line_of(user), deque()).append(item)

    def pop(self) -> T:
        """Serve the next item: the oldest of the user at the rotation's head."""
        if not self._lines:
            raise IndexError("pop from an empty queue")
        line = next(iter(self._lines))
        item = self._lines[line][0]
        self.take(item)
        return item

    def take(self, item: T) -> None:
        """Serve `item` out of turn (those before it could not use the slot): its user has had
        its turn, and goes to the rotation's tail."""
        line = self._drop(item)
        items = self._lines[line]
        if items:
            del self._lines[line]
            self._lines[line] = items  # to the tail
        else:
            del self._lines[line]

    def remove(self, item: T) -> None:
        """Forget `item` (it gave up: timed out, or its client hung up); no-op if not queued.

        Its user keeps its place in the rotation while it has other items waiting.
        """
        if item not in self._owner:
            return
        line = self._drop(item)
        if not self._lines[line]:
            del self._lines[line]

    def _drop(self, item: T) -> Hashable:
        user = self._owner.pop(item)
        self._count[user] -= 1
        if not self._count[user]:
            del self._count[user]
        line = self._line_of(user)
        self._lines[line].remove(item)
        return line

    def _line_of(self, user: Hashable) -> Hashable:
        return user if self.policy == "fair" else _FIFO

    def __iter__(self) -> Iterator[T]:
        """The items in the order `pop` would serve them (the queue must not change meanwhile)."""
        rounds = [iter(items) for items in self._lines.values()]
        while rounds:
            still: list[Iterator[T]] = []
            for items in rounds:
                for item in items:
                    yield item
                    still.append(items)
                    break
            rounds = still

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, item: object) -> bool:
        return item in self._owner

    def waiting(self, user: Hashable) -> int:
        """How many items `user` has queued."""
        return self._count[user]

    def users(self) -> list[Hashable]:
        """The users with items queued."""
        return list(self._count)
