"""Running a broker app on a socket: start, report the address, drain and stop."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from aiohttp import web

from broker.app import create_app, drain
from broker.edge.express import Express
from broker.edge.listener import Front
from broker.relay.admission import Relay
from broker.relay.hub import Hub
from broker.services import SERVICES, Services
from broker.settings import BrokerSettings

LISTEN_BACKLOG = 1024
"""Connections the kernel completes before the broker accepts them (capped by somaxconn).

aiohttp's 128 drops the SYNs of a burst beyond it (a thousand clients at once, or every
connector redialling after a restart), and each dropped one waits a second or more for its
retransmit."""


class BrokerServer:
    """One running broker. Used by the CLI, the demo and the tests."""

    def __init__(self, settings: BrokerSettings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self._reuse_port = reuse_port  # a worker of `serve --workers N` shares its port
        self.app = create_app(settings)
        self.services: Services = self.app[SERVICES]
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            # drain() already gave handlers their grace; this bounds what is left after.
            shutdown_timeout=5.0,
            # aiohttp closes a connection whose next request head is not complete this long
            # after its hand-over or its last answer (its one timer bounds idle and partial
            # heads alike; see broker.edge.listener for the lanes).
            keepalive_timeout=settings.idle_timeout,
        )
        self._listener: asyncio.Server | None = None
        self._internal: asyncio.Server | None = None
        """Cluster mode, when --internal-url names another port: the internal hop's listener."""
        self._front: Front | None = None
        self._relay: Relay | None = None
        self.express: Express | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one)."""
        await self._runner.setup()
        context = None
        if self.settings.tls is not None:
            cert, key = self.settings.tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        http = self._runner.server
        assert http is not None
        self._relay = self.services.relay
        self.express = Express(self.services, http)
        self._front = Front(
            http,
            self._relay.connection,
            express=self.express.connection,
            first_line_timeout=self.settings.head_timeout,
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._front,
            self.settings.host,
            self.settings.port,
            ssl=context,
            backlog=LISTEN_BACKLOG,
            reuse_port=self._reuse_port or None,
        )
        sockets = self._listener.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.settings.port
        member = self.services.cluster
        if member is not None:
            await self._listen_internal(http, context)
            member.listening(self.settings.host, self.port, tls=context is not None)

    async def _listen_internal(
        self, http: Callable[[], asyncio.Protocol], context: ssl.SSLContext | None
    ) -> None:
        """Listen on --internal-url's port too when it is not the public one (each worker of
        `serve --workers N` shares the public port and has its own internal one)."""
        internal = self.settings.internal_url
        if internal is None:
            return
        from broker.cluster.node import url_port  # cluster mode only

        port = url_port(internal)
        if port == self.port:
            return
        tls = context if internal.startswith("https:") else None
        loop = asyncio.get_running_loop()
        self._internal = await loop.create_server(
            http, self.settings.host, port, ssl=tls, backlog=LISTEN_BACKLOG
        )
        member = self.services.cluster
        if member is not None:
            member.private_port = port  # the hop is answered there only, not on the public port

    @property
    def hub(self) -> Hub:
        return self.services.hub

    @property
    def base_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, send connectors away, close."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        internal, self._internal = self._internal, None
        if internal is not None:
            internal.close()
        if self._front is not None:
            self._front.close_waiting()
        if self._relay is not None:
            self._relay.close_opening()
        if self._runner.server is not None:
            await drain(self.app)
        if self.express is not None:
            await self.express.shutdown()
        if self._relay is not None:
            await self._relay.settle()
        await self._runner.cleanup()
        if listener is not None:
            await listener.wait_closed()
        if internal is not None:
            await internal.wait_closed()
