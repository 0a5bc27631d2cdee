"""Pairing with a broker by signing in: the connector's side of RFC 8628's device flow.

`pair_connector` is the whole flow, shared by the headless command (`connector_app.paircli`)
and the tray app's dialog: `start` asks the broker for a pairing under the connector's name
and gets the code a person types (or the link that carries it); `wait_for_token` polls until
that person approves or denies it in the browser, or it expires. Polls keep the broker's
interval and add 5 s at each `slow_down`, as RFC 8628 section 3.5 says; a lost connection, a
5xx or a 429 is polled again after a growing delay until the pairing's own expiry, so a
broker restart while someone is signing in costs nothing. No Qt, no printing.

Unencrypted `http://` is refused for any broker that is not on this machine (the token would
cross the network in clear) unless the caller allows it, and the relay URL the broker answers
with must keep the broker's host and its encryption (`https` -> `wss`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from connector_app.core.settings import is_loopback

SLOW_DOWN_STEP: Final = 5
MAX_INTERVAL: Final = 60.0
"""The longest interval between polls a broker's `slow_down` can ask for."""
TIMEOUT: Final = aiohttp.ClientTimeout(total=30)
RETRY_CAP: Final = 60.0
"""Longest wait between polls while the broker is unreachable or answers 5xx/429."""

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


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


def broker_base(url: str, *, insecure: bool = False) -> str:
    """The broker's HTTP base URL from what a person types: `https://host`, `host:8443`,
    or the relay URL (`wss://host/relay`). ValueError, in words, for anything else, and for
    plain `http://` to a host that is not loopback unless `insecure`."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        parts, host = urlsplit(""), None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"{url!r} is not a broker URL; give one like https://broker.example.com")
    if scheme == "http" and not insecure and not is_loopback(host):
        raise ValueError(
            f"{url!r} is unencrypted http://, which is only allowed to this machine (the token "
            "would cross the network in clear); use the broker's https:// URL"
        )
    path = parts.path.rstrip("/").removesuffix("/relay")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def checked_relay_url(base: str, relay_url: str) -> str:
    """The relay URL a broker answered with, if it keeps the broker's host and encryption
    (`https` -> `wss`, `http` -> `ws`); PairingFailed otherwise."""
    want = "wss" if base.startswith("https:") else "ws"
    try:
        parts = urlsplit(relay_url)
        good = parts.scheme == want and parts.hostname == urlsplit(base).hostname
    except ValueError:
        good = False
    if not good:
        raise PairingFailed(
            "relay_mismatch",
            f"the broker at {base} named {relay_url!r} as its relay, which is not {want}:// on "
            "the same host; nothing was stored, so ask the broker's admin to check --public-url",
        )
    return relay_url


def _refusal(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or status)
    return f"the broker answered {status}"


def _slower(asked: object, interval: float) -> float:
    """The interval after a `slow_down`: the broker's, if it names a sane one, else 5 s more."""
    try:
        value = float(asked)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = 0.0
    if not interval < value <= MAX_INTERVAL:
        value = interval + SLOW_DOWN_STEP
    return min(value, MAX_INTERVAL)


class PairingClient:
    """One broker's pairing endpoints over an aiohttp session the caller owns."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        broker_url: str,
        tls: ssl.SSLContext,
        *,
        insecure: bool = False,
    ) -> None:
        self.session = session
        self.base = broker_base(broker_url, insecure=insecure)
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
        if status in (401, 403) and isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise PairingFailed("not_allowed", _refusal(status, body))
        if status != 200 and isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise PairingFailed("refused", f"the broker will not pair: {_refusal(status, body)}")
        if status >= 500:
            raise PairingFailed(
                "unreachable", f"the broker at {self.base} answered {status}; try again shortly"
            )
        try:
            if status != 200 or not isinstance(body, dict):
                raise TypeError
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
                "not_broker",
                f"{self.base} does not answer as a RemoteLLM broker (no pairing there); "
                "check the URL",
            ) from None

    async def wait_for_token(
        self, started: Started, sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic
    ) -> Paired:
        """Poll until the pairing is approved (the token) or ends (PairingFailed).

        Transient failures (no connection, 5xx, 429) are polled again after a doubling delay
        until `expires_in` has passed on `clock` since this call, then the pairing expired.
        """
        deadline = clock() + started.expires_in
        interval = delay = float(started.interval)
        while True:
            await sleep(delay)
            try:
                status, body = await self._post("/pair/poll", {"device_code": started.device_code})
            except PairingFailed:
                status, body = 0, None  # unreachable for now: transient
            if status == 200 and isinstance(body, dict) and "connector_token" in body:
                relay = checked_relay_url(self.base, str(body.get("relay_url")))
                return Paired(str(body["connector_token"]), relay, str(body["name"]))
            error = body.get("error") if isinstance(body, dict) else None
            if error == "slow_down":
                interval = _slower(body.get("interval"), interval)
            if error in ("authorization_pending", "slow_down"):
                delay = interval
            elif status in (0, 429) or status >= 500:
                delay = min(max(delay, interval) * 2, RETRY_CAP)
            else:
                raise _ended(error, status, body)
            if clock() + delay > deadline:
                raise _ended("expired_token", status, body)


async def pair_connector(
    broker_url: str,
    name: str,
    *,
    tls: ssl.SSLContext,
    on_started: Callable[[Started], object],
    insecure: bool = False,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> Paired:
    """Pair with one broker from start to token: opens the pairing, hands what to show the
    person to `on_started`, and waits for their decision. PairingFailed says why it ended;
    ValueError, before any request, when the URL will not do. Cancelling stops at once."""
    base = broker_base(broker_url, insecure=insecure)
    async with aiohttp.ClientSession() as session:
        client = PairingClient(session, base, tls, insecure=insecure)
        started = await client.start(name)
        on_started(started)
        return await client.wait_for_token(started, sleep, clock)


def _ended(error: object, status: int, body: Any) -> PairingFailed:
    if error == "access_denied":
        return PairingFailed("denied", "the pairing was denied in the browser")
    if error == "expired_token":
        return PairingFailed(
            "expired", "the code expired before anyone approved it; start the pairing again"
        )
    if isinstance(error, str):
        return PairingFailed(error, f"the pairing failed: {body.get('error_description', error)}")
    return PairingFailed("refused", f"the pairing failed: {_refusal(status, body)}")
