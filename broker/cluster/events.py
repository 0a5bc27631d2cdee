"""Changes made on one broker, followed by every other broker of the cluster (Redis pub/sub).

One channel, `remotellm:ev`. A message is a small JSON object naming a `broker.changes.Change`
by its ids (`{"kind": "key_revoked", "id": 12, "from": "<sender>"}`), never a key or a
secret: a broker that hears one reads the store again (clears its cache of keys, reads the
access rules, shuts out a revoked connector's links), so a message forged by someone with
access to Redis can cost a read, not grant anything.

Pub/sub delivers at most once: a broker that is not connected when a change is published
never hears of it. So whenever the listener (re)connects after losing Redis, it reads
everything again (`Changes.resync`); between the loss and then, the broker's own periodic
checks apply (keys within a second, connector tokens and access rules within 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import TYPE_CHECKING, Any, Final

import structlog

from broker.accounts.change import KINDS, NAMES, AccessChanged, Change
from broker.changes import Changes

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = structlog.get_logger("remotellm.broker.cluster")

CHANNEL: Final = b"remotellm:ev"
RETRY: Final = 0.5
"""Seconds between attempts to listen again while Redis is unreachable."""
PUBLISH_TIMEOUT: Final = 2.0
"""Seconds a change's publication may take before it is given up (the periodic checks remain)."""


def encode(change: Change, sender: str) -> bytes:
    """The message that tells of `change`: its kind and id, and who sent it."""
    ident = next(iter(change.__dataclass_fields__))
    return json.dumps(
        {"kind": NAMES[type(change)], "id": getattr(change, ident), "from": sender},
        separators=(",", ":"),
    ).encode()


def decode(data: bytes) -> tuple[Change, str]:
    """The change a message tells of, and its sender; ValueError when it is not one."""
    try:
        fields: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(fields, dict):
        raise ValueError("not an object")
    kind = KINDS.get(fields.get("kind"))  # type: ignore[arg-type]
    ident, sender = fields.get("id"), fields.get("from")
    if kind is None or not isinstance(sender, str):
        raise ValueError("unknown kind or no sender")
    if ident is None and kind is AccessChanged:
        return AccessChanged(None), sender
    if type(ident) is not int:
        raise ValueError("the id is not an integer")
    return kind(ident), sender


async def publish_once(url: str, changes: list[Change]) -> None:
    """Tell the cluster's brokers of changes made outside them (the admin CLI)."""
    from broker.cluster.redisclient import open_redis

    redis = open_redis(url)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            for change in changes:
                await redis.publish(CHANNEL, encode(change, "cli"))
    finally:
        await redis.aclose()


class Events:
    """One broker's side of the channel: publishes its changes, applies everyone else's."""

    def __init__(self, redis: Redis, changes: Changes, sender: str | None = None) -> None:
        self._redis = redis
        self._changes = changes
        self.sender = sender or secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._publishing_failed = False
        self.listening = False
        """Subscribed now: changes made elsewhere reach this broker within moments."""
        self.resyncs = 0
        """Times everything was read again after the channel was lost (for tests, logs)."""
        self._reconnected = False

    @property
    def hearing(self) -> bool | None:
        return self.listening

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, change: Change) -> None:
        """Tell the other brokers; when Redis does not answer, they catch up by their checks."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._redis.publish(CHANNEL, encode(change, self.sender))
        except Exception as exc:
            if not self._publishing_failed:
                log.error(
                    "cannot tell other brokers of a change; they apply it within 5 s",
                    error=str(exc) or type(exc).__name__,
                )
            self._publishing_failed = True
            return
        if self._publishing_failed:
            log.info("telling other brokers of changes again")
        self._publishing_failed = False

    # -- listening --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="cluster-events")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._closing = True
        while task is not None and not task.done():
            # Cancelled again until it ends: on Python 3.11 a cancel that lands as redis-py's
            # read timeout expires can come out as that TimeoutError, and the loop goes on.
            task.cancel()
            await asyncio.wait([task], timeout=0.5)
        if task is not None and not task.cancelled():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()

    async def _listen(self) -> None:
        lost = False
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                assert pubsub.connection is not None
                # Called on each reconnection from now on (redis-py reconnects by itself).
                pubsub.connection.register_connect_callback(self._connected)
                self.listening = True
                if lost:
                    log.info("hearing of other brokers' changes again; reading everything again")
                    await self._resync()
                    lost = False
                await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening = False
                if not lost:
                    log.error(
                        "cannot hear of other brokers' changes; checking the store every 5 s",
                        error=str(exc) or type(exc).__name__,
                    )
                lost = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RETRY)

    def _connected(self, connection: object) -> None:
        """The pub/sub connection reconnected: messages may have been lost meanwhile."""
        self._reconnected = True

    async def _receive(self, pubsub: PubSub) -> None:
        while not self._closing:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if self._reconnected:  # redis-py reconnected by itself: some may have been missed
                self._reconnected = False
                await self._resync()
            if message is None or message.get("type") != "message":
                continue
            try:
                change, sender = decode(message["data"])
            except ValueError as exc:
                log.warning("ignored a message on the cluster's channel", reason=str(exc))
                continue
            if sender == self.sender:
                continue  # applied when it was made
            try:
                await self._changes.apply(change)
            except Exception as exc:  # the periodic checks apply it later
                log.error(
                    "cannot apply another broker's change", change=str(change), error=str(exc)
                )

    async def _resync(self) -> None:
        self.resyncs += 1
        await self._changes.resync()
