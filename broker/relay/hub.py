"""Which connectors are online, what they serve, and which one takes the next request.

Pure routing state: no aiohttp, no sockets. The relay endpoint registers links
here; the API handlers acquire one for a model and release it when done.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from broker.relay.fairqueue import FairQueue, Policy
from broker.relay.gates import Gate, Refusal, reachable, refusal
from broker.relay.modelbook import FORGET_AFTER, REMEMBER_AT_MOST, ModelBook


class Link(Protocol):
    """What the hub needs to know of one connected connector."""

    @property
    def name(self) -> str: ...

    @property
    def models(self) -> frozenset[str]: ...

    @property
    def max_concurrency(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    @property
    def gate(self) -> Gate | None:
        """Who may be sent here (`broker.relay.gates`); None: everyone."""

    elsewhere: int
    """Slots in use that this hub did not hand out (another broker's, on a connector of the
    cluster attached elsewhere: `broker.cluster.registry`); 0 for a local link."""

    @property
    def remote(self) -> bool:
        """Attached to another broker of the cluster: reached over the internal hop, so a
        local link as little loaded is preferred to it."""


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot: the hub hands it one (`link`) and sets `ready`."""

    user: Hashable
    model: str
    exclude: frozenset[Link]
    local_only: bool
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    link: Link | None = None


class NoConnector(Exception):
    """No connector could take the request in time, or none that serves it admits its user
    (`refused` by their owners' rules, `blocked` by a connector's own block list)."""

    def __init__(
        self, reason: Literal["unknown", "offline", "busy", "refused", "blocked"], model: str
    ) -> None:
        super().__init__(f"{reason}: {model}")
        self.reason = reason
        self.model = model


