"""SIGTERM and SIGINT as a shutdown request, for both commands.

The first signal starts a graceful shutdown; later ones are logged and ignored, so
a second Ctrl-C or a supervisor's repeated SIGTERM cannot kill the drain halfway.
When the block ends both signals stay ignored: the process is about to exit 0 and
must not die of a late signal while the event loop closes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

log = structlog.get_logger("remotellm")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def shutdown_signals(on_first: Callable[[], None] | None = None) -> Iterator[asyncio.Event]:
    """An event set by the first SIGTERM/SIGINT (which also calls `on_first`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handle() -> None:
        if stop.is_set():
            log.info("already shutting down")
            return
        stop.set()
        if on_first is not None:
            on_first()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, handle)
    try:
        yield stop
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
