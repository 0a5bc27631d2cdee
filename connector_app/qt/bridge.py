"""The one object between the Qt widgets and the connector core.

The core calls plain Python callbacks on the event loop (which qasync makes the Qt
loop); the bridge turns them into Signals and turns user intent into core calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine
from typing import Any

import structlog
from PySide6.QtCore import QObject, Signal

from connector_app.core.activity import Activity, RequestEvent, RequestEvents
from connector_app.core.backoff import Backoff
from connector_app.core.connector import Connector
from connector_app.core.profile import ENV_PREFIX, Profile, ProfileStore
from connector_app.core.secrets import KeyringUnavailable
from connector_app.core.status import Status, StatusBoard
from shared.settings import ConfigError, split_list

log = structlog.get_logger("remotellm.tray")

BLOCKED_ENV = ENV_PREFIX + "BLOCKED_USERS"


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
    paused_changed = Signal(bool)
    """Sharing was paused (True) or resumed."""
    blocked_changed = Signal()
    """The blocked users changed."""

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
        # Whether the operator wants serving: Stop and Quit clear it, so a restart that is
        # still draining does not bring serving back afterwards.
        self._wanted = False
        self._closed = False
        self.paused = False
        """The owner paused sharing (for this session): no new request is served."""
        # File and keyring writes run in a thread, one at a time and in order.
        self._saving = asyncio.Lock()

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

    def report_problem(self, problem: str) -> None:
        """Show a problem found outside the core (a broken connector.yaml) until the next start."""
        self._set_problem(problem)

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
        if self._closed:
            return False
        self._wanted = True
        if self.serving:
            return True
        try:
            settings = self.store.settings(self.profile)
        except ConfigError as exc:
            self._wanted = False
            self._set_problem(f"the settings are incomplete: {exc}")
            return False
        board = StatusBoard()
        board.subscribe(self._on_status)
        try:
            connector = Connector(
                settings,
                backoff=self._backoff,
                events=self.events,
                board=board,
                excluded=frozenset(self.profile.prefs.disabled_models),
            )
        except Exception as exc:  # e.g. ssl.SSLError from a bad ca_file: say so, keep running
            log.exception("cannot start the connector")
            self._wanted = False
            self._set_problem(f"the connector cannot start: {type(exc).__name__}: {exc}")
            return False
        self._set_problem(None)
        connector.client.set_paused(self.paused)
        connector.client.set_blocked(self.blocked_users)
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
            ended = connector.status
            if ended.fatal and ended.last_error:  # the broker refused it for good (revoked)
                self._set_problem(ended.last_error)
            self._on_status(Status(available=ended.available))
            self.serving_changed.emit(False)

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight requests (bounded by the shutdown grace) and disconnect."""
        self._wanted = False
        await self._drain(grace)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop for good (Quit): nothing may start serving again, not even a pending restart."""
        self._closed = True
        await self.stop(grace)
        async with self._saving:  # let a pending write finish before the process exits
            pass

    async def _drain(self, grace: float | None = None) -> None:
        connector, task = self.connector, self._task
        if connector is None or task is None:
            return
        await connector.stop(grace)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def restart(self) -> None:
        """Drain and serve again with the current profile, unless Stop or Quit came meanwhile."""
        await self._drain()
        if self._wanted and not self._closed:
            self.start()

    def set_paused(self, paused: bool) -> None:
        """Pause sharing (new requests go to other connectors; running ones finish) or resume."""
        if paused == self.paused:
            return
        self.paused = paused
        if self.connector is not None:
            self.connector.client.set_paused(paused)
        self.paused_changed.emit(paused)

    @property
    def blocked_users(self) -> frozenset[str]:
        """The user ids this connector refuses: the profile's `blocked_users` and those
        REMOTELLM_CONNECTOR_BLOCKED_USERS names (the environment adds, it does not replace)."""
        return self._saved_blocked() | self.env_blocked()

    def _saved_blocked(self) -> frozenset[str]:
        return frozenset(str(u) for u in self.profile.values.get("blocked_users") or ())

    @staticmethod
    def env_blocked() -> frozenset[str]:
        """The user ids REMOTELLM_CONNECTOR_BLOCKED_USERS blocks (comma-separated)."""
        return frozenset(split_list(os.environ.get(BLOCKED_ENV, "")))

    def set_user_blocked(self, user_id: str, blocked: bool) -> None:
        """Refuse (or serve again) one user's new requests at once; saved in connector.yaml.
        A user the environment blocks stays blocked."""
        users = set(self._saved_blocked())
        (users.add if blocked else users.discard)(user_id)
        self.profile.values["blocked_users"] = sorted(users)
        if self.connector is not None:
            self.connector.client.set_blocked(self.blocked_users)
        log.info("user blocked" if blocked else "user unblocked", user_id=user_id)
        self.blocked_changed.emit()
        self.spawn(self._remember(self.profile))

    def set_model_enabled(self, model: str, enabled: bool) -> None:
        """Serve or stop serving one discovered model; remembered in connector.yaml."""
        disabled = set(self.profile.prefs.disabled_models)
        (disabled.discard if enabled else disabled.add)(model)
        self.profile.prefs.disabled_models = sorted(disabled)
        if self.connector is not None:
            self.connector.set_excluded(frozenset(disabled))
        self.spawn(self._remember(self.profile))

    async def _remember(self, profile: Profile) -> None:
        try:
            await self._save(profile, with_secrets=False)
        except OSError as exc:  # the switch still applies for this session
            log.warning("cannot save connector.yaml", path=str(self.store.path), error=str(exc))

    async def _save(self, profile: Profile, *, with_secrets: bool) -> None:
        """Write a snapshot of the profile off the Qt thread (file IO, keyring IPC)."""
        snapshot = profile.copy()
        async with self._saving:
            await asyncio.to_thread(self.store.save, snapshot, with_secrets=with_secrets)

    async def apply(self, profile: Profile) -> str | None:
        """Save a profile from the settings dialog; reconnect only if the link's settings
        changed, and switch models on or off in place. Returns a warning."""
        old, self.profile = self.profile, profile
        warning = None
        try:
            await self._save(profile, with_secrets=True)
        except KeyringUnavailable as exc:
            # The secrets stay in memory for this session; the dialog tells the user.
            warning = str(exc)
        if self.serving:
            if self._link_changed(old, profile):
                self.spawn(self.restart())  # the drain can take a while; Save need not wait
            elif self.connector is not None:
                self.connector.set_excluded(frozenset(profile.prefs.disabled_models))
                self.connector.client.set_blocked(self.blocked_users)
        elif self.problem:
            self._set_problem(None)
        return warning

    def _link_changed(self, old: Profile, new: Profile) -> bool:
        """Whether the connector's own settings differ (tray-only preferences do not count)."""
        try:
            before, after = self.store.settings(old), self.store.settings(new)
        except ConfigError:
            return True
        # The blocked users apply in place: changing them needs no new link.
        in_place = {"blocked_users"}
        return before.model_dump(exclude=in_place) != after.model_dump(exclude=in_place)
