"""Desktop notifications when the link drops or comes back: rate-limited, can be switched off."""

from __future__ import annotations

import time
from collections.abc import Callable

from connector_app.core.status import LinkState, Status

Show = Callable[[str, str], None]
"""Shows one notification (title, message)."""


class Notifier:
    """Turns status changes into at most one notification per `min_interval` seconds.

    A drop is only announced for a link that was up, and "back" only after a drop, so a
    broker that is simply unreachable at start-up does not notify at all. The restore that
    pairs with a shown drop is always shown (else the desktop would say "dropped" for good);
    one whose drop was rate-limited away is not.
    """

    def __init__(
        self,
        show: Show,
        *,
        enabled: bool = True,
        min_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.show = show
        self.enabled = enabled
        self.min_interval = min_interval
        self.clock = clock
        self._last: float | None = None
        self._was_up = False
        self._dropped = False
        self._drop_shown = False

    def on_status(self, status: Status) -> None:
        up = status.state is LinkState.CONNECTED
        if up and self._dropped:
            self._dropped = False
            if self._drop_shown:
                self._drop_shown = False
                self._notify("RemoteLLM link restored", "Connected to the broker again.", True)
        elif status.state is LinkState.RECONNECTING and self._was_up and not self._dropped:
            self._dropped = True
            why = status.last_error or "the link was lost"
            self._drop_shown = self._notify("RemoteLLM link dropped", f"{why}; reconnecting.")
        elif status.state is LinkState.DISCONNECTED:
            self._dropped = False
            self._drop_shown = False
        self._was_up = up or (self._was_up and status.state is LinkState.RECONNECTING)

    def _notify(self, title: str, message: str, pairs_with_shown: bool = False) -> bool:
        """Show unless switched off or rate-limited; True if shown."""
        if not self.enabled:
            return False
        now = self.clock()
        limited = self._last is not None and now - self._last < self.min_interval
        if limited and not pairs_with_shown:
            return False
        self._last = now
        self.show(title, message)
        return True
