"""The connector's observable state, for the CLI's logs and the tray app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum


class LinkState(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


@dataclass(frozen=True)
class Status:
    state: LinkState = LinkState.DISCONNECTED
    models: tuple[str, ...] = ()
    """The models served (announced to the broker)."""
    available: tuple[str, ...] = ()
    """Every model the local server lists, served or switched off."""
    in_flight: int = 0
    last_error: str | None = None
    fatal: bool = False
    """The last failure is one that retrying cannot fix (bad token, TLS, version)."""
    retry_in: float | None = None


Listener = Callable[[Status], None]


@dataclass
class StatusBoard:
    """Holds the current Status and tells listeners about every change."""

    status: Status = field(default_factory=Status)
    _listeners: list[Listener] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` on each change; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def update(self, **changes: object) -> None:
        new = replace(self.status, **changes)  # type: ignore[arg-type]
        if new != self.status:
            self.status = new
            for listener in list(self._listeners):
                listener(new)
