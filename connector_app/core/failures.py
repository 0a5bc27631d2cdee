"""Why the relay link failed, in words for the operator, and whether retrying can help."""

from __future__ import annotations

import json
import ssl

from connector_app.core.proxy import ProxyError
from connector_app.core.wire import LinkClosed
from shared import protocol as p
from shared.handshake import TOKEN_REVOKED, Refused
from shared.upgrade import HandshakeError
from shared.websocket import WebSocketError

_REFUSALS = (p.CLOSE_UNSUPPORTED_VERSION, p.CLOSE_POLICY_VIOLATION)
"""Close codes with which the broker refuses this connector as it is: retrying cannot help."""


def describe_failure(exc: BaseException) -> str:
    """One line saying why the link failed, with what to do where we can tell."""
    if isinstance(exc, HandshakeError):
        status = exc.status
        if is_revoked(exc):
            return (
                "the broker revoked this connector's token; pair it again (Settings, Connect to"
                " a broker…, or remotellm-connector pair)"
            )
        if status == 401:
            return "the broker rejected the connector token (HTTP 401); check the token"
        if status is not None and status != 101:
            why = _broker_message(exc.body)
            return f"the broker refused the connection with HTTP {status}" + (
                f": {why}" if why else ""
            )
        return f"the broker's answer was not a WebSocket upgrade: {exc.reason}"
    if isinstance(exc, LinkClosed):
        if exc.code is None:
            detail = f" ({exc.reason})" if exc.reason else ""
            return f"the connection to the broker was lost{detail}"
        if exc.code in _REFUSALS:
            return f"the broker refused this connector: {exc.reason}"
        return f"the broker closed the connection ({exc.code} {exc.reason})".rstrip()
    if isinstance(exc, ProxyError):
        return f"proxy problem: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake with the broker failed: {untrusted_certificate(exc)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with the broker failed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out talking to the broker"
    if isinstance(exc, p.ProtocolError):
        return f"protocol error: {exc}"
    if isinstance(exc, WebSocketError):
        return f"protocol error: {exc.reason}"
    if isinstance(exc, Refused):
        return f"the handshake failed: {exc.reason}"
    if isinstance(exc, OSError):  # refused, unreachable, reset, no such host
        return f"cannot reach the broker: {exc or type(exc).__name__}"
    # Anything else is the connector's own failure, not the network's: say so.
    return f"the connector failed on its side of the link ({type(exc).__name__}: {exc})"


def verify_reason(exc: ssl.SSLCertVerificationError) -> str:
    """Why a certificate was refused, in the verifier's words."""
    # OpenSSL and truststore's macOS and Windows verifiers all set verify_message; an
    # error raised elsewhere may not have it.
    return getattr(exc, "verify_message", None) or str(exc)


def untrusted_certificate(exc: ssl.SSLCertVerificationError) -> str:
    """Why the broker's certificate was refused, and what to do about it."""
    why = verify_reason(exc)
    return (
        f"the broker's certificate is not trusted ({why}); if a private CA issued it, add that "
        "CA to the system's trust store or point --ca-file (ca_file in connector.yaml) at it"
    )


def is_fatal(exc: BaseException) -> bool:
    """True for failures that retrying cannot fix: a refused token, TLS, a refused version,
    a hello or models update over the broker's bounds (a name or a model list)."""
    if isinstance(exc, HandshakeError):
        return exc.status in (401, 403)
    if isinstance(exc, LinkClosed):
        return exc.code in _REFUSALS
    if isinstance(exc, ProxyError):
        return exc.fatal
    return isinstance(exc, ssl.SSLError)


def is_revoked(exc: BaseException) -> bool:
    """True when the broker refused the token as revoked: no dial with it can succeed again,
    so the connector stops dialing rather than asking every 30 s for ever."""
    return (
        isinstance(exc, HandshakeError)
        and exc.status == 401
        and _broker_code(exc.body) == TOKEN_REVOKED
    )


def _broker_code(body: bytes) -> str:
    """The `code` of the broker's JSON error body, or ""."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def _broker_message(body: bytes) -> str:
    """The message of the broker's JSON error body (OpenAI's shape), made safe to show."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str):
        return ""
    shown = "".join(c if c.isprintable() else " " for c in message).strip()
    return shown if len(shown) <= 200 else shown[:199] + "…"
