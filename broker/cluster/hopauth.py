"""The internal hop's authentication: the cluster secret, as an HMAC over what the hop says.

A forwarded request carries `HOP` (`<unix seconds>.<nonce>.<hex HMAC-SHA256>`) over the
time, a random nonce, the receiving broker's instance id, the request's target and id, the
principal the forwarding broker admitted, and a SHA-256 of the body. The receiving broker
recomputes it with the shared secret (a constant-time compare), accepts it within `SKEW`
seconds of its own clock, and only once (`Replays`): a signature seen on the wire cannot be
sent again, to this broker or another, nor carry another body or model. The secret itself
never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Final

HOP: Final = "X-RemoteLLM-Hop"
PRINCIPAL: Final = "X-RemoteLLM-Hop-Principal"
TARGET: Final = "X-RemoteLLM-Hop-Target"
SKEW: Final = 60.0
"""Seconds a signature stays good either side of the receiver's clock."""


def encode_user(user: tuple[str, str]) -> str:
    """The `PRINCIPAL` header's value: the user id (or `configured`) and display name, as the
    connector is told them (`Principal.relayed`); never the key."""
    return json.dumps(list(user), separators=(",", ":"), ensure_ascii=True)


def decode_user(text: str) -> tuple[str, str]:
    user_id, name = json.loads(text)
    if type(user_id) is not str or type(name) is not str:
        raise ValueError("the user id and name are strings")
    return user_id, name


def _mac(secret: bytes, fields: tuple[str, ...]) -> str:
    return hmac.new(secret, "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign(
    secret: bytes,
    node: str,
    target: str,
    request_id: str,
    principal: str,
    body: bytes,
    now: float,
) -> str:
    """The `HOP` header's value for a request forwarded now to the broker `node`."""
    stamp, nonce = str(int(now)), secrets.token_hex(8)
    fields = (stamp, nonce, node, target, request_id, principal, body_digest(body))
    return f"{stamp}.{nonce}.{_mac(secret, fields)}"


class Replays:
    """The signatures this broker accepted within the last `2 * SKEW` seconds: a hop is
    served once, however often its bytes are sent."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def first(self, mac: str, now: float) -> bool:
        """True the first time `mac` is offered (then remembered until it could be stale)."""
        seen = self._seen
        if mac in seen:
            return False
        if len(seen) >= 1024 and len(seen) % 1024 == 0:
            for old in [m for m, until in seen.items() if until < now]:
                del seen[old]
        seen[mac] = now + 2 * SKEW
        return True


def signature_given(headers: Mapping[str, str]) -> bool:
    """Whether the request carries a signature at all (without one: 401, before the body)."""
    return bool(headers.get(HOP))


def verify(
    secret: bytes,
    node: str,
    headers: Mapping[str, str],
    request_id: str,
    body: bytes,
    replays: Replays,
    now: float | None = None,
) -> tuple[str, str] | int:
    """The principal a forwarded request to this broker (`node`) carries, or the status
    refusing it: 401 without a signature; 403 with a wrong, stale or replayed one (or a
    malformed principal)."""
    given = headers.get(HOP)
    if not given:
        return 401
    stamp, _, rest = given.partition(".")
    nonce, _, mac = rest.partition(".")
    principal = headers.get(PRINCIPAL, "")
    fields = (
        stamp,
        nonce,
        node,
        headers.get(TARGET, ""),
        request_id,
        principal,
        body_digest(body),
    )
    if not hmac.compare_digest(mac.encode(), _mac(secret, fields).encode()):
        return 403
    now = time.time() if now is None else now
    try:
        if abs(int(stamp) - now) > SKEW or not replays.first(mac, now):
            return 403
        return decode_user(principal)
    except (ValueError, TypeError):
        return 403
