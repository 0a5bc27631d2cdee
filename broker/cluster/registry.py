"""The cluster's registry: which brokers are up, and the connectors each one holds.

Each broker writes one record, `remotellm:node:<id>` (JSON: its internal URL and, per
attached connector, its models, capacity, load, token id, gate and whether it drains) with an
expiry of `EXPIRE` seconds (Redis's own, so no broker's clock decides who is alive), and
lists its id in the set `remotellm:nodes` (a sorted set; its scores are only informative).
A reader lists every id there and reads their records; an id whose record is gone (expired
or deleted) is pruned from the set, by a script that checks the record is still absent.
A broker writes its record every `HEARTBEAT` seconds (the load changes) and at once when a
connector attaches, leaves, or changes what it serves or admits, and publishes its id on
`remotellm:node:changed` then, so the others read it at once instead of at their next beat.
Each broker reads the others' records every beat (and on a publish) into its hub as
`broker.cluster.forwarding.PeerLink`s: routing reads memory, never Redis. A broker that
stops deletes its record; one that dies stops refreshing it, and its connectors leave the
others' hubs within `EXPIRE` seconds.

Redis unreachable: the broker keeps the peers it knew until their records would have expired
(`EXPIRE` after the last read that saw them), then routes to its own connectors only; it logs
each change between reachable and unreachable once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import structlog

from broker.cluster.forwarding import Forwarder, PeerLink
from broker.cluster.node import Node
from broker.relay.gates import Gate
from broker.relay.hub import Hub, Link
from broker.relay.link import ConnectorLink

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("remotellm.broker.cluster")

HEARTBEAT: Final = 1.0
"""Seconds between two writes of this broker's record (and reads of the others')."""
EXPIRE: Final = 3.0
"""Seconds a record outlives its last write: a broker that died is gone after this."""
NODES: Final = b"remotellm:nodes"
CHANGED: Final = b"remotellm:node:changed"
STOP_WAIT: Final = 0.5
"""Seconds `stop` waits for a task after each cancel before cancelling it again."""

PRUNE: Final = """
-- KEYS: the set of ids, then the records of the ids in ARGV (same order)
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
"""
"""Drop from the set the ids whose record is (still) gone: one written meanwhile stays."""


def node_key(node_id: str) -> bytes:
    return f"remotellm:node:{node_id}".encode()


def _gate(gate: Gate | None) -> dict[str, Any] | None:
    if gate is None:
        return None
    admitted = sorted(gate.admitted) if gate.admitted is not None else None
    return {"admitted": admitted, "blocked": sorted(gate.blocked), "configured": gate.configured}


def _read_gate(data: dict[str, Any] | None) -> Gate | None:
    if data is None:
        return None
    admitted = data["admitted"]
    return Gate(
        frozenset(admitted) if admitted is not None else None,
        frozenset(data["blocked"]),
        bool(data["configured"]),
    )


class Registry:
    """This broker's record in Redis, and its view of the other brokers' connectors."""

    def __init__(
        self,
        redis: Redis,
        hub: Hub,
        node: Node,
        forwarder: Forwarder,
        *,
        heartbeat: float = HEARTBEAT,
        expire: float = EXPIRE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._hub = hub
        self._node = node
        self._forwarder = forwarder
        self._heartbeat = heartbeat
        self._expire = expire
        self._clock = clock
        self._prune = redis.register_script(PRUNE)
        self._peers: dict[tuple[str, str], PeerLink] = {}
        self._seen: dict[str, float] = {}
        """Each other broker, with when a read last found its record (monotonic)."""
        self._wake = asyncio.Event()
        self._dirty = True
        self._reachable: bool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- what this broker holds --------------------------------------------------------------

    def changed(self, link: Link) -> None:
        """The hub's `on_change`: a local connector came, went or changed; write at once."""
        if isinstance(link, ConnectorLink):
            self.changed_now()

    def changed_now(self) -> None:
        """Write this broker's record at once, and tell the others."""
        self._dirty = True
        self._wake.set()

    def record(self) -> bytes:
        """This broker's record: its URL and its connectors, as the others route by them."""
        hub = self._hub
        links = [
            {
                "k": f"{id(link):x}",
                "name": link.name,
                "models": sorted(link.models),
                "cap": link.max_concurrency,
                "load": hub.load(link),
                "token": link.token_id,
                "draining": link.draining,
                "gate": _gate(link.gate),
            }
            for link in hub.links
            if isinstance(link, ConnectorLink)
        ]
        return json.dumps({"url": self._node.url, "links": links}).encode()

    async def publish(self, *, announce: bool = False) -> None:
        """Write this broker's record (and say so on the channel when `announce`)."""
        node = self._node
        if node.url is None:
            return  # not listening yet: nobody could reach it
        async with self._redis.pipeline(transaction=False) as pipe:
            # The record first: an id in the set without its record is taken for gone.
            pipe.set(node_key(node.id), self.record(), px=int(self._expire * 1000))
            pipe.zadd(NODES, {node.id: self._clock() + self._expire})
            if announce:
                pipe.publish(CHANGED, node.id)
            await pipe.execute()

    async def withdraw(self) -> None:
        """Delete this broker's record (it stops): the others drop its connectors at once."""
        node = self._node
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(node_key(node.id))
            pipe.zrem(NODES, node.id)
            pipe.publish(CHANGED, node.id)
            await pipe.execute()

    # -- what the others hold --------------------------------------------------------------

    async def read(self) -> None:
        """Read the other brokers' records into the hub."""
        # Every id listed: whether a broker is alive is its record's expiry, on Redis's clock.
        listed = await self._redis.zrange(NODES, 0, -1)
        ids = [raw.decode() for raw in cast(list[bytes], listed) if raw.decode() != self._node.id]
        records = await self._redis.mget([node_key(i) for i in ids]) if ids else []
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        for node_id, raw in zip(ids, records, strict=True):
            if raw is None:
                gone.append(node_id)
            else:
                found[node_id] = json.loads(raw)
        if gone:
            await self._prune(keys=[NODES, *(node_key(i) for i in gone)], args=gone)
        self.apply(found, now)

    def apply(
        self, records: dict[str, dict[str, Any]], now: float, *, complete: bool = True
    ) -> None:
        """Make the hub's peer links what `records` (read at `now`, monotonic) say.

        `complete`: they are every live broker's, so a broker not in them has left. Else
        (Redis did not answer) a broker not in them leaves only once `expire` seconds have
        passed since a read last found it.
        """
        if complete:
            self._seen = dict.fromkeys(records, now)
        else:
            self._seen = {n: t for n, t in self._seen.items() if now - t < self._expire}
        hub, forwarder = self._hub, self._forwarder
        kept: set[tuple[str, str]] = set()
        for node_id, record in records.items():
            url = record.get("url")
            if not url:
                continue
            for entry in record["links"]:
                key = (node_id, entry["k"])
                kept.add(key)
                peer = self._peers.get(key)
                fresh = peer is None
                if peer is None:
                    peer = self._peers[key] = PeerLink(forwarder, node_id, url, entry["k"])
                before = (peer.models, peer.max_concurrency, peer.draining, peer.gate)
                was_busy = peer.elsewhere
                peer.url = url
                peer.name = entry["name"]
                peer.token_id = entry["token"]
                peer.models = frozenset(entry["models"])
                peer.max_concurrency = max(1, int(entry["cap"]))
                peer.draining = bool(entry["draining"])
                peer.gate = _read_gate(entry["gate"])
                # The far broker's count includes what this one forwarded there.
                peer.elsewhere = max(0, int(entry["load"]) - hub.load(peer))
                if fresh:
                    hub.register(peer)
                elif (
                    before != (peer.models, peer.max_concurrency, peer.draining, peer.gate)
                    or peer.elsewhere < was_busy
                ):
                    # Only then: waiters look again (a slot may be free), the hub re-counts.
                    hub.models_changed(peer)
        for key, peer in list(self._peers.items()):
            if key not in kept and (key[0] in records or key[0] not in self._seen):
                del self._peers[key]
                hub.unregister(peer)

    @property
    def reachable(self) -> bool | None:
        """Whether the last write and read of the records worked (None before the first)."""
        return self._reachable

    @property
    def nodes(self) -> set[str]:
        """The other brokers this one knows to be up."""
        return set(self._seen)

    @property
    def peers(self) -> list[PeerLink]:
        """The connectors attached to the other brokers, as this one knows them now."""
        return list(self._peers.values())

    # -- the tasks ---------------------------------------------------------------------------

    def start(self) -> None:
        self._hub.on_change = self.changed
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(), name="cluster-registry"),
            loop.create_task(self._listen(), name="cluster-registry-listen"),
        ]

    async def stop(self) -> None:
        self._hub.on_change = None
        # Said besides the cancel: a cancel landing as `asyncio.timeout` expires is lost.
        self._stopping = True
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            while not task.done():
                # Cancelled again until it ends: on Python 3.11 a cancel that lands as
                # redis-py's read timeout expires can come out as that TimeoutError.
                task.cancel()
                await asyncio.wait([task], timeout=STOP_WAIT)
            if not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        with contextlib.suppress(Exception):
            await self.withdraw()
        for peer in self._peers.values():
            self._hub.unregister(peer)
        self._peers.clear()

    def _reached(self, ok: bool, error: str = "") -> None:
        if ok == self._reachable:
            return
        self._reachable = ok
        if ok:
            log.info("cluster registry reachable", node=self._node.id)
        else:
            log.error("cluster registry unreachable; keeping the peers known", error=error)

    async def _beat(self) -> None:
        while not self._stopping:
            announce, self._dirty = self._dirty, False
            self._wake.clear()
            try:
                await self.publish(announce=announce)
                await self.read()
            except Exception as exc:  # Redis down or slow: bounded by the client's timeouts
                self._dirty = self._dirty or announce
                self._reached(False, str(exc))
                self.apply({}, time.monotonic(), complete=False)
            else:
                self._reached(True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._heartbeat)

    async def _listen(self) -> None:
        """Read the others at once when one of them says its record changed."""
        while not self._stopping:
            try:
                pubsub = self._redis.pubsub()
                try:
                    await pubsub.subscribe(CHANGED)
                    while not self._stopping:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._heartbeat
                        )
                        if message is not None and message["data"] != self._node.id.encode():
                            self._wake.set()
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis down: the beat logs it; listen again later
                await asyncio.sleep(self._heartbeat)
