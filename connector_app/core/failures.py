"""Why the relay link failed, in words for the operator, and whether retrying can help."""

from __future__ import annotations

import ssl

from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared import protocol as p
from shared.handshake import Refused


def describe_failure(exc: BaseException) -> str:
    """One line saying why the link failed, with what to do where we can tell."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401:
            return "the broker rejected the connector token (HTTP 401); check the token"
        return f"the broker refused the connection with HTTP {status}"
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd
        if frame is None:
            return "the connection to the broker was lost"
        if frame.code == p.CLOSE_UNSUPPORTED_VERSION:
            return f"the broker refused this connector: {frame.reason}"
        return f"the broker closed the connection ({frame.code} {frame.reason})".rstrip()
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with the broker failed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out talking to the broker"
    if isinstance(exc, p.ProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, Refused):
        return f"the handshake failed: {exc.reason}"
    return f"cannot reach the broker: {exc or type(exc).__name__}"


def is_fatal(exc: BaseException) -> bool:
    """True for failures that retrying cannot fix: a refused token, TLS, a refused version."""
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code in (401, 403)
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        return exc.rcvd.code == p.CLOSE_UNSUPPORTED_VERSION
    return isinstance(exc, ssl.SSLError)
