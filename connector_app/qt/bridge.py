"""The one object between the Qt widgets and the connector core.

The core calls plain Python callbacks on the event loop (which qasync makes the Qt
loop); the bridge turns them into Signals and turns user intent into core calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog
from PySide6.QtCore import QObject, Signal

from connector_app.core.activity import Activity, RequestEvent, RequestEvents
from connector_app.core.backoff import Backoff
from connector_app.core.connector import Connector
from connector_app.core.profile import Profile, ProfileStore
from connector_app.core.secrets import KeyringUnavailable
from connector_app.core.status import Status, StatusBoard
from shared.settings import ConfigError

log = structlog.get_logger("remotellm.tray")


class Bridge(QObject):
    """Starts and stops the connector, and republishes what it does as Signals."""

    status_changed = Signal(object)
    """The core's Status, on every change."""
    serving_changed = Signal(bool)
    request_event = Signal(object)
    """A RequestStarted or RequestFinished."""
    link_event = Signal(object)
    """A LinkEvent: connected, dropped, reconnecting in N s, models changed."""
    problem_changed = Signal(str)
    """Why the connector cannot serve ('' when nothing is wrong)."""

    def __init__(
        self,
        store: ProfileStore,
        profile: Profile,
        *,
        activity: Activity | None = None,
        backoff: Backoff | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.store = store
        self.profile = profile
        self.activity = activity or Activity()
        self.events = RequestEvents()
        self.events.subscribe(self._on_request)
        self.status = Status()
        self.problem: str | None = None
        self.connector: Connector | None = None
        self._task: asyncio.Task[None] | None = None
        self._backoff = backoff
        self._background: set[asyncio.Task[None]] = set()
        self._broker_url: tuple[Profile, str | None] | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a coroutine on the loop, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- state -----------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def broker_url(self) -> str | None:
        """The broker URL in effect (environment first), for the tooltip."""
        if self._broker_url is None or self._broker_url[0] is not self.profile:
            # Cached per profile: the tooltip is refreshed on every request.
            try:
                url: str | None = self.store.settings(self.profile).broker_url
            except ConfigError:
                stored = self.profile.values.get("broker_url")
                url = str(stored) if stored else None
            self._broker_url = (self.profile, url)
        return self._broker_url[1]

    def is_complete(self) -> bool:
        return self.store.is_complete(self.profile)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            self.problem_changed.emit(problem or "")

    def _on_status(self, status: Status) -> None:
        old, self.status = self.status, status
        for event in self.activity.on_status(old, status):
            self.link_event.emit(event)
        self.status_changed.emit(status)

    def _on_request(self, event: RequestEvent) -> None:
        self.activity.on_request(event)
        self.request_event.emit(event)

    # -- intent ----------------------------------------------------------------

    def start(self) -> bool:
        """Start serving with the saved settings; False (and a problem) if they are incomplete."""
        if self.serving:
            return True
        try:
            settings = self.store.settings(self.profile)
        except ConfigError as exc:
            self._set_problem(f"the settings are incomplete: {exc}")
            return False
        self._set_problem(None)
        board = StatusBoard()
        board.subscribe(self._on_status)
        connector = Connector(
            settings,
            backoff=self._backoff,
            events=self.events,
            board=board,
            excluded=frozenset(self.profile.prefs.disabled_models),
        )
        self.connector = connector
        self._task = asyncio.ensure_future(self._run(connector))
        self.serving_changed.emit(True)
        log.info("serving", broker_url=settings.broker_url, llm_url=settings.llm_url)
        return True

    async def _run(self, connector: Connector) -> None:
        try:
            await connector.run()
        except Exception as exc:  # the tray must survive whatever the core does
            log.exception("connector failed")
            self._set_problem(f"the connector stopped: {type(exc).__name__}: {exc}")
        finally:
            if self.connector is connector:
                self.connector = None
                self._task = None  # `serving` is False from here on, inside this very task
            self._on_status(Status(available=connector.status.available))
            self.serving_changed.emit(False)

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight requests (bounded by the shutdown grace) and disconnect."""
        connector, task = self.connector, self._task
        if connector is None or task is None:
            return
        await connector.stop(grace)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def restart(self) -> None:
        await self.stop()
        self.start()

    def set_model_enabled(self, model: str, enabled: bool) -> None:
        """Serve or stop serving one discovered model; remembered in connector.yaml."""
        disabled = set(self.profile.prefs.disabled_models)
        (disabled.discard if enabled else disabled.add)(model)
        self.profile.prefs.disabled_models = sorted(disabled)
        self.store.save(self.profile, with_secrets=False)
        if self.connector is not None:
            self.connector.set_excluded(frozenset(disabled))

    def apply(self, profile: Profile) -> str | None:
        """Save a profile from the settings dialog; restart if serving. Returns a warning."""
        self.profile = profile
        warning = None
        try:
            self.store.save(profile)
        except KeyringUnavailable as exc:
            # The secrets stay in memory for this session; the dialog tells the user.
            warning = str(exc)
        if self.serving:
            self.spawn(self.restart())
        elif self.problem:
            self._set_problem(None)
        return warning
