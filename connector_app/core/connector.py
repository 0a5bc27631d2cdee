"""The connector engine: local LLM client, model discovery and relay client, run together.

Both faces of the connector (headless CLI and tray app) drive this one object.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import structlog

from connector_app.core.activity import RequestEvents
from connector_app.core.backoff import Backoff
from connector_app.core.client import RelayClient
from connector_app.core.discovery import DiscoveryError, discover_models
from connector_app.core.llm import LocalLLM
from connector_app.core.settings import ConnectorSettings
from connector_app.core.status import Status, StatusBoard
from connector_app.core.trust import client_context
from shared.handshake import servable
from shared.text import MAX_NAME_LENGTH, shown

log = structlog.get_logger("remotellm.connector")


def _trust(settings: ConnectorSettings) -> ssl.SSLContext | None:
    """The TLS context for the broker link: the system's store, or the configured CA file."""
    if not settings.broker_url.startswith("wss://"):
        return None
    return client_context(settings.ca_file)


class Connector:
    """Serves a local LLM server to a broker until stopped."""

    def __init__(
        self,
        settings: ConnectorSettings,
        *,
        backoff: Backoff | None = None,
        events: RequestEvents | None = None,
        board: StatusBoard | None = None,
        excluded: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        self.board = board or StatusBoard()
        self.events = events or RequestEvents()
        self._excluded = excluded
        self._last_state = self.board.status.state
        self.board.subscribe(self._log_state)
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        # One pooled connection per request slot, plus one for discovery: the pool must
        # never be what queues requests the broker was told this connector can take.
        self.llm = LocalLLM(settings.llm_url, api_key, limit=settings.max_concurrency + 1)
        self.client = RelayClient(
            url=settings.broker_url,
            token=settings.broker_token.get_secret_value(),
            name=settings.name,
            max_concurrency=settings.max_concurrency,
            llm=self.llm,
            board=self.board,
            backoff=backoff,
            heartbeat=settings.heartbeat,
            ssl_context=_trust(settings),
            events=self.events,
        )
        self.client.set_blocked(frozenset(settings.blocked_users))
        self._discovery_ok: bool | None = None
        self._skipped: set[str] = set()
        """Models left out for their names: each is logged the first time it is seen."""
        self._stopped = asyncio.Event()

    @property
    def status(self) -> Status:
        return self.board.status

    def _log_state(self, status: Status) -> None:
        if status.state is not self._last_state:
            self._last_state = status.state
            log.info("link state", state=status.state.value)

    @property
    def excluded(self) -> frozenset[str]:
        return self._excluded

    def set_excluded(self, excluded: frozenset[str]) -> None:
        """Switch models off (or back on) without a new discovery; the broker hears at once."""
        self._excluded = excluded
        self._publish_models(self.board.status.available)

    def _publish_models(self, available: tuple[str, ...]) -> None:
        available, skipped = servable(available)
        for name in skipped:
            if name not in self._skipped:
                log.warning(
                    "skipping a model whose name cannot be announced to the broker",
                    model=shown(name),
                    why=f"not 1 to {MAX_NAME_LENGTH} printable characters",
                )
        self._skipped.update(skipped)
        self.board.update(available=available)
        self.client.set_models(tuple(m for m in available if m not in self._excluded))

    async def refresh_models(self) -> None:
        """Ask the local server for its models (unless they are configured) and publish them."""
        if self.settings.model:
            self._publish_models(tuple(self.settings.model))
            return
        try:
            models = await discover_models(self.llm)
        except DiscoveryError as exc:
            if self._discovery_ok is not False:
                log.warning("local LLM server not answering; will keep trying", error=str(exc))
            self._discovery_ok = False
            return
        if self._discovery_ok is False:
            log.info("local LLM server is back", url=self.llm.base_url)
        self._discovery_ok = True
        if not models:
            log.warning("the local LLM server lists no models", url=self.llm.base_url)
        self._publish_models(tuple(models))

    async def _discovery_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.discovery_interval):
                    await self._stopped.wait()
                return
            except TimeoutError:
                await self.refresh_models()

    async def run(self) -> None:
        """Discover, connect and serve until `stop()`; then release everything."""
        await self.refresh_models()
        discovery = asyncio.create_task(self._discovery_loop())
        try:
            await self.client.run()
        finally:
            self._stopped.set()
            discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await discovery
            await self.llm.close()

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight requests (bounded by `grace` or the setting) and disconnect."""
        await self.client.stop(self.settings.shutdown_grace if grace is None else grace)
