"""This broker as a member of a cluster: its identity, its registry and its internal hop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.cluster.forwarding import Forwarder, PeerLink
from broker.cluster.hopauth import Replays
from broker.cluster.node import Node
from broker.cluster.registry import Registry
from broker.relay.hub import Hub

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Member:
    """What cluster mode adds to one broker (`Services.cluster`)."""

    def __init__(self, secret: str, internal_url: str | None, idle_timeout: float) -> None:
        self.node = Node(internal_url)
        self.forwarder = Forwarder(secret, idle_timeout)
        self.replays = Replays()
        self.private_port: int | None = None
        """The port of the internal listener, when it has one of its own: the internal hop is
        answered there only, so the load balancer's public port never offers it."""
        """The hop signatures this broker has accepted lately: each is served once."""
        self.registry: Registry | None = None

    def start(self, redis: Redis, hub: Hub) -> None:
        """Announce this broker and its connectors, and follow the others' (a cleanup ctx)."""
        self.registry = Registry(redis, hub, self.node, self.forwarder)
        self.registry.start()

    def listening(self, host: str, port: int, *, tls: bool) -> None:
        """The broker listens: its URL is known, so its record can be written now."""
        self.node.listening(host, port, tls=tls)
        if self.registry is not None:
            self.registry.changed_now()

    @property
    def peers(self) -> list[PeerLink]:
        """The connectors attached to the other brokers (none before the start)."""
        return self.registry.peers if self.registry is not None else []

    async def stop(self) -> None:
        if self.registry is not None:
            await self.registry.stop()
        await self.forwarder.close()
