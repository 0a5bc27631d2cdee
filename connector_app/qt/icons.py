"""What the tray shows for each state: icon, tooltip and status line."""

from __future__ import annotations

from enum import Enum
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from PySide6.QtGui import QIcon

from connector_app.core.status import LinkState, Status


class TrayState(Enum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    PAUSED = "paused"
    """Connected, but the owner paused sharing: running requests finish, no new ones."""


def assets_dir() -> Path:
    """The icons: packaged next to the code in a wheel, at the repository root otherwise."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "assets", here.parents[1] / "assets"):
        if (candidate / "tray-connected.svg").is_file():
            return candidate
    raise FileNotFoundError("the tray icons (assets/tray-*.svg) are missing from this install")


def tray_state(
    serving: bool, status: Status, problem: str | None = None, paused: bool = False
) -> TrayState:
    """Map the core's status to one of the six tray states (paused shows while connected:
    a link problem matters more)."""
    if not serving:
        return TrayState.ERROR if problem else TrayState.STOPPED
    if status.fatal:
        return TrayState.ERROR
    if paused and status.state is LinkState.CONNECTED:
        return TrayState.PAUSED
    return {
        LinkState.CONNECTED: TrayState.CONNECTED,
        LinkState.RECONNECTING: TrayState.RECONNECTING,
        LinkState.CONNECTING: TrayState.CONNECTING,
        LinkState.DISCONNECTED: TrayState.CONNECTING,
    }[status.state]


@cache
def icon_for(state: TrayState) -> QIcon:
    """The state's SVG icon; Qt renders SVG crisply at every tray size."""
    return QIcon(str(assets_dir() / f"tray-{state.value}.svg"))


def broker_host(broker_url: str | None) -> str:
    return (urlsplit(broker_url).hostname or "?") if broker_url else "no broker set"


def status_line(state: TrayState, status: Status, problem: str | None = None) -> str:
    """The first, disabled line of the menu."""
    if state is TrayState.STOPPED:
        return "Stopped"
    if state is TrayState.ERROR:
        return f"Error: {problem or status.last_error or 'unknown'}"
    if state is TrayState.CONNECTED:
        busy = f", {status.in_flight} in flight" if status.in_flight else ""
        return f"Connected, serving {len(status.models)} model(s){busy}"
    if state is TrayState.PAUSED:
        busy = f"; {status.in_flight} still finishing" if status.in_flight else ""
        return f"Sharing paused: no new requests{busy}"
    if state is TrayState.RECONNECTING:
        retry = f" in {status.retry_in:g} s" if status.retry_in is not None else ""
        return f"Reconnecting{retry}: {status.last_error or 'link lost'}"
    return "Connecting…"


def tooltip(state: TrayState, status: Status, broker_url: str | None) -> str:
    """Broker host, state and model count, on one or two lines."""
    count = len(status.models)
    return (
        f"RemoteLLM: {state.value} — {broker_host(broker_url)}\n"
        f"{count} model{'s' if count != 1 else ''} served"
    )
