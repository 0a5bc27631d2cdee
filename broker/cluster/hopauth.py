"""The internal hop's authentication: the cluster secret, as an HMAC over what the hop says.

A forwarded request carries `HOP` (`<unix seconds>.<hex HMAC-SHA256>`) over the time, the
request's target and id, and the principal the forwarding broker admitted; the receiving
broker recomputes it with the shared secret (a constant-time compare) and accepts it within
`SKEW` seconds of its own clock. The secret itself never crosses the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


def _mac(secret: bytes, stamp: str, target: str, request_id: str, principal: str) -> str:
    message = "\n".join((stamp, target, request_id, principal)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, target: str, request_id: str, principal: str, now: float) -> str:
    """The `HOP` header's value for a request forwarded now."""
    stamp = str(int(now))
    return f"{stamp}.{_mac(secret, stamp, target, request_id, principal)}"


def verify(
    secret: bytes, headers: Mapping[str, str], request_id: str, now: float | None = None
) -> tuple[str, str] | int:
    """The principal a forwarded request carries, or the status refusing it: 401 without a
    signature, 403 with a wrong or stale one (or a malformed principal)."""
    given = headers.get(HOP)
    if not given:
        return 401
    stamp, _, mac = given.partition(".")
    target = headers.get(TARGET, "")
    principal = headers.get(PRINCIPAL, "")
    expected = _mac(secret, stamp, target, request_id, principal)
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return 403
    try:
        if abs(int(stamp) - (time.time() if now is None else now)) > SKEW:
            return 403
        return decode_user(principal)
    except (ValueError, TypeError):
        return 403
