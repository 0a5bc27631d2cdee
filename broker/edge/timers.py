"""The timers of one express-lane connection: every wait on the client is bounded.

Every wait on the client is bounded (the settings `head_timeout`, `body_timeout`,
`idle_timeout` and `stall_timeout`): for the next request to begin, for its head to be
complete once it began (more bytes do not extend it), for each next piece of its body
(while the lane reads it), and for the client to take any of what is written to it.
The first three close the connection; a client that takes nothing for the stall timeout
is cut off at once, which cancels its request as a client that left does. A request
refused before its body arrived has the rest of its body read for up to `LINGER_TIMEOUT`.

`ConnectionTimers` holds the two timers of a connection (`broker.edge.express`): one that
closes it (idle, head, body or linger: a timer of another kind replaces it) and one that
runs while writing is paused (the stall). The connection decides when each runs; it
calls `stop_all` once it is lost or handed to aiohttp, so no timer outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

LINGER_TIMEOUT: Final = 10.0
"""Seconds the rest of a refused request's body may take to arrive (aiohttp's lingering time)."""

# What the closing timer is waiting for.
IDLE: Final = 1
"""The next request to begin (`idle_timeout`)."""
HEAD: Final = 2
"""The head of a request that began to be complete (`head_timeout`)."""
BODY: Final = 3
"""The next piece of a body the lane reads (`body_timeout`)."""
LINGER: Final = 4
"""The rest of a refused request's body (`LINGER_TIMEOUT`)."""


class ConnectionTimers:
    """A connection's closing timer (one kind at a time) and its stall timer."""

    __slots__ = ("_on_expire", "_on_stall", "_stall", "_timer", "kind")

    def __init__(self, on_expire: Callable[[], None], on_stall: Callable[[], None]) -> None:
        self._on_expire = on_expire
        """Called when the closing timer runs out."""
        self._on_stall = on_stall
        """Called when the stall timer runs out."""
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self.kind = 0
        """The kind of the closing timer that runs (0: none)."""

    def arm(self, kind: int, seconds: float) -> None:
        """Call `on_expire` in `seconds`, unless a timer of this kind already runs (one of
        another kind is replaced)."""
        if self._timer is not None:
            if self.kind == kind:
                return
            self._timer.cancel()
        self.kind = kind
        self._timer = asyncio.get_running_loop().call_later(seconds, self._on_expire)

    def stop(self) -> None:
        """Stop the closing timer, if one runs."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.kind = 0

    def start_stall(self, seconds: float) -> None:
        """Call `on_stall` in `seconds`, unless the stall timer already runs."""
        if self._stall is None:
            self._stall = asyncio.get_running_loop().call_later(seconds, self._stalled)

    def stop_stall(self) -> None:
        """Stop the stall timer, if it runs."""
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def stop_all(self) -> None:
        """Stop both timers: the connection is over (or aiohttp's)."""
        self.stop()
        self.stop_stall()

    def _stalled(self) -> None:
        self._stall = None
        self._on_stall()


def abort_if_unread(transport: asyncio.Transport) -> None:
    """Drop a closing connection whose client has taken none of its last answer since."""
    if transport.get_write_buffer_size():
        transport.abort()
