"""The connector's observable state, for the CLI's logs and the tray app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple


class LinkState(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


class Status(NamedTuple):
    """A snapshot: immutable, compared by value (a named tuple: changed in a microsecond,
    where a frozen dataclass's `replace` took several on every request)."""

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

    def update(self, **changes: Any) -> None:
        new = self.status._replace(**changes)
        if new != self.status:
            self.status = new
            for listener in list(self._listeners):
                listener(new)
