"""Running a broker app on a socket: start, report the address, drain and stop."""

from __future__ import annotations

import ssl

from aiohttp import web

from broker.app import create_app, drain
from broker.hub import Hub
from broker.keys import HUB
from broker.settings import BrokerSettings


class BrokerServer:
    """One running broker. Used by the CLI, the demo and the tests."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            # drain() already gave handlers their grace; this bounds what is left after.
            shutdown_timeout=5.0,
        )
        self.port = 0

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one)."""
        await self._runner.setup()
        context = None
        if self.settings.tls is not None:
            cert, key = self.settings.tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=context
        )
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.port

    @property
    def hub(self) -> Hub:
        return self.app[HUB]

    @property
    def base_url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, send connectors away, close."""
        for site in list(self._runner.sites):
            await site.stop()
        await drain(self.app)
        await self._runner.cleanup()