class Hub:
    """The registry of connected connectors and their load."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        forget_after: float = FORGET_AFTER,
        remember_at_most: int = REMEMBER_AT_MOST,
        on_forget: Callable[[str], None] | None = None,
        max_user_share: float = 1.0,
        order: Policy = "fair",
    ) -> None:
        self._load: dict[Link, int] = {}
        self._held: dict[Link, dict[Hashable, int]] = {}
        """Each link's slots in use, by user (for `max_user_share`)."""
        self._announced: dict[Link, frozenset[str]] = {}
        """What each registered link served when the hub last looked (its models may change)."""
        self._book = ModelBook(clock, forget_after, remember_at_most, on_forget)
        """The models served now, and those served lately (404 against 503)."""
        self._changed = asyncio.Event()
        self._turn = itertools.count()
        self._queue: FairQueue[_Waiter] = FairQueue(order)
        """Every request waiting for a slot, whatever its model."""
        self._waiting: Counter[str] = Counter()
        """How many requests wait for each model."""
        self._max_user_share = max_user_share
        self._sleepers = 0
        """Coroutines waiting on `_changed`: with none, a change needs no new Event."""
        self.on_change: Callable[[Link], None] | None = None
        """Told each link registered, unregistered or whose models or gate changed (cluster
        mode's registry announces this broker's connectors to the others)."""

    # -- registry -------------------------------------------------------------

    def register(self, link: Link) -> None:
        self._load[link] = 0
        self._held[link] = {}
        self.models_changed(link)

    def unregister(self, link: Link) -> None:
        if self._load.pop(link, None) is not None:
            del self._held[link]
            self._announce(link, frozenset())
        self._changed_for_waiters()
        if self.on_change is not None:
            self.on_change(link)

    def models_changed(self, link: Link) -> None:
        """`link.models` (or its gate, its capacity) may have changed: serve what it announces
        now."""
        if link in self._load:
            self._announce(link, link.models)
        self._changed_for_waiters()
        if self.on_change is not None:
            self.on_change(link)

    def _changed_for_waiters(self) -> None:
        """The links changed: hand out what is free, and let every waiter look again (its
        model may now be offline, or unknown)."""
        self._dispatch()
        for waiter in self._queue:
            waiter.ready.set()
        self._notify()

    def _announce(self, link: Link, models: frozenset[str]) -> None:
        """Count `link` as serving `models` from now on, and nothing else."""
        before = self._announced.pop(link, frozenset())
        if link in self._load:
            self._announced[link] = models
        self._book.change(models - before, before - models)

    @property
    def links(self) -> list[Link]:
        return list(self._load)

    def load(self, link: Link) -> int:
        return self._load.get(link, 0)

    def models(self) -> dict[str, float]:
        """Models served right now, with the time each was first seen."""
        return self._book.listed(self._book.served)

    def models_for(self, user: Hashable) -> dict[str, float]:
        """`models()` that some connector admitting `user` serves."""
        found = reachable(self._load, user)
        return self.models() if found is None else self._book.listed(found)

    def refusal(self, model: str, user: Hashable) -> Refusal | None:
        """Why `model`, served now, is served only by connectors that do not admit `user`
        (`broker.relay.gates.refusal`); None when one admits them, or none serves it."""
        return refusal([link.gate for link in self._load if model in link.models], user)

    def served_count(self) -> int:
        """How many distinct models are served right now (kept, not counted, per call)."""
        return len(self._book.served)

    def first_seen(self, model: str) -> float | None:
        """When `model`, served right now, was first seen; None when no connector serves it."""
        return self._book.first_seen(model)

    def knows(self, model: str) -> bool:
        """Whether some connector serves `model`, or served it lately (`ModelBook.knows`)."""
        return self._book.knows(model)

    def remembered(self) -> int:
        """How many model names the hub holds: served ones and those it still remembers."""
        return self._book.remembered()

    def in_flight(self) -> int:
        return sum(self._load.values())

    async def wait_for_models(self, timeout: float) -> bool:
        """Wait until some connector serves a model; False if none did within `timeout` s."""
        try:
            async with asyncio.timeout(timeout):
                while not self.models():
                    await self._sleep(self._changed)
        except TimeoutError:
            return False
        return True

    async def _sleep(self, changed: asyncio.Event) -> None:
        self._sleepers += 1
        try:
            await changed.wait()
        finally:
            self._sleepers -= 1

    def _notify(self) -> None:
        # Every request acquires and releases a link: with nobody asleep, skip the Event churn.
        if self._sleepers:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- routing ----------------------------------------------------------------

    def serves(
        self,
        model: str,
        *,
        exclude: Collection[Link] = (),
        user: Hashable = None,
        local_only: bool = False,
    ) -> bool:
        """Whether a link besides `exclude` (and, `local_only`, besides every remote one)
        that admits `user` serves `model` and takes new requests now."""
        return bool(self._serving(model, exclude, user, local_only))

    def _serving(
        self,
        model: str,
        exclude: Collection[Link] = (),
        user: Hashable = None,
        local_only: bool = False,
    ) -> list[Link]:
        """Links serving `model` that take new requests and admit `user`, minus `exclude`
        (and minus the remote ones, `local_only`)."""
        return [
            link
            for link in self._load
            if model in link.models
            and not link.draining
            and link not in exclude
            and not (local_only and link.remote)
            and (link.gate is None or link.gate.admits(user))
        ]

    def _pick(self, candidates: list[Link]) -> Link | None:
        load = self._load
        free = [link for link in candidates if load[link] + link.elsewhere < link.max_concurrency]
        if len(free) < 2:
            return free[0] if free else None

        # Least loaded relative to capacity (counting the slots other brokers of a cluster use),
        # a local link before a remote one as loaded; ties rotate so equal connectors share work.
        def key(link: Link) -> tuple[float, int, bool]:
            used = load[link] + link.elsewhere
            return (used / link.max_concurrency, used, link.remote)

        lowest = min(key(link) for link in free)
        best = [link for link in free if key(link) == lowest]
        return best[next(self._turn) % len(best)]

    async def acquire(
        self,
        model: str,
        *,
        user: Hashable = None,
        exclude: Collection[Link] = (),
        local_only: bool = False,
        wait_offline: float,
        wait_busy: float,
    ) -> Link:
        """Reserve a slot on the least-loaded connector serving `model`, for `user`.

        Waits up to `wait_offline` seconds while no connector serves the model
        (one may be reconnecting) and up to `wait_busy` while all that serve it
        are at capacity; waiting requests are served round robin by user
        (`broker.relay.fairqueue`). A model no connected connector has ever served fails at
        once with reason "unknown" while others are online; one served only by connectors
        that do not admit `user` fails at once with reason "refused". `local_only`: only this
        broker's own connectors, never one attached to another broker of the cluster (whenever
        it registered: a request forwarded here is never forwarded again).
        """
        if not exclude:
            chosen = self.acquire_now(model, user, local_only=local_only)
            if chosen is not None:
                return chosen
        refusal = self.refusal(model, user)
        if refusal is not None:
            raise NoConnector(refusal, model)
        loop = asyncio.get_running_loop()
        start = loop.time()
        me = _Waiter(user, model, frozenset(exclude), local_only)
        self._queue.enqueue(user, me)
        self._waiting[model] += 1
        try:
            self._dispatch()
            while me.link is None:
                candidates = self._serving(model, me.exclude, user, local_only)
                if not candidates and self._load and not self.knows(model):
                    raise NoConnector("unknown", model)
                refusal = None if candidates else self.refusal(model, user)
                if refusal is not None:
                    raise NoConnector(refusal, model)
                limit = wait_busy if candidates else wait_offline
                remaining = start + limit - loop.time()
                if remaining <= 0:
                    raise NoConnector("busy" if candidates else "offline", model)
                me.ready.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await me.ready.wait()
                except TimeoutError:
                    pass
            return me.link
        except BaseException:
            if me.link is not None:  # handed a slot as it gave up: the next waiter gets it
                self.release(me.link, user)
            raise
        finally:
            self._queue.remove(me)
            self._waiting[model] -= 1
            if not self._waiting[model]:
                del self._waiting[model]

    def queued(self, model: str | None = None) -> int:
        """How many requests wait for a slot (for `model`, or for any)."""
        return len(self._queue) if model is None else self._waiting[model]

    def acquire_now(
        self, model: str, user: Hashable = None, *, local_only: bool = False
    ) -> Link | None:
        """`acquire` when it need not wait: a free slot when nobody is queued for the model.

        With nobody waiting, a user's share of a connector is not capped (an idle slot serves
        whoever asks).
        """
        if model in self._waiting:
            return None  # others wait for this model: their turn first
        chosen = self._pick(self._serving(model, (), user, local_only))
        if chosen is not None:
            self._take(chosen, user)
        return chosen

    def _take(self, link: Link, user: Hashable) -> None:
        self._load[link] += 1
        held = self._held[link]
        held[user] = held.get(user, 0) + 1  # not Counter's +=: its __missing__ is Python code

    def _dispatch(self) -> None:
        """Hand free slots to waiters, in the queue's order.

        A user who holds `max_user_share` of a connector's slots is passed over for it while
        someone else waiting can use the slot; when nobody else can, the user takes it, so a
        slot never stays idle while a request that could use it waits.
        """
        while self._queue:
            load = self._load
            free = [link for link in load if load[link] + link.elsewhere < link.max_concurrency]
            if not free:
                return
            if not self._hand_out(free, capped=True) and not self._hand_out(free, capped=False):
                return

    def _hand_out(self, free: list[Link], *, capped: bool) -> bool:
        """Give one of the `free` links to the first waiter in turn that may use one."""
        for waiter in self._queue:
            usable = [
                link
                for link in free
                if waiter.model in link.models
                and not link.draining
                and link not in waiter.exclude
                and not (waiter.local_only and link.remote)
                and (link.gate is None or link.gate.admits(waiter.user))
                and not (capped and self._at_share(link, waiter.user))
            ]
            chosen = self._pick(usable)
            if chosen is not None:
                self._queue.take(waiter)
                self._take(chosen, waiter.user)
                waiter.link = chosen
                waiter.ready.set()
                return True
        return False

    def _at_share(self, link: Link, user: Hashable) -> bool:
        """Whether `user` holds its whole share of `link`'s slots already."""
        return self._held[link].get(user, 0) >= self._max_user_share * link.max_concurrency

    def found_full(self, link: Link) -> bool:
        """A connector of another broker turned out full (that broker answered busy before
        its record said so): count it full until its next record says it freed a slot, which
        wakes the waiters. True for such a link: the request waits for it, as for a local
        connector at capacity, instead of giving it up."""
        if not link.remote:
            return False
        link.elsewhere = max(link.elsewhere, link.max_concurrency - self._load.get(link, 0))
        return True

    def release(self, link: Link, user: Hashable = None) -> None:
        """Give back a slot `user` held on `link`; the next waiter in turn may get it."""
        if link in self._load:
            self._load[link] -= 1
            held = self._held[link]
            count = held.get(user, 0) - 1
            if count > 0:
                held[user] = count
            else:
                held.pop(user, None)
            if self._queue:
                self._dispatch()
