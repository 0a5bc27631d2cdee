"""The settings dialog's "Test connection": is the local server up, does the broker take us?

Each check returns a `Check` whose message says exactly what is wrong (unreachable,
bad token, TLS problem, no models) in one sentence without any secret.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from connector_app.core.discovery import discover_models
from connector_app.core.failures import untrusted_certificate, verify_reason
from connector_app.core.llm import LocalLLM
from connector_app.core.proxy import ProxyError
from connector_app.core.settings import normalise_broker_url, normalise_llm_url
from connector_app.core.trust import client_context
from connector_app.core.wire import USER_AGENT, LinkClosed, open_wire
from shared import protocol as p
from shared.handshake import Refused, accept_welcome
from shared.upgrade import HandshakeError
from shared.websocket import WebSocketError


@dataclass(frozen=True)
class Check:
    ok: bool
    message: str
    models: tuple[str, ...] = ()


def _local_failure(url: str, exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status in (401, 403):
            return f"The local LLM server at {url} refused the API key (HTTP {exc.status})."
        return f"The local LLM server at {url} answered HTTP {exc.status} to the model list."
    if isinstance(exc, ssl.SSLCertVerificationError):  # before OSError, which it is too
        why = verify_reason(exc)
        return (
            f"The local LLM server at {url} has a certificate this machine does not trust "
            f"({why}); add the CA that issued it to the system's trust store."
        )
    if isinstance(exc, aiohttp.ClientConnectorError | OSError):
        return f"Cannot reach the local LLM server at {url}; is it running on that port?"
    if isinstance(exc, TimeoutError):
        return f"The local LLM server at {url} did not answer within the timeout."
    return f"The local LLM server at {url} did not list its models ({type(exc).__name__})."


async def check_local(url: str, api_key: str | None, timeout: float = 5.0) -> Check:
    """Ask the local server for its models."""
    try:
        base = normalise_llm_url(url)
    except ValueError as invalid:
        return Check(False, f"Local LLM URL {invalid}.")
    llm = LocalLLM(base, api_key or None, connect_timeout=timeout)
    try:
        problems: list[BaseException] = []
        for path, key in (("/v1/models", "data"), ("/api/tags", "models")):
            try:
                document = await llm.get_json(path, timeout)
                listed = isinstance(document, dict) and isinstance(document.get(key), list)
                # Inside the try: the server may fail between the two requests.
                models = await discover_models(llm, timeout) if listed else None
            except Exception as exc:
                problems.append(exc)
                if isinstance(exc, aiohttp.ClientConnectorError | TimeoutError | ssl.SSLError):
                    break  # the other dialect will not answer either
                continue
            if models is not None:
                if not models:
                    return Check(False, f"The local LLM server at {base} lists no models.")
                return Check(
                    True, f"The local LLM server lists {len(models)} model(s).", tuple(models)
                )
        auth = [
            e
            for e in problems
            if isinstance(e, aiohttp.ClientResponseError) and e.status in (401, 403)
        ]
        return Check(False, _local_failure(base, auth[0] if auth else problems[0]))
    finally:
        await llm.close()


def _broker_failure(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError) and exc.status not in (None, 101):
        status = exc.status
        if status == 401:
            return "The broker rejected the connector token (HTTP 401); check the token."
        if status == 404:
            return "The broker has no relay at this URL (HTTP 404); check the path (/relay)."
        return f"The broker refused the connection with HTTP {status}."
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS problem: {untrusted_certificate(exc)}."
    if isinstance(exc, ssl.SSLError):
        return f"TLS problem talking to the broker ({exc.reason or exc}); is it serving wss://?"
    if isinstance(exc, TimeoutError):
        return "The broker did not answer in time; check the URL and the network."
    if isinstance(exc, Refused):
        return f"The broker refused this connector: {exc.reason}."
    if isinstance(exc, LinkClosed) and exc.code == p.CLOSE_UNSUPPORTED_VERSION:
        return f"The broker refused this connector: {exc.reason}."
    if isinstance(exc, ProxyError):
        return f"Cannot reach the broker through the proxy: {exc}."
    if isinstance(exc, ValueError):
        return "The broker URL is not a valid WebSocket URL."
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"Cannot reach the broker ({reason}); check the host, the port and the network."
    if isinstance(exc, HandshakeError | WebSocketError | LinkClosed):
        return f"The broker's answer was not a WebSocket upgrade ({exc}); check the URL."
    return f"The broker check failed ({type(exc).__name__})."


async def check_broker(
    url: str, token: str, ca_file: Path | None = None, timeout: float = 10.0
) -> Check:
    """Open the relay link with the token, exchange hello and welcome, close again."""
    try:
        target = normalise_broker_url(url)
    except ValueError as invalid:
        return Check(False, f"Broker URL {invalid}.")
    if not token:
        return Check(
            False, "The connector token is empty; paste the one from the broker's operator."
        )
    try:
        context = client_context(ca_file) if target.startswith("wss://") else None
        async with asyncio.timeout(timeout):
            wire = await open_wire(
                target,
                token=token,
                user_agent=f"{USER_AGENT} (connection test)",
                ssl_context=context,
                timeout=timeout,
            )
            try:
                wire.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "connection-test", (), 1)))
                accept_welcome(await wire.recv())
                await wire.close()
            finally:
                wire.abort()
    except Exception as exc:
        return Check(False, _broker_failure(exc))
    return Check(True, "The broker accepted the connector token.")
