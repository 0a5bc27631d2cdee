"""Pairing with a broker by signing in: the connector's side of RFC 8628's device flow.

`start` asks the broker for a pairing under the connector's name and gets the code a person
types (or the link that carries it); `wait_for_token` polls until that person approves or
denies it in the browser, or it expires. Polls keep the broker's interval and add 5 s at
each `slow_down`, as RFC 8628 section 3.5 says. No Qt, no printing: the headless command
(`connector_app.paircli`) and the tray app show what this returns.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

SLOW_DOWN_STEP: Final = 5
TIMEOUT: Final = aiohttp.ClientTimeout(total=30)

Sleep = Callable[[float], Awaitable[None]]


class PairingFailed(Exception):
    """The pairing ended without a token; the message says why in words."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Started:
    """A pairing the broker opened: what to show the person, and what to poll with."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    interval: int
    expires_in: int


@dataclass(frozen=True)
class Paired:
    """An approved pairing: the connector's token (keep it secret), where to link, its name."""

    token: str
    relay_url: str
    name: str


def broker_base(url: str) -> str:
    """The broker's HTTP base URL from what a person types: `https://host`, `host:8443`,
    or the relay URL (`wss://host/relay`)."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not a broker URL; give one like https://broker.example.com")
    path = parts.path.rstrip("/").removesuffix("/relay")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _refusal(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or status)
    return f"the broker answered {status}"


class PairingClient:
    """One broker's pairing endpoints over an aiohttp session the caller owns."""

    def __init__(
        self, session: aiohttp.ClientSession, broker_url: str, tls: ssl.SSLContext
    ) -> None:
        self.session = session
        self.base = broker_base(broker_url)
        self.tls = tls if self.base.startswith("https:") else None

    async def _post(self, path: str, body: dict[str, str]) -> tuple[int, Any]:
        try:
            async with self.session.post(
                self.base + path, json=body, ssl=self.tls or True, timeout=TIMEOUT
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = None
                return response.status, answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PairingFailed(
                "unreachable",
                f"cannot reach the broker at {self.base}: {exc or type(exc).__name__}",
            ) from None

    async def start(self, name: str) -> Started:
        """Open a pairing under this connector name."""
        status, body = await self._post("/pair/start", {"name": name})
        if status != 200 or not isinstance(body, dict):
            raise PairingFailed("refused", f"the broker will not pair: {_refusal(status, body)}")
        try:
            return Started(
                str(body["device_code"]),
                str(body["user_code"]),
                str(body["verification_uri"]),
                str(body["verification_uri_complete"]),
                int(body["interval"]),
                int(body["expires_in"]),
            )
        except (KeyError, TypeError, ValueError):
            raise PairingFailed(
                "refused", "the broker's answer to /pair/start is not valid"
            ) from None

    async def wait_for_token(self, started: Started, sleep: Sleep = asyncio.sleep) -> Paired:
        """Poll until the pairing is approved (the token) or ends (PairingFailed)."""
        interval = started.interval
        while True:
            await sleep(interval)
            status, body = await self._post("/pair/poll", {"device_code": started.device_code})
            if status == 200 and isinstance(body, dict) and "connector_token" in body:
                return Paired(
                    str(body["connector_token"]), str(body["relay_url"]), str(body["name"])
                )
            error = body.get("error") if isinstance(body, dict) else None
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval = int(body.get("interval") or interval + SLOW_DOWN_STEP)
                continue
            if status == 429:
                continue
            raise _ended(error, status, body)


def _ended(error: object, status: int, body: Any) -> PairingFailed:
    if error == "access_denied":
        return PairingFailed("denied", "the pairing was denied in the browser")
    if error == "expired_token":
        return PairingFailed("expired", "the code expired before anyone approved it; start again")
    if isinstance(error, str):
        return PairingFailed(error, f"the pairing failed: {body.get('error_description', error)}")
    return PairingFailed("refused", f"the pairing failed: {_refusal(status, body)}")
